"""The audio store gives load_audio's samples, rebuilds exactly when a wav changes, and shares store.py's machinery
without changing a feature store's folder names."""
import hashlib
import json
import os

import numpy as np
import pytest
import scipy.io
import soundfile

from chunkser import audio_store, store
from chunkser.audio_store import AudioFiles, AudioStore, open_audio, open_audio_store, require_audio_files
from chunkser.features.lld import load_audio
from chunkser.normterm import NormTerms
from chunkser.utils import UserError, frame_batch
from store_builds import builds  # noqa: F401  (a fixture)

LENGTHS = [1, 3, 400, 16000]  # samples at 16 kHz; a 44.1 kHz stereo file comes last


@pytest.fixture
def wavs(tmp_path):
    """(wav_dir, fnames): float wavs at 16 kHz (values off the 16-bit grid, so float16 rounds them) and one
    44.1 kHz stereo 16-bit file."""
    rng = np.random.default_rng(0)
    wav_dir = tmp_path / 'wav'
    wav_dir.mkdir()
    fnames = []
    for i, n in enumerate(LENGTHS):
        x = rng.uniform(-1, 1, n) * np.exp(rng.uniform(-12, 0, n))  # magnitudes from 6e-6 to 1: normal and subnormal
        soundfile.write(str(wav_dir / f'u{i}.wav'), x, 16000, subtype='FLOAT')
        fnames.append(f'u{i}.wav')
    soundfile.write(str(wav_dir / 'stereo.wav'), rng.uniform(-0.5, 0.5, (4410, 2)), 44100, subtype='PCM_16')
    fnames.append('stereo.wav')
    return str(wav_dir), fnames


def expected(wav_dir, fnames):
    return [load_audio(os.path.join(wav_dir, f)).astype(np.float32)[:, None] for f in fnames]  # (N_i, 1) each


def test_items_equal_load_audio_float32(wavs, tmp_path):
    wav_dir, fnames = wavs
    s = open_audio(str(tmp_path / 'st'), wav_dir, fnames, progress=False)
    assert isinstance(s, AudioStore) and len(s) == len(fnames) and s.fnames == fnames
    want = expected(wav_dir, fnames)
    assert [len(x) for x in want] == LENGTHS + [1600]  # 4410 samples at 44.1 kHz -> 1600 at 16 kHz
    files = AudioFiles(wav_dir, fnames)
    assert len(files) == len(fnames) and files.fnames == fnames
    for i, w in enumerate(want):
        for got in (s[i], files[i]):
            assert got.dtype == np.float32 and got.shape == w.shape
            assert np.array_equal(got, w)  # exact: the network reads what predict.py reads from the wav
    meta = json.load(open(os.path.join(s.path, 'meta.json')))
    assert meta['sample_rate'] == 16000 and meta['wav_dir'] == os.path.realpath(wav_dir)
    assert meta['feat_dim'] == 1 and meta['frames'] == sum(LENGTHS) + 1600 and meta['dtype'] == 'float32'
    assert os.path.getsize(os.path.join(s.path, 'samples.f32')) == 4 * meta['frames']
    assert open_audio(None, wav_dir, fnames).__class__ is AudioFiles


def test_items_float16_within_rounding(wavs, tmp_path):
    """float16 keeps 11 significant bits: round to nearest is off by at most 2**-11 of the value where the value is
    normal (|x| >= 2**-14), and by half the subnormal spacing 2**-24, 2**-25, below it. The items are exactly the
    float32 samples cast to float16 and back."""
    wav_dir, fnames = wavs
    s = open_audio(str(tmp_path / 'st'), wav_dir, fnames, progress=False, dtype='float16')
    assert s.dtype == 'float16' and os.path.getsize(os.path.join(s.path, 'samples.f16')) == 2 * s.data.shape[0]
    worst = 0.0
    for i, w in enumerate(expected(wav_dir, fnames)):
        got = s[i]
        assert got.dtype == np.float32 and got.shape == w.shape
        assert np.array_equal(got, w.astype(np.float16).astype(np.float32))
        err = np.abs(got.astype(np.float64) - w)
        assert (err <= np.maximum(np.abs(w.astype(np.float64)) * 2.0 ** -11, 2.0 ** -25)).all()
        worst = max(worst, err.max())
    assert worst > 0  # the samples are off the float16 grid: the check above checked something


def test_reuse_and_rebuild(wavs, tmp_path, builds):
    wav_dir, fnames = wavs
    root = str(tmp_path / 'st')
    s1 = open_audio_store(root, wav_dir, fnames, workers=1, progress=False)
    inode = os.stat(s1.path).st_ino
    s2 = open_audio_store(root, wav_dir, fnames, workers=1, progress=False)
    assert builds['n'] == 1 and s2.path == s1.path and os.stat(s2.path).st_ino == inode  # reused

    # u2.wav rewritten with other samples of the same length: the same size, so only the mtime says it changed
    path = os.path.join(wav_dir, 'u2.wav')
    size = os.path.getsize(path)
    soundfile.write(path, np.random.default_rng(9).uniform(-1, 1, 400), 16000, subtype='FLOAT')
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # filesystems with coarse mtimes
    assert os.path.getsize(path) == size
    s3 = open_audio_store(root, wav_dir, fnames, workers=1, progress=False)
    assert builds['n'] == 2 and s3.path != s1.path and not os.path.exists(s1.path)  # the old state removed
    assert np.array_equal(s3[2], expected(wav_dir, fnames)[2]) and not np.array_equal(s3[2], s1[2])
    assert not [d for d in os.listdir(root) if '.tmp' in d]


def test_parallel_build_same_bytes(wavs, tmp_path):
    wav_dir, fnames = wavs
    a = open_audio_store(str(tmp_path / 'a'), wav_dir, fnames, workers=1, progress=False)
    b = open_audio_store(str(tmp_path / 'b'), wav_dir, fnames, workers=2, progress=False)
    assert np.array_equal(np.asarray(a.data), np.asarray(b.data)) and np.array_equal(a.offsets, b.offsets)


def test_missing_and_empty_wavs(wavs, tmp_path):
    wav_dir, fnames = wavs
    with pytest.raises(UserError) as e:
        require_audio_files(wav_dir, fnames + ['gone.wav', 'gone2.wav'], 'Train')
    assert str(e.value) == (f'{os.path.join(wav_dir, "gone.wav")}: audio file of a Train row not found '
                            '(2 missing)')
    with pytest.raises(UserError, match=r'u9.wav: audio file of a Validation row not found \(1 missing\)'):
        require_audio_files(wav_dir, ['u9.wav'] + fnames, 'Validation')
    require_audio_files(wav_dir, fnames, 'Train')  # all there: nothing raised
    root = str(tmp_path / 'st')
    with pytest.raises(UserError, match='gone.wav: audio file not found'):
        open_audio(root, wav_dir, fnames + ['gone.wav'], progress=False)
    with pytest.raises(UserError, match='u0: audio file not found'):  # exact names: no extension is guessed
        open_audio(root, wav_dir, ['u0'], progress=False)
    soundfile.write(os.path.join(wav_dir, 'empty.wav'), np.zeros(0), 16000)
    with pytest.raises(UserError, match='empty.wav: no audio samples'):
        open_audio(root, wav_dir, fnames + ['empty.wav'], progress=False)
    with pytest.raises(UserError, match='empty.wav: no audio samples'):
        AudioFiles(wav_dir, ['empty.wav'])[0]
    assert not [d for d in os.listdir(root) if not d.endswith('.lock')]  # nothing half-built


def test_damaged_store_is_rebuilt(wavs, tmp_path, capsys):
    wav_dir, fnames = wavs
    root = str(tmp_path / 'st')
    path = open_audio(root, wav_dir, fnames, progress=False).path
    data = os.path.join(path, 'samples.f32')
    os.truncate(data, os.path.getsize(data) - 8)
    with pytest.raises(UserError, match='damaged audio store'):  # opened directly: one line
        AudioStore(path)
    s = open_audio(root, wav_dir, fnames, progress=False)  # opened as a trainer does: rebuilt
    assert 'damaged audio store' in capsys.readouterr().err and s.path == path
    for i, w in enumerate(expected(wav_dir, fnames)):
        assert np.array_equal(s[i], w)


def test_items_are_read_whole(wavs, tmp_path):
    """No chunk windows for samples: no gather, so utils.frame_batch reads items through store[i]."""
    wav_dir, fnames = wavs
    s = open_audio(str(tmp_path / 'st'), wav_dir, fnames, progress=False)
    assert not hasattr(s, 'gather') and not hasattr(AudioFiles(wav_dir, fnames), 'gather')
    x = frame_batch(s, [1, 3])  # (2, 16000, 1)
    want = expected(wav_dir, fnames)
    assert x.shape == (2, 16000, 1) and np.array_equal(x[1], want[3])
    assert np.array_equal(x[0, :3], want[1]) and np.isnan(x[0, 3:]).all()


# ----------------------------------------------------------------------------------
# the feature store beside it: folder names by store.py's documented formula, unchanged

def feature_folder(feat_dir, fnames, norm, dtype):
    """<list key>-<state key>: sha256 of the ordered names each followed by NUL; sha256 of
    'v1|<real feature folder>|<NormTerm fingerprint>', then '|<dtype>' unless float32, then
    '<name>|<size>|<mtime_ns>' NUL for each file's .mat; the first 16 hex digits of each."""
    lkey = hashlib.sha256(b''.join(f.encode() + b'\0' for f in fnames)).hexdigest()[:16]
    h = hashlib.sha256(f'v1|{os.path.realpath(feat_dir)}|{norm.fingerprint()}'.encode())
    if dtype != 'float32':
        h.update(f'|{dtype}'.encode())
    for f in fnames:
        st = os.stat(os.path.join(feat_dir, f[:-4] + '.mat'))
        h.update(f'{f}|{st.st_size}|{st.st_mtime_ns}\0'.encode())
    return f'{lkey}-{h.hexdigest()[:16]}'


def test_feature_folder_names_unchanged_and_beside_audio(wavs, tmp_path):
    """Feature stores keep their folder names (existing stores are reused); an audio store and a feature store of
    one list share a store folder without either removing the other."""
    wav_dir, fnames = wavs
    F, rng = 3, np.random.default_rng(1)
    for f in fnames:  # each wav's features beside it
        T = int(rng.integers(1, 9))
        scipy.io.savemat(os.path.join(wav_dir, f[:-4] + '.mat'),
                         {'Audio_data': np.concatenate([np.arange(T)[:, None] * 0.016, rng.standard_normal((T, F))], 1)})
    norm = NormTerms(np.zeros(F), np.ones(F), {'Act': (4.0, 1.0)})
    root = str(tmp_path / 'st')
    paths = []
    for dtype in ('float32', 'float16'):
        fs = store.open_store(root, wav_dir, fnames, norm, workers=1, progress=False, dtype=dtype)
        assert os.path.basename(fs.path) == feature_folder(wav_dir, fnames, norm, dtype)
        au = open_audio(root, wav_dir, fnames, progress=False, dtype=dtype)
        assert os.path.basename(au.path).split('-')[0] == os.path.basename(fs.path).split('-')[0]  # one list
        paths += [fs.path, au.path]
    assert len(set(paths)) == 4 and all(os.path.isfile(os.path.join(p, 'meta.json')) for p in paths)
    assert sorted(os.listdir(root)) == sorted([os.path.basename(p) for p in paths] + [
        f'.{store.list_key(fnames)}.lock'])
    assert isinstance(store.FeatureStore(paths[0]), store.FeatureStore) and hasattr(store.FeatureStore(paths[0]), 'gather')
    assert audio_store.AudioSource(wav_dir).key() != store.FeatureSource(wav_dir, norm).key()
