"""predict.py: audio, .mat and folder inputs, windows of long recordings, plots, missing checkpoints, the library
call (predict_files = the command's CSV), speech presence (`voiced`, its warning and plots), and the acceptance
check on synthetic speech: predicted arousal and dominance follow the speaking effort."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.stats
import soundfile

import inference
import plots
import predict
import pretrained
from checkpoint import checkpoint_name, read_spec
from conftest import missing
from model import ModelSpec
from predict import predict_files
from utils import UserError

EMOS = ('Act', 'Val', 'Dom')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    """predict.main in-process -> (exit code, CSV rows as dicts from stdout, stderr)."""
    code = predict.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, list(csv.DictReader(out.splitlines())), err


def golden_audio(shared, name):
    return os.path.join(shared, 'golden', 'audio', name)


def released(upstream):
    model_dir, norm_dir = upstream
    return ['--model-dir', model_dir, '--norm-dir', norm_dir]


@pytest.mark.numeric
@pytest.mark.parametrize('atten', ['SelfAttenVec', 'RnnAttenVec'])
def test_mat_folder_matches_reference(shared, upstream, tmp_path, capsys, atten):
    """The golden utterances as .mat files in a folder: the reference's de-normalised outputs, to 1e-5."""
    ref = np.load(os.path.join(shared, 'golden', 'reference_outputs.npz'))
    feat = tmp_path / 'feat'
    os.makedirs(feat)
    for i in range(len(ref['lengths'])):
        scipy.io.savemat(feat / f'utt{i:02d}.mat', {'Audio_data': ref[f'lld_{i}']})
    # --window 0: the reference scores every length whole (up to 1500 frames here)
    code, rows, _ = run(capsys, feat, '-atten', atten, '--window', 0, '--out', tmp_path / 'p.csv', *released(upstream))
    assert code == 0
    assert [r['file'] for r in rows] == [os.path.join(str(feat), f'utt{i:02d}.mat') for i in range(len(rows))]
    for emo in EMOS:
        np.testing.assert_allclose([float(r[emo]) for r in rows], ref[f'{atten}_{emo}_pred'], rtol=0, atol=1e-5)
    with open(tmp_path / 'p.csv') as f:
        assert list(csv.DictReader(f)) == rows  # the file holds what was printed


@pytest.mark.numeric
def test_wav_equals_its_features(shared, upstream, capsys):
    code, rows, _ = run(capsys, golden_audio(shared, 'calm.wav'), golden_audio(shared, 'calm.mat'), *released(upstream))
    assert code == 0 and len(rows) == 2
    wav, mat = rows
    assert wav['file'] == golden_audio(shared, 'calm.wav')
    # same features; float32 batch rows can differ in the last printed digit
    np.testing.assert_allclose([float(wav[e]) for e in EMOS], [float(mat[e]) for e in EMOS], rtol=0, atol=1e-5)
    assert (float(wav['start']), float(wav['end'])) == (0.0, pytest.approx(331 * 0.016))  # one window: 0..length
    assert 1 < float(wav['Act']) < 7


def test_long_recording_windows_and_plots(shared, upstream, tmp_path, capsys):
    parts = [soundfile.read(golden_audio(shared, n + '.wav'), dtype='int16')[0] for n in ('calm', 'excited') * 2]
    soundfile.write(tmp_path / 'long.wav', np.concatenate(parts), 16000)  # 15.4 s
    plots = tmp_path / 'plots'
    code, rows, _ = run(capsys, tmp_path / 'long.wav', golden_audio(shared, 'short.mat'), '-atten', 'RnnAttenVec',
                        '--plot', plots, *released(upstream))
    assert code == 0
    windows = [(float(r['start']), float(r['end'])) for r in rows if r['file'].endswith('long.wav')]
    assert len(windows) == 2
    assert windows[0][0] == 0 and windows[0][1] == windows[1][0] and windows[1][1] == pytest.approx(15.376)
    assert all(0 < e - s <= 11 for s, e in windows)
    assert rows[-1]['file'].endswith('short.mat') and float(rows[-1]['end']) == pytest.approx(37 * 0.016)
    assert sorted(os.listdir(plots)) == ['long_chunks.png', 'long_timeline.png', 'short_chunks.png']
    for name in os.listdir(plots):
        assert (plots / name).read_bytes()[:4] == b'\x89PNG'
    # --window 0 scores the whole recording as one utterance
    _, rows, _ = run(capsys, tmp_path / 'long.wav', '--window', 0, *released(upstream))
    assert len(rows) == 1 and float(rows[0]['end']) == pytest.approx(15.376)


def test_missing_attribute_is_named(shared, upstream, tmp_path, capsys):
    model_dir, norm_dir = upstream
    os.makedirs(tmp_path / 'models')
    for emo in ('Act', 'Dom'):  # no Val checkpoint
        name = checkpoint_name(ModelSpec(head='SelfAttenVec', emo=emo), 128, iterations=5000)
        os.symlink(os.path.join(model_dir, name), tmp_path / 'models' / name)
    code, rows, err = run(capsys, golden_audio(shared, 'excited.mat'), '--model-dir', tmp_path / 'models',
                          '--norm-dir', norm_dir)
    assert code == 0
    assert checkpoint_name(ModelSpec(head='SelfAttenVec', emo='Val'), 128, iterations=5000) in err
    assert rows[0]['Val'] == '' and float(rows[0]['Act']) > 1 and float(rows[0]['Dom']) > 1


def test_user_errors(shared, upstream, tmp_path, capsys):
    wav = golden_audio(shared, 'short.wav')
    with pytest.raises(UserError, match='make pretrained'):  # the cwd is an empty tmp folder: no ./Models
        predict.main([wav])
    with pytest.raises(UserError, match='make pretrained'):
        predict.main([wav, '--model-dir', str(tmp_path), '--norm-dir', upstream[1]])
    with pytest.raises(UserError, match='nothing.wav: file or folder not found'):
        predict.main([str(tmp_path / 'nothing.wav')] + released(upstream))
    with pytest.raises(UserError, match='folder for the CSV does not exist'):
        predict.main([wav, '--out', str(tmp_path / 'no' / 'p.csv')] + released(upstream))
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(UserError, match='expected a .wav, .flac or .mat'):
        predict.main([str(tmp_path / 'notes.txt')] + released(upstream))


@pytest.mark.parametrize('case', ['missing input', 'bad window'])
def test_command_exits_2_with_one_line(upstream, tmp_path, case):
    """predict.py as a command: a user mistake is one stderr line `error: ...`, exit code 2, no traceback."""
    missing = str(tmp_path / 'nothing.wav')
    argv, line = {'missing input': ([missing], f'error: {missing}: file or folder not found'),
                  'bad window': ([missing, '--window', '0.5'],
                                 'error: --window 0.5: expected 0 (never cut) or at least 1 second (one chunk)')}[case]
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'predict.py'), *argv, *released(upstream)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [line] and r.stdout == ''


def test_unreadable_file_in_folder(shared, upstream, tmp_path, capsys):
    os.makedirs(tmp_path / 'in')
    shutil.copy(golden_audio(shared, 'short.mat'), tmp_path / 'in' / 'a.mat')
    (tmp_path / 'in' / 'b.wav').write_bytes(b'RIFF' + bytes(300))
    code, rows, err = run(capsys, tmp_path / 'in', *released(upstream))
    assert code == 1 and 'b.wav' in err
    assert [os.path.basename(r['file']) for r in rows] == ['a.mat']


# ----------------------------------------------------------------------------------
# acceptance: espeak-ng speech at four levels of vocal effort

# speed (words/min), pitch (0..99), amplitude (0..200): from slow, low and soft to fast, high and loud.
# Roughly geometric steps in speed and amplitude (loudness is heard on a log scale) gave the most even
# separation of the four levels across voices.
LEVELS = [(80, 45, 10), (130, 48, 30), (210, 52, 80), (350, 55, 200)]
VOICES = ['en', 'en-us', 'en+f3', 'en+m3']
SENTENCES = ["I can't believe you did that to me again.",
             'We need to leave right now before it is too late.',
             'The meeting has been moved to next Tuesday afternoon.']


@pytest.fixture(scope='session')
def espeak_corpus(tmp_path_factory):
    """48 utterances: every voice says every sentence at every level; file names carry the level."""
    exe = shutil.which('espeak-ng')
    if exe is None:
        missing('espeak-ng is not installed (apt-get install espeak-ng)')
    d = tmp_path_factory.mktemp('espeak')
    for level, (speed, pitch, amp) in enumerate(LEVELS):
        for v, voice in enumerate(VOICES):
            for s, text in enumerate(SENTENCES):
                subprocess.run([exe, '-v', voice, '-s', str(speed), '-p', str(pitch), '-a', str(amp),
                                '-w', str(d / f'L{level}_v{v}_s{s}.wav'), text], check=True, capture_output=True)
    return d


def test_arousal_and_dominance_follow_vocal_effort(espeak_corpus, upstream, tmp_path, capsys):
    code, rows, _ = run(capsys, espeak_corpus, '-atten', 'SelfAttenVec', *released(upstream))
    assert code == 0 and len(rows) == len(LEVELS) * len(VOICES) * len(SENTENCES)
    level = [int(os.path.basename(r['file'])[1]) for r in rows]
    rho = {e: scipy.stats.spearmanr(level, [float(r[e]) for r in rows]).statistic for e in ('Act', 'Dom')}
    print(f'Spearman with the effort level: Act {rho["Act"]:.3f}, Dom {rho["Dom"]:.3f}')
    assert rho['Act'] >= 0.85
    assert rho['Dom'] >= 0.8


# ----------------------------------------------------------------------------------
# predict_files: the library call

def same_table(got, want):
    """Two predict tables equal: columns, dtypes, text columns exactly, numbers to 1e-6 (NaN where NaN)."""
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes), (got.dtypes, want.dtypes)
    for c in got.columns:
        if not pd.api.types.is_numeric_dtype(want[c]):
            assert got[c].tolist() == want[c].tolist(), c
        else:
            np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), rtol=0, atol=1e-6, equal_nan=True, err_msg=c)


@pytest.fixture
def act_dom_models(upstream, tmp_path):
    """A model folder with the released Act and Dom checkpoints only (the Val column stays empty)."""
    d = tmp_path / 'act_dom'
    os.makedirs(d)
    for emo in ('Act', 'Dom'):
        name = checkpoint_name(ModelSpec(head='SelfAttenVec', emo=emo), 128, iterations=5000)
        os.symlink(os.path.join(upstream[0], name), d / name)
    return str(d)


def test_predict_files_equals_the_csv(shared, upstream, act_dom_models, speech, tmp_path, capsys):
    """The DataFrame is read_csv of --out: windows of a long recording, audio and .mat, an empty column."""
    paths = [speech['long'], golden_audio(shared, 'short.mat'), golden_audio(shared, 'calm.wav')]
    out = tmp_path / 'p.csv'
    assert predict.main([*paths, '--model-dir', act_dom_models, '--norm-dir', upstream[1], '--out', str(out)]) == 0
    df = predict_files(paths, model_dir=act_dom_models, norm_dir=upstream[1])
    want = pd.read_csv(out)
    assert list(want.columns) == ['file', 'Act', 'Val', 'Dom', 'start', 'end', 'voiced']  # voiced: the last column
    assert len(df) == 4 and df['Val'].isna().all() and df['Act'].notna().all()  # long.wav in two windows
    same_table(df, want)
    assert df.attrs['failed'] == []
    with pytest.raises(TypeError, match='wndow'):  # a misspelt option is named, not ignored
        predict_files(paths, wndow=5)


@pytest.fixture(scope='module')
def seq2seq(shared, tmp_path_factory):
    """The released seq2seq models installed by pretrained.py (with their JSON): {emo: path}."""
    dest = str(tmp_path_factory.mktemp('released'))
    assert pretrained.main(['--dest', dest, '--retrieval-from', os.path.join(shared, 'upstream-retrieval-v1.6')]) == 0
    return {e: os.path.join(dest, plots.SEQ2SEQ.format(e)) for e in EMOS}


def test_predict_files_chunk_rows(shared, upstream, seq2seq, tmp_path, capsys):
    """chunks=True: (rows, chunk rows), both equal to read_csv of --out and --chunks-out."""
    paths = [golden_audio(shared, 'short.mat'), golden_audio(shared, 'excited.mat')]
    ckpts = [seq2seq['Act'], seq2seq['Val']]
    out, chunks_out = tmp_path / 'p.csv', tmp_path / 'c.csv'
    assert predict.main([*paths, '--checkpoint', ckpts[0], '--checkpoint', ckpts[1], '--norm-dir', upstream[1],
                         '--out', str(out), '--chunks-out', str(chunks_out)]) == 0
    rows, chunk_rows = predict_files(paths, checkpoints=ckpts, norm_dir=upstream[1], chunks=True)
    same_table(rows, pd.read_csv(out))
    same_table(chunk_rows, pd.read_csv(chunks_out))
    assert len(chunk_rows) == 2 * 2 * 22 and set(chunk_rows['attribute']) == {'Act', 'Val'}
    assert isinstance(predict_files(paths, checkpoints=ckpts, norm_dir=upstream[1]), pd.DataFrame)  # chunks=False


def test_predict_files_unreadable_input(shared, upstream, tmp_path, capsys):
    """An unreadable input raises UserError naming it; skip_errors=True skips it (named on stderr, in attrs)."""
    os.makedirs(tmp_path / 'in')
    shutil.copy(golden_audio(shared, 'short.mat'), tmp_path / 'in' / 'a.mat')
    bad = str(tmp_path / 'in' / 'b.wav')
    with open(bad, 'wb') as f:
        f.write(b'RIFF' + bytes(300))
    model_dir, norm_dir = upstream
    with pytest.raises(UserError, match='b.wav: not a readable audio file'):
        predict_files([tmp_path / 'in'], model_dir=model_dir, norm_dir=norm_dir)
    capsys.readouterr()
    df = predict_files([tmp_path / 'in'], model_dir=model_dir, norm_dir=norm_dir, skip_errors=True)
    assert [os.path.basename(f) for f in df['file']] == ['a.mat']
    assert df.attrs['failed'] == [bad] and bad in capsys.readouterr().err


# ----------------------------------------------------------------------------------
# speech presence: the voiced share, its warning, the plots

def pink_noise(seconds, rms=0.1, seed=0):
    """1/f noise: white noise's spectrum divided by sqrt(f)."""
    n = int(16000 * seconds)
    X = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))  # (n/2+1,)
    X /= np.sqrt(np.maximum(np.arange(len(X)), 1))
    x = np.fft.irfft(X, n)
    return x / x.std() * rms


@pytest.fixture(scope='module')
def speech(tmp_path_factory):
    """16 kHz wavs: speech (espeak-ng, a low and a high voice), pink noise, and long.wav = 8 s of that speech
    then 8 s of noise (two windows of 8 s)."""
    import lld
    exe = shutil.which('espeak-ng')
    if exe is None:
        missing('espeak-ng is not installed (apt-get install espeak-ng)')
    d = tmp_path_factory.mktemp('voiced')
    parts = []
    for voice in ('en', 'en+f3'):
        wav = str(d / f'raw_{voice}.wav')
        subprocess.run([exe, '-v', voice, '-w', wav, SENTENCES[2] + ' ' + SENTENCES[0]], check=True, capture_output=True)
        parts.append(lld.load_audio(wav))  # 22.05 kHz -> 16 kHz
    files = {'speech': str(d / 'speech.wav'), 'noise': str(d / 'noise.wav'), 'long': str(d / 'long.wav')}
    soundfile.write(files['speech'], parts[0], 16000)
    soundfile.write(files['noise'], pink_noise(4), 16000)
    both = np.concatenate(parts)
    assert len(both) >= 8 * 16000
    soundfile.write(files['long'], np.concatenate([both[:8 * 16000], pink_noise(8, seed=1)]), 16000)
    return files


def warnings_of(err):
    return [ln for ln in err.splitlines() if 'little voiced speech' in ln]


def test_voiced_share_and_warning(upstream, speech, capsys):
    """Speech is mostly voiced, pink noise not: one warning line, for the noise, and `voiced` tells them apart."""
    df = predict_files([speech['speech'], speech['noise']], model_dir=upstream[0], norm_dir=upstream[1])
    voiced = dict(zip(df['file'], df['voiced']))
    assert voiced[speech['speech']] > 0.4 and voiced[speech['noise']] < 0.02
    assert voiced[speech['noise']] < inference.VOICED_MIN < voiced[speech['speech']]
    lines = warnings_of(capsys.readouterr().err)
    assert lines == [f'warning: {speech["noise"]} 0.000-4.000 s: 0% voiced frames (under 10%): little voiced speech: '
                     'the values are not meaningful']


def test_front_end_without_voicing_leaves_voiced_empty(upstream, speech, monkeypatch, capsys):
    """A front end with no pitch tracker: `voiced` empty, no warning (even for noise)."""
    monkeypatch.setitem(inference.FRONTENDS, 'no_f0', inference.FrontEnd(inference.FRONTENDS['is13'].features, None))
    df = predict_files([speech['noise']], model_dir=upstream[0], norm_dir=upstream[1], frontend='no_f0')
    assert df['voiced'].isna().all() and df['Act'].notna().all()
    assert warnings_of(capsys.readouterr().err) == []


def test_plots_flag_little_voiced_speech(upstream, speech, tmp_path, monkeypatch, capsys):
    """--plot on 8 s of speech then 8 s of noise: the noise window is warned about, greyed in the timeline and
    named in the chunk plot's title; the speech-only file's chunk plot says nothing."""
    figures = {}
    for name in ('plot_chunks', 'plot_timeline'):
        def keep(*a, _f=getattr(plots, name), **k):
            fig = _f(*a, **k)
            figures[os.path.basename(a[0])] = fig
            return fig
        monkeypatch.setattr(plots, name, keep)
    code, rows, err = run(capsys, speech['long'], speech['speech'], '--plot', tmp_path / 'plots', *released(upstream))
    assert code == 0
    assert [r['voiced'] != '' and float(r['voiced']) < inference.VOICED_MIN for r in rows] == [False, True, False]
    assert [ln.split(' s: ')[0] for ln in warnings_of(err)] == [f'warning: {speech["long"]} 8.000-16.000']
    assert sorted(figures) == ['long_chunks.png', 'long_timeline.png', 'speech_chunks.png']

    def grey_spans(ax):  # the greyed windows, in seconds
        return [(p.get_bbox().x0, p.get_bbox().x1) for p in ax.patches
                if p.get_facecolor()[:3] == pytest.approx((0.8, 0.8, 0.8))]
    noise = [(pytest.approx(8.0, abs=0.02), pytest.approx(16.0, abs=0.02))]
    assert grey_spans(figures['long_timeline.png'].axes[0]) == noise
    assert grey_spans(figures['long_chunks.png'].axes[0]) == noise  # over the waveform
    assert grey_spans(figures['speech_chunks.png'].axes[0]) == []
    title = figures['long_chunks.png'].axes[0].get_title()
    assert 'little voiced speech (window 2 of 2: greyed, under 10% of the frames voiced)' in title
    assert 'little voiced speech' not in figures['speech_chunks.png'].axes[0].get_title()


def test_chunk_plot_points_to_the_emotion_curve(seq2seq, tmp_path):
    """SelfAttenVec's chunk plot (equal weights) says how to get the emotion curve once a seq2seq model is
    installed (./trained_seq2seq_model_v1.6, as pretrained.py puts it), and only then."""
    bounds = np.array([[0, 200]])
    spans = inference.window_chunk_spans(bounds, read_spec(checkpoint_name(ModelSpec(head='SelfAttenVec'), 128, iterations=5000)))
    results = {'Act': {'spans': spans, 'weights': np.full((1, 11), 1 / 11), 'pred': np.array([4.0])}}

    def title(head):
        fig = plots.plot_chunks(str(tmp_path / 'c.png'), 'x.wav', bounds, results, [head], wave=np.zeros(200 * 256))
        return fig.axes[0].get_title()
    assert '--checkpoint' not in title('SelfAttenVec')  # the test's cwd is an empty folder
    os.symlink(os.path.dirname(seq2seq['Act']), 'trained_seq2seq_model_v1.6')
    assert '--checkpoint trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_Act.pth.tar' in title('SelfAttenVec')
    assert '--checkpoint' not in title('RnnAttenVec')  # weights that say something
