"""feature_extraction.py: the golden .mat files from their .wav, resampling/down-mixing, folder runs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import soundfile

from chunkser.commands import feature_extraction
from chunkser.features import lld as fx
from chunkser.normterm import NormTerms
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def golden(shared, name):
    return os.path.join(shared, 'golden', 'audio', name)


def load_golden(shared, stem):
    return scipy.io.loadmat(golden(shared, stem + '.mat'))['Audio_data']


@pytest.mark.parametrize('stem', ['calm', 'excited', 'short'])
def test_matches_golden(shared, stem):
    ours = fx.extract_features(golden(shared, stem + '.wav'))
    ref = load_golden(shared, stem)
    assert ours.dtype == np.float64 and ours.shape == ref.shape
    # same opensmile, same 16-bit samples: the numbers agree to the last bit (allclose would hide a drift)
    np.testing.assert_array_equal(ours, ref)


def test_44k_stereo_close_to_calm(shared):
    ours = fx.extract_features(golden(shared, 'calm_44k_stereo.wav'))
    ref = load_golden(shared, 'calm')
    assert abs(len(ours) - len(ref)) <= 1
    T = min(len(ours), len(ref))
    norm = NormTerms.load(os.path.join(shared, 'upstream-v1.6', 'NormTerm'))
    diff = np.abs(norm.normalize(ours[:T, 1:]) - norm.normalize(ref[:T, 1:]))
    assert np.median(diff) < 0.02


def test_flac_matches_golden(shared, tmp_path):
    x, sr = soundfile.read(golden(shared, 'calm.wav'), dtype='int16')
    soundfile.write(tmp_path / 'calm.flac', x, sr, subtype='PCM_16')  # lossless: same samples
    np.testing.assert_array_equal(fx.extract_features(str(tmp_path / 'calm.flac')), load_golden(shared, 'calm'))


def test_too_short_and_unreadable(tmp_path):
    soundfile.write(tmp_path / 'tiny.wav', np.zeros(100, np.int16), 16000)
    with pytest.raises(UserError, match='tiny.wav.*shorter than one 32 ms frame'):
        fx.extract_features(str(tmp_path / 'tiny.wav'))
    (tmp_path / 'junk.wav').write_bytes(b'not audio at all' * 100)
    with pytest.raises(UserError, match='junk.wav: not a readable audio file'):
        fx.extract_features(str(tmp_path / 'junk.wav'))


def make_folder(shared, root):
    """calm.wav at the top, short.flac in a sub-folder, and a corrupt file."""
    os.makedirs(root / 'sub')
    shutil.copy(golden(shared, 'calm.wav'), root / 'calm.wav')
    x, sr = soundfile.read(golden(shared, 'short.wav'), dtype='int16')
    soundfile.write(root / 'sub' / 'short.flac', x, sr)
    (root / 'sub' / 'broken.wav').write_bytes(b'RIFF' + os.urandom(2000))
    (root / 'notes.txt').write_text('not audio, ignored')


@pytest.mark.parametrize('workers', [1, 2])
def test_folder_with_corrupt_file(shared, tmp_path, capsys, workers):
    make_folder(shared, tmp_path / 'wav')
    out = tmp_path / 'feat'
    code = feature_extraction.main(['--wav-dir', str(tmp_path / 'wav'), '--out-dir', str(out), '--workers', str(workers)])
    assert code == 1
    assert 'broken.wav' in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ['calm.mat', 'short.mat']  # flat, no temporary files left
    np.testing.assert_array_equal(scipy.io.loadmat(out / 'short.mat')['Audio_data'], load_golden(shared, 'short'))


def test_resume_skips_existing(shared, tmp_path, monkeypatch):
    make_folder(shared, tmp_path / 'wav')
    os.remove(tmp_path / 'wav' / 'sub' / 'broken.wav')
    out = tmp_path / 'feat'
    assert fx.extract_folder(str(tmp_path / 'wav'), str(out), workers=1) == []
    os.remove(out / 'short.mat')
    (out / 'short.mat.tmp999').write_bytes(b'half a file from an interrupted run')
    done = []
    real = fx.extract_features
    monkeypatch.setattr(fx, 'extract_features', lambda p: done.append(os.path.basename(p)) or real(p))
    assert feature_extraction.main(['--wav-dir', str(tmp_path / 'wav'), '--out-dir', str(out), '--workers', '1']) == 0
    assert done == ['short.flac']  # calm.mat existed: skipped
    assert scipy.io.loadmat(out / 'short.mat')['Audio_data'].shape == (37, 131)


def test_same_stem_twice_is_reported(shared, tmp_path):
    os.makedirs(tmp_path / 'wav' / 'a')
    shutil.copy(golden(shared, 'short.wav'), tmp_path / 'wav' / 'short.wav')
    shutil.copy(golden(shared, 'short.wav'), tmp_path / 'wav' / 'a' / 'short.wav')
    shutil.copy(golden(shared, 'excited.wav'), tmp_path / 'wav' / 'a' / 'excited.wav')
    failures = fx.extract_folder(str(tmp_path / 'wav'), str(tmp_path / 'feat'), workers=1, verbose=False)
    assert len(failures) == 2 and all('same name short' in err for _, err in failures)
    assert os.listdir(tmp_path / 'feat') == ['excited.mat']


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match='nowhere: audio folder not found'):
        feature_extraction.main(['--wav-dir', str(tmp_path / 'nowhere'), '--out-dir', str(tmp_path / 'o')])
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(UserError, match='no .wav or .flac files'):
        feature_extraction.main(['--wav-dir', str(tmp_path / 'empty'), '--out-dir', str(tmp_path / 'o')])
    with pytest.raises(UserError, match='--wav-dir'):
        feature_extraction.main(['--out-dir', str(tmp_path / 'o')])


@pytest.mark.parametrize('case', ['no --wav-dir', 'missing folder'])
def test_command_exits_2_with_one_line(tmp_path, case):
    """feature_extraction.py as a command: one stderr line `error: ...`, exit code 2, no traceback, nothing written."""
    nowhere = str(tmp_path / 'nowhere')
    argv, line = {'no --wav-dir': ([], 'error: feature_extraction.py: the following arguments are required: --wav-dir'),
                  'missing folder': (['--wav-dir', nowhere], f'error: {nowhere}: audio folder not found')}[case]
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'feature_extraction.py'), *argv,
                        '--out-dir', str(tmp_path / 'o')], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [line]
    assert not os.path.exists(tmp_path / 'o')
