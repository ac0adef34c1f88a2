"""predict.py: audio, .mat and folder inputs, windows of long recordings, plots, missing checkpoints, and the
acceptance check on synthetic speech: predicted arousal and dominance follow the speaking effort."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import scipy.stats
import soundfile

import predict
from checkpoint import checkpoint_name
from conftest import missing
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
        name = checkpoint_name(5000, 128, 'SelfAttenVec', emo)
        os.symlink(os.path.join(model_dir, name), tmp_path / 'models' / name)
    code, rows, err = run(capsys, golden_audio(shared, 'excited.mat'), '--model-dir', tmp_path / 'models',
                          '--norm-dir', norm_dir)
    assert code == 0
    assert checkpoint_name(5000, 128, 'SelfAttenVec', 'Val') in err
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
