"""predict.py: audio, .mat and folder inputs, windows of long recordings, plots, missing checkpoints, the library
call (predict_files = the command's CSV), speech presence (`voiced`, its warning and plots), categorical and
multi-attribute checkpoints (their columns, the search, conflicts), and the acceptance check on synthetic speech:
predicted arousal and dominance follow the speaking effort."""
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
import torch

from chunkser import inference
from chunkser import plots
from chunkser.commands import predict
from chunkser.commands import pretrained
from chunkser.checkpoint import checkpoint_name, load_model, read_spec, save_checkpoint
from figures import figures  # noqa: F401  (a fixture)
from conftest import missing
from chunkser.corpus import load_features
from chunkser.model import ModelSpec, build_model
from chunkser.normterm import NormTerms
from chunkser.commands.predict import predict_files
from chunkser.scoring import predict_utterances
from chunkser.utils import UserError

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
                        '--plot', plots, '--segments', 'fixed', *released(upstream))
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
    assert predict.main([*paths, '--model-dir', act_dom_models, '--norm-dir', upstream[1], '--out', str(out),
                         '--segments', 'fixed']) == 0
    df = predict_files(paths, model_dir=act_dom_models, norm_dir=upstream[1], segments='fixed')
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
    from chunkser.features import lld
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
    df = predict_files([speech['noise']], model_dir=upstream[0], norm_dir=upstream[1], frontend='no_f0', segments='fixed')
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
    code, rows, err = run(capsys, speech['long'], speech['speech'], '--plot', tmp_path / 'plots', '--segments', 'fixed',
                          *released(upstream))
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
    results = {'Act': {'spans': spans, 'weights': np.full((1, 11), 1 / 11), 'values': {'Act': np.array([4.0])}}}

    def title(head):
        fig = plots.plot_chunks(str(tmp_path / 'c.png'), 'x.wav', bounds, results, [head], wave=np.zeros(200 * 256))
        return fig.axes[0].get_title()
    assert '--checkpoint' not in title('SelfAttenVec')  # the test's cwd is an empty folder
    os.symlink(os.path.dirname(seq2seq['Act']), 'trained_seq2seq_model_v1.6')
    assert '--checkpoint trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_Act.pth.tar' in title('SelfAttenVec')
    assert '--checkpoint' not in title('RnnAttenVec')  # weights that say something


# ----------------------------------------------------------------------------------
# objectives: a categorical model, one model of three attributes, the search, conflicts

TINY = ['-iter', '3', '-batch', '8', '-atten', 'RnnAttenVec']  # the fixture's run: its checkpoint names


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Tiny models (3 iterations) of a synthetic corpus whose every target is audible: -emo Class, -emo Act Val
    Dom and -emo Act in one folder. -> paths: 'Class', 'ActValDom', 'Act' (checkpoints), 'models', 'norm_dir',
    'test' (the Test split's .mat files, one window each)."""
    from chunkser.commands import norm_para
    from chunkser.commands import training
    from chunkser.synthetic import write_corpus
    d = tmp_path_factory.mktemp('objectives')
    feat_dir, label_csv = write_corpus(str(d), size=40, all_targets=True, min_frames=50, max_frames=250)
    corpus = ['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', str(d / 'NormTerm')]
    assert norm_para.main(corpus) == 0
    out = {'models': str(d / 'Models'), 'norm_dir': str(d / 'NormTerm')}
    for emo in (['Class'], ['Act', 'Val', 'Dom'], ['Act']):  # --store: not in the cwd of whichever test comes first
        assert training.main([*TINY, '-emo', *emo, '--seed', '0', '--out-dir', out['models'], '--store',
                              str(d / 'store'), *corpus]) == 0
        name = ''.join(emo)
        out[name] = os.path.join(out['models'], checkpoint_name(ModelSpec(head='RnnAttenVec', emo=name), 8, iterations=3))
    df = pd.read_csv(label_csv)
    out['test'] = [os.path.join(feat_dir, f[:-4] + '.mat') for f in df.FileName[df.Split_Set == 'Test']]
    return out


def scored_like_testing(ckpt, files):
    """The network's outputs (scoring.predict_utterances, as testing.py) on the same features, turned into values by
    formula here: -emo Class: softmax of the logits, Class their argmax in the JSON's class order; attributes: output
    column j (in the order the name gives them, 'ActValDom') times the NormTerm's label std plus its mean."""
    spec = read_spec(ckpt)
    norm = NormTerms.load(spec.norm_dir)
    feats = [norm.normalize(load_features(f)).astype(np.float32) for f in files]
    raw, _ = predict_utterances(load_model(ckpt, spec), feats)
    raw = np.asarray(raw, np.float64).reshape(len(files), -1)  # (N, outputs)
    if spec.emo == 'Class':
        p = np.exp(raw - raw.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return {'Class': np.array(spec.classes)[p.argmax(1)], **{f'p_{c}': p[:, i] for i, c in enumerate(spec.classes)}}
    attributes = [spec.emo[k:k + 3] for k in range(0, len(spec.emo), 3)]
    assert raw.shape[1] == len(attributes)
    return {a: raw[:, j] * norm.labels[a][1] + norm.labels[a][0] for j, a in enumerate(attributes)}


def test_class_checkpoint_gives_class_and_probabilities(trained, tmp_path, capsys):
    """-emo Class: Class and p_<c> (the JSON's class order) after Dom; each row's probabilities sum to 1, Class is
    their argmax, both as testing.py scores them; Act/Val/Dom stay empty; predict_files reads the same."""
    out = tmp_path / 'p.csv'
    code, rows, err = run(capsys, *trained['test'], *TINY, '-emo', 'Class', '--model-dir', trained['models'],
                          '--out', out)
    assert code == 0 and len(rows) == len(trained['test']) and 'warning' not in err
    classes = read_spec(trained['Class']).classes
    assert classes == ['A', 'S', 'H', 'N']  # the challenge's order of the quadrants synthetic.py labels
    assert list(rows[0]) == ['file', 'Act', 'Val', 'Dom', 'Class', 'p_A', 'p_S', 'p_H', 'p_N', 'start', 'end', 'voiced']
    p = np.array([[float(r[f'p_{c}']) for c in classes] for r in rows])
    np.testing.assert_allclose(p.sum(1), 1, rtol=0, atol=5e-6)
    assert [r['Class'] for r in rows] == [classes[i] for i in p.argmax(1)]
    want = scored_like_testing(trained['Class'], trained['test'])
    assert [r['Class'] for r in rows] == list(want['Class'])
    np.testing.assert_allclose(p, np.stack([want[f'p_{c}'] for c in classes], 1), rtol=0, atol=1e-6)
    assert all(r[e] == '' for r in rows for e in EMOS)
    same_table(predict_files(trained['test'], checkpoints=trained['Class']), pd.read_csv(out))


def test_one_checkpoint_fills_the_three_attributes(trained, capsys):
    """-emo Act Val Dom finds the one ActValDom model, --checkpoint gives the same rows, and its three columns are
    testing.py's outputs of that model (de-normalised per attribute), to 1e-6."""
    code, found, err = run(capsys, *trained['test'], *TINY, '-emo', 'Act', 'Val', 'Dom', '--model-dir', trained['models'])
    assert code == 0 and 'warning' not in err
    code, given, _ = run(capsys, *trained['test'], '--checkpoint', trained['ActValDom'])
    assert code == 0 and found == given and list(found[0]) == inference.HEADER
    want = scored_like_testing(trained['ActValDom'], trained['test'])
    assert len(set(want['Act'].round(3))) > 1  # outputs that differ between rows
    for emo in EMOS:
        np.testing.assert_allclose([float(r[emo]) for r in found], want[emo], rtol=0, atol=1e-6, err_msg=emo)
    df = predict_files(trained['test'], model_dir=trained['models'], emo=['Act', 'Val', 'Dom'], atten='RnnAttenVec',
                       iterations=3, batch_size=8)
    np.testing.assert_allclose(df[list(EMOS)].to_numpy(), [[float(r[e]) for e in EMOS] for r in found], atol=1e-6)


def test_default_search_is_one_checkpoint_per_attribute(trained, tmp_path, monkeypatch, capsys):
    """Without -emo the search looks for Act, Val and Dom models by name: beside the ActValDom model it finds the
    Act one and leaves Val and Dom empty; with the ActValDom model alone it finds nothing."""
    looked = []
    monkeypatch.setattr(inference, 'find_checkpoint', lambda name, d: looked.append(name) or
                        (os.path.join(d, name) if os.path.isfile(os.path.join(d, name)) else None))
    code, rows, err = run(capsys, trained['test'][0], *TINY, '--model-dir', trained['models'])
    assert code == 0
    assert looked == [checkpoint_name(ModelSpec(head='RnnAttenVec', emo=e), 8, iterations=3) for e in EMOS]
    assert rows[0]['Act'] != '' and rows[0]['Val'] == rows[0]['Dom'] == '' and list(rows[0]) == inference.HEADER
    assert looked[1] in err and looked[2] in err
    os.makedirs(tmp_path / 'avd')
    os.symlink(trained['ActValDom'], tmp_path / 'avd' / os.path.basename(trained['ActValDom']))
    with pytest.raises(UserError, match='no RnnAttenVec checkpoint .*make pretrained.*-emo Act Val Dom'):
        predict.main([trained['test'][0], *TINY, '--model-dir', str(tmp_path / 'avd')])


def test_two_checkpoints_for_one_column_are_refused(trained):
    """--checkpoint ActValDom --checkpoint Act (both fill Act), or two Class models: one line naming both files."""
    for a, b, col in ((trained['ActValDom'], trained['Act'], 'Act'), (trained['Class'], trained['Class'], 'Class')):
        with pytest.raises(UserError) as e:
            predict.main([trained['test'][0], '--checkpoint', a, '--checkpoint', b])
        assert str(e.value) == f'{b}: a second {col} checkpoint (after {a}): give one checkpoint per column'
    with pytest.raises(UserError, match='-emo and --checkpoint'):
        predict_files(trained['test'][:1], checkpoints=trained['Act'], emo='Class')


def test_encoder_and_epochs_name_the_keras_checkpoints(trained, tmp_path, capsys):
    """-model CNN -ep 100 -batch 256 -atten GatedVec looks for the converted Keras names, found in
    ./trained_model_keras_v1.6 (the cwd is tmp_path); here random CNN models of Act and Dom only."""
    os.makedirs('trained_model_keras_v1.6')
    torch.manual_seed(0)
    for emo in ('Act', 'Dom'):
        spec = ModelSpec(encoder='CNN', head='GatedVec', emo=emo, bn_momentum=0.01)
        save_checkpoint(os.path.join('trained_model_keras_v1.6', checkpoint_name(spec, 256, epochs=100)),
                        build_model(spec).eval(), spec)
    code, rows, err = run(capsys, *trained['test'][:2], '-model', 'CNN', '-ep', 100, '-batch', 256, '-atten', 'GatedVec',
                          '--norm-dir', trained['norm_dir'])
    assert code == 0 and 'CNN_epoch100_batch256_ChunkSeq2One_GatedVec_Val.pth.tar' in err
    assert all(r['Act'] != '' and r['Dom'] != '' and r['Val'] == '' for r in rows)


def test_plots_of_a_class_and_a_three_attribute_model(trained, tmp_path, figures, capsys):
    """--plot with the Class and the ActValDom model on a recording of two windows: a chunk row per model, titled
    with its outputs (the predicted class and its probability), and a timeline with the attributes and classes."""
    from chunkser.synthetic import make_utterance
    long = str(tmp_path / 'long.mat')
    scipy.io.savemat(long, {'Audio_data': make_utterance(np.random.default_rng(0), 1000, 5.0)})  # 16 s: 2 windows
    code, rows, _ = run(capsys, long, '--checkpoint', trained['Class'], '--checkpoint', trained['ActValDom'],
                        '--plot', tmp_path / 'plots')
    assert code == 0 and len(rows) == 2
    assert sorted(os.listdir(tmp_path / 'plots')) == ['long_chunks.png', 'long_timeline.png']
    titles = [ax.get_title(loc='left') for ax in figures['long_chunks.png'].axes[1:]]
    assert [ax.get_ylabel() for ax in figures['long_chunks.png'].axes[1:]] == ['Class chunk', 'ActValDom chunk']
    p = [max(float(r[c]) for c in r if c.startswith('p_')) for r in rows]
    assert titles[0].startswith(f'Class = {rows[0]["Class"]} (p {p[0]:.2f}), {rows[1]["Class"]} (p {p[1]:.2f})')
    assert titles[1].startswith(f'Act = {float(rows[0]["Act"]):.2f}, {float(rows[1]["Act"]):.2f}; Val = ')
    timeline = figures['long_timeline.png'].axes[0]
    assert [t.get_text() for t in timeline.texts] == [f'{r["Class"]} (p {q:.2f})' for r, q in zip(rows, p)]
    assert [t.get_text() for t in timeline.get_legend().get_texts()] == list(EMOS)
