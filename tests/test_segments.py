"""Speech segments (segments.py, predict --segments vad): the rules that shape them, recordings built here from the
golden utterances and espeak-ng speech with silence, white noise and a tone between them (boundaries near the speech,
no row outside it), a monologue cut into turns, the detector's speech share in `voiced` and the warnings, batched
scoring equal to one file at a time, and the plots of segments."""
import csv
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import soundfile

from chunkser import inference, plots, segments
from chunkser.commands import predict
from chunkser.commands.predict import predict_files
from chunkser.features import lld
from figures import figures  # noqa: F401  (a fixture)
from conftest import missing

SR = 16000
ALSA_NOISE = '/usr/share/sounds/alsa/Noise.wav'  # alsa-utils' recording of broadband noise, where installed


def golden_audio(shared, name):
    return os.path.join(shared, 'golden', 'audio', name)


def espeak(tmp_path, text, name, speed=160):
    exe = shutil.which('espeak-ng')
    if exe is None:
        missing('espeak-ng is not installed (apt-get install espeak-ng)')
    wav = str(tmp_path / f'{name}.wav')
    subprocess.run([exe, '-v', 'en', '-s', str(speed), '-w', wav, text], check=True, capture_output=True)
    return lld.load_audio(wav)  # 22.05 kHz -> 16 kHz


def speech_span(x):
    """[first, last] sample of a clip louder than -40 dBFS: where its speech is, in samples."""
    loud = np.flatnonzero(np.abs(x) > 0.01)
    return loud[0], loud[-1] + 1


@pytest.fixture(scope='module')
def recording(shared, tmp_path_factory):
    """47 s: silence, golden calm, white noise, espeak speech, a 440 Hz tone, golden excited, silence, espeak
    again, silence. -> (path, speech spans (n, 2) and non-speech stretches (m, 2), seconds)."""
    d = tmp_path_factory.mktemp('segments')
    rng = np.random.default_rng(0)
    quiet = lambda s: rng.normal(0, 1e-4, int(s * SR))  # silence with a faint floor
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(4 * SR) / SR)
    said = espeak(d, 'The meeting has been moved to next Tuesday afternoon, please tell the others.', 'said')
    pieces = [('gap', quiet(3)), ('speech', lld.load_audio(golden_audio(shared, 'calm.wav'))),
              ('gap', 0.1 * rng.standard_normal(4 * SR)), ('speech', said), ('gap', tone),
              ('speech', lld.load_audio(golden_audio(shared, 'excited.wav'))), ('gap', quiet(3)),
              ('speech', said), ('gap', quiet(2))]
    spans, others, t = [], [], 0
    for kind, x in pieces:
        if kind == 'speech':
            a, b = speech_span(x)
            spans.append(((t + a) / SR, (t + b) / SR))
        else:
            others.append((t / SR, (t + len(x)) / SR))
        t += len(x)
    path = str(d / 'mixed.wav')
    soundfile.write(path, np.concatenate([x for _, x in pieces]), SR)
    return path, np.array(spans), np.array(others)


# ----------------------------------------------------------------------------------
# the rules, on masks made here

def mask_of(seconds, pauses):
    """A speech mask of `seconds` with non-speech frames over each (start, end) of `pauses`."""
    m = np.ones(int(round(seconds / segments.FRAME)), bool)
    for s, e in pauses:
        m[int(round(s / segments.FRAME)):int(round(e / segments.FRAME))] = False
    return m


def test_long_segment_is_cut_at_its_longest_inner_pause():
    """25 s: cut in the middle of 12.0-12.5 (the longest pause), then each part over 11 s at its own longest pause
    that leaves 2.75 s on both sides (12.3-25: 14.0-14.1 is too near its start, so equal parts)."""
    F = segments.FRAME
    mask = mask_of(25, [(5.6, 5.8), (12.0, 12.5), (14.0, 14.1)])
    parts = segments.cut_long((0.0, 25.0), mask)
    a, b = (175 + 181) / 2 * F, (375 + 391) / 2 * F  # the pauses' frame runs [175, 181) and [375, 391)
    np.testing.assert_allclose(parts, [(0, a), (a, b), (b, (b + 25) / 2), ((b + 25) / 2, 25)])
    # no pause at all: equal parts
    assert segments.cut_long((0.0, 30.0), mask_of(30, [])) == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    # a pause too near an end (parts under 2.75 s) is not used
    assert segments.cut_long((0.0, 12.0), mask_of(12, [(1.0, 2.0)])) == [(0.0, 6.0), (6.0, 12.0)]


def test_short_segment_joins_a_neighbour_across_a_short_pause():
    # 2 s, then 3.5 s after 0.5 s: joined; 1 s alone 4 s later (pause over MERGE_GAP): kept alone
    assert segments.merge_short([(0, 2), (2.5, 6), (10, 11)]) == [[0, 6], [10, 11]]
    # the nearer neighbour: 0.8 s before, 0.3 s after
    assert segments.merge_short([(0, 4), (4.8, 6), (6.3, 9)]) == [[0, 4], [4.8, 9]]
    # never over 11 s
    assert segments.merge_short([(0, 10), (10.2, 12)]) == [[0, 10], [10.2, 12]]


def test_speech_runs_bridge_short_gaps_and_drop_clicks():
    F = segments.FRAME
    mask = np.zeros(200, bool)
    mask[10:40] = mask[48:80] = True    # an 8-frame (0.26 s) gap: bridged
    mask[150:153] = True                # 3 frames (0.1 s): a click, dropped
    runs = segments.speech_runs(mask, 200 * F, pad=0.1)
    np.testing.assert_allclose(runs, [[10 * F - 0.1, 80 * F + 0.1]])
    np.testing.assert_allclose(segments.speech_runs(mask, 200 * F, min_pause=0.2, pad=0.1),
                               [[10 * F - 0.1, 40 * F + 0.1], [48 * F - 0.1, 80 * F + 0.1]])


# ----------------------------------------------------------------------------------
# recordings

def test_segments_follow_the_speech(recording, tmp_path, upstream, capsys):
    """predict's rows on the mixed recording: one per speech piece, its bounds within 0.5 s of the speech, no row
    in the silence, the noise or the tone; the stretches without speech logged and in --segments-out."""
    path, spans, others = recording
    out = tmp_path / 'seg.csv'
    assert predict.main([path, '--segments-out', str(out), '--model-dir', upstream[0], '--norm-dir', upstream[1]]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(captured.out.splitlines()))
    got = np.array([(float(r['start']), float(r['end'])) for r in rows])
    assert got.shape == spans.shape
    np.testing.assert_allclose(got, spans, rtol=0, atol=0.5)
    for s, e in others:  # no row reaches into a stretch without speech beyond the 0.5 s tolerance
        assert not ((got[:, 0] < e - 0.5) & (got[:, 1] > s + 0.5)).any(), (s, e)
    assert all(float(r['voiced']) > 0.5 for r in rows)
    assert f'{path}: 4 speech segment(s); no speech, no row: 5 stretch(es)' in captured.err
    with open(out) as f:
        seg = list(csv.DictReader(f))
    tiles = [(float(r['start']), float(r['end'])) for r in seg]
    assert [r['row'] for r in seg] == ['0', '1'] * 4 + ['0']
    assert tiles[0][0] == 0 and all(abs(a[1] - b[0]) < 0.005 for a, b in zip(tiles, tiles[1:]))
    assert tiles[-1][1] == pytest.approx(soundfile.info(path).duration, abs=0.005)
    # --segments fixed: today's equal windows over everything
    df = predict_files([path], model_dir=upstream[0], norm_dir=upstream[1], segments='fixed')
    assert len(df) == np.ceil(tiles[-1][1] / 11) and df['start'].iloc[0] == 0 and df['end'].iloc[-1] == pytest.approx(tiles[-1][1], abs=0.02)


def test_monologue_without_pauses_is_cut_into_turns(tmp_path):
    """30 s of speech with no pause a speaker would make (espeak-ng, no punctuation): parts of at most 11 s that
    cover it, cut where the detector hears the speech dip."""
    text = ' '.join(['we walked along the river and talked about the garden the weather and the long summer'] * 8)
    x = espeak(tmp_path, text, 'monologue', speed=175)
    assert len(x) > 30 * SR
    seg = segments.find_segments(x[:30 * SR])
    lengths = seg.spans[:, 1] - seg.spans[:, 0]
    assert len(seg.spans) >= 3 and (lengths <= 11 + 1e-9).all()
    assert lengths.sum() > 27 and (seg.spans[1:, 0] - seg.spans[:-1, 1] < 0.5).all()


def test_noise_gets_no_speech_and_a_warning(upstream, tmp_path):
    """White noise, a tone, and alsa-utils' Noise.wav where installed: `voiced` from the detector (0; the pitch
    tracker calls the tone voiced), a SpeechWarning for Python callers naming each."""
    noise, tone = str(tmp_path / 'white.wav'), str(tmp_path / 'tone.wav')
    soundfile.write(noise, 0.1 * np.random.default_rng(1).standard_normal(5 * SR), SR)
    soundfile.write(tone, 0.3 * np.sin(2 * np.pi * 220 * np.arange(5 * SR) / SR), SR)  # the pitch tracker: voiced
    paths = [noise, tone] + ([ALSA_NOISE] if os.path.isfile(ALSA_NOISE) else [])
    with pytest.warns(inference.SpeechWarning) as caught:
        df = predict_files(paths, model_dir=upstream[0], norm_dir=upstream[1])
    assert (df['voiced'] < 0.02).all()
    lines = [str(w.message) for w in caught]
    assert [ln.split(' ')[1] for ln in lines if 'little voiced speech' in ln] == paths
    assert df.attrs['warnings'] == lines


def test_short_clip_warns(shared, upstream):
    excited = golden_audio(shared, 'excited.wav')  # 2.39 s
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        predict_files([excited, golden_audio(shared, 'calm.wav')], model_dir=upstream[0], norm_dir=upstream[1])
    lines = [str(w.message) for w in caught if issubclass(w.category, inference.SpeechWarning)]
    assert lines == [f"warning: {excited} 0.000-2.384 s: 2.38 s, shorter than the corpus's shortest turn (2.75 s): "
                     'the values are less reliable']


def test_batched_equals_one_file_at_a_time(shared, upstream, tmp_path):
    """9 files of different lengths scored together give each file's lone prediction, to 1e-6."""
    x = np.concatenate([lld.load_audio(golden_audio(shared, n)) for n in ('calm.wav', 'excited.wav', 'calm.wav')])
    paths = []
    for i, seconds in enumerate([1.2, 2.0, 3.1, 4.4, 5.0, 6.3, 7.7, 9.0, 10.5]):
        paths.append(str(tmp_path / f'cut{i}.wav'))
        soundfile.write(paths[-1], x[int(0.3 * i * SR):int((0.3 * i + seconds) * SR)], SR)
    opts = dict(model_dir=upstream[0], norm_dir=upstream[1], atten='RnnAttenVec')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', inference.SpeechWarning)
        together = predict_files(paths, **opts)
        alone = [predict_files([p], **opts) for p in paths]
    assert len(together) == 9 and len(set(together['end'])) == 9
    cols = ['Act', 'Val', 'Dom', 'start', 'end', 'voiced']
    # 1e-6: one unit of the CSV's sixth decimal (each side rounded to it), and the float sum's own error
    np.testing.assert_allclose(together[cols].to_numpy(), np.concatenate([one[cols].to_numpy() for one in alone]),
                               rtol=0, atol=1e-6 + 1e-12)


# ----------------------------------------------------------------------------------
# plots

def test_plots_of_segments(recording, shared, upstream, tmp_path, figures, capsys):
    """The timeline of a recording in segments: the stretches without speech shaded, the lines broken there;
    calm.wav and calm.mat get plots named by input."""
    path, spans, others = recording
    calm = [golden_audio(shared, 'calm.wav'), golden_audio(shared, 'calm.mat')]
    assert predict.main([path, *calm, '--plot', str(tmp_path / 'p'), '--model-dir', upstream[0],
                         '--norm-dir', upstream[1]]) == 0
    assert sorted(os.listdir(tmp_path / 'p')) == ['calm.mat_chunks.png', 'calm.wav_chunks.png', 'mixed_chunks.png',
                                                  'mixed_timeline.png']
    ax = figures['mixed_timeline.png'].axes[0]
    shaded = [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches
              if p.get_facecolor()[:3] == pytest.approx((0.94,) * 3)]
    assert len(shaded) == len(others)
    act = next(ln for ln in ax.get_lines() if ln.get_label() == 'Act')
    assert np.isnan(act.get_xdata()).sum() == len(spans) - 1  # one break per stretch between segments
    assert 'no speech: no row' in [t.get_text() for t in ax.get_legend().get_texts()]


def test_weight_bars_of_a_row_with_little_speech_are_grey(tmp_path):
    bounds = np.array([[0, 300], [300, 600]])
    spans = np.stack([np.linspace(s, e, 12)[:-1, None] + [[0, 60]] for s, e in bounds]) * 0.016  # (2, 11, 2)
    results = {'Act': {'spans': spans, 'weights': np.tile(np.linspace(0.05, 0.15, 11), (2, 1)),
                       'values': {'Act': np.array([4.0, 3.0])}}}
    fig = plots.plot_chunks(str(tmp_path / 'c.png'), 'x', bounds, results, ['RnnAttenVec'], wave=np.zeros(600 * 256),
                            low=np.array([False, True]))
    bars = [p for p in fig.axes[1].patches]
    grey = [p.get_facecolor()[:3] == pytest.approx((0.8,) * 3) for p in bars]
    assert grey == [False] * 11 + [True] * 11


def test_curve_axis_shows_the_whole_scale(tmp_path):
    bounds = np.array([[0, 300]])
    spans = (np.linspace(0, 300, 12)[:-1, None] + [[0, 60]])[None] * 0.016
    results = {'Act': {'spans': spans, 'weights': np.full((1, 11), 1 / 11), 'values': {'Act': np.array([3.3])},
                       'chunks': {'Act': np.linspace(3.0, 3.6, 11)[None]}}}
    fig = plots.plot_curves(str(tmp_path / 'c.png'), 'x', bounds, results, wave=np.zeros(300 * 256))
    assert fig.axes[1].get_ylim() == (1, 7)


def test_loss_plot_shows_epochs_the_best_point_and_the_run(tmp_path, monkeypatch):
    """The trainer's loss curves: x in epochs (iterations for an iteration run), the best validation marked, the
    run's name (its attribute) in the title."""
    import matplotlib.pyplot as plt
    from chunkser.train import loop as training
    kept = []
    monkeypatch.setattr(plt, 'close', kept.append)
    history = [{'iter': 40 * e, 'epoch': e, 'train_loss': 1 - 0.1 * e, 'val_loss': v}
               for e, v in zip(range(1, 6), [0.9, 0.7, 0.6, 0.65, 0.8])]
    training.plot_losses(str(tmp_path / 'LSTM_epoch5_batch8_ChunkSeq2One_RnnAttenVec_Val.png'), history, 'loss')
    ax = kept[0].axes[0]
    assert ax.get_xlabel() == 'epoch' and ax.get_title() == 'LSTM_epoch5_batch8_ChunkSeq2One_RnnAttenVec_Val'
    best = [ln for ln in ax.get_lines() if ln.get_label().startswith('best')]
    assert [(list(b.get_xdata()), list(b.get_ydata())) for b in best] == [([3], [0.6])]
    training.plot_losses(str(tmp_path / 'f1.png'), [{k: h[k] for k in ('iter', 'train_loss')} | {'val_macro_f1': 1 - h['val_loss']}
                                                    for h in history], 'macro_f1')
    assert kept[1].axes[0].get_xlabel() == 'iteration'
    assert [ln.get_xdata()[0] for ln in kept[1].axes[1].get_lines() if ln.get_label().startswith('best')] == [120]
