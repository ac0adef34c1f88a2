"""The feature store gives the same numbers as the .mat path, rebuilds exactly when it must, and is memory-mapped."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import scipy.io

from chunkser import store
from chunkser.corpus import MatFeatures
from chunkser.normterm import NormTerms
from chunkser.store import FeatureStore, open_store
from chunkser.utils import DynamicChunkSplitData, UserError
from store_builds import builds  # noqa: F401  (a fixture)

F = 130
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# lengths around every edge of the chunk rule: T <= 5, 6..52 (the reference crashes), 53..61 (< m),
# 62..71 (step 0), 72 (first step 1), long ones
LENGTHS = [1, 5, 6, 30, 52, 53, 61, 62, 63, 71, 72, 73, 120, 688]


def write_mat(path, x):
    t = np.arange(len(x))[:, None] * 0.016
    scipy.io.savemat(path, {'Audio_data': np.concatenate([t, x], axis=1)})


@pytest.fixture
def corpus(tmp_path):
    """(feat_dir, fnames, norm): utterances of LENGTHS with NaN and +-Inf frames and values past the clip."""
    rng = np.random.default_rng(0)
    feat_dir = tmp_path / 'feat_mat'
    feat_dir.mkdir()
    mean, std = rng.normal(0, 5, F), rng.uniform(0.5, 3, F)
    fnames = []
    for i, T in enumerate(LENGTHS):
        x = mean + std * 2.5 * rng.standard_normal((T, F))  # many values beyond +-3 after z-norm
        if i % 3 == 0:
            x[rng.integers(0, T), rng.integers(0, F)] = np.nan
            x[rng.integers(0, T), :4] = np.inf
            x[rng.integers(0, T), 4:9] = -np.inf
        name = f'utt_{i:02d}.wav'
        write_mat(str(feat_dir / f'utt_{i:02d}.mat'), x)
        fnames.append(name)
    norm = NormTerms(mean, std, {'Act': (4.0, 1.0), 'Dom': (4.0, 1.0), 'Val': (4.0, 1.0)})
    return str(feat_dir), fnames, norm


def test_items_equal_mat_path(corpus, tmp_path):
    feat_dir, fnames, norm = corpus
    s = open_store(str(tmp_path / 'st'), feat_dir, fnames, norm, workers=1, progress=False)
    mat = MatFeatures(feat_dir, fnames, norm)
    assert len(s) == len(mat) == len(LENGTHS)
    assert s.lengths.tolist() == LENGTHS
    for i in range(len(s)):
        a, b = s[i], mat[i]
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.array_equal(a, b)  # bit-for-bit, NaN -> 0 and +-Inf -> +-3 included
        assert np.isfinite(a).all() and np.abs(a).max() <= 3


@pytest.mark.parametrize('m,C,n', [(62, 11, 1), (62, 11, 2), (62, 5, 3), (20, 4, 1), (62, 1, 1)])
def test_gather_equals_dynamic_chunk_split(corpus, tmp_path, m, C, n):
    feat_dir, fnames, norm = corpus
    s = open_store(str(tmp_path / 'st'), feat_dir, fnames, norm, workers=1, progress=False)
    mat = MatFeatures(feat_dir, fnames, norm)
    rng = np.random.default_rng(1)
    for idx in [np.arange(len(s)), rng.integers(0, len(s), 9), np.array([0]), np.array([6, 6, 1])]:
        want = DynamicChunkSplitData([mat[i] for i in idx], m, C, n)  # (B*n*C, m, F)
        got = s.gather(idx, m, C, n)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want)


def test_gather_store_shorter_than_a_chunk(tmp_path):
    """Only short utterances, 36 frames in the whole map (no window of m = 62 rows exists): all padded."""
    rng = np.random.default_rng(4)
    feat_dir = tmp_path / 'f'
    feat_dir.mkdir()
    for i, T in enumerate((1, 5, 30)):
        write_mat(str(feat_dir / f's{i}.mat'), rng.standard_normal((T, F)))
    fnames = ['s0.wav', 's1.wav', 's2.wav']
    norm = NormTerms(np.zeros(F), np.ones(F), {'Act': (0.0, 1.0)})
    s = open_store(str(tmp_path / 'st'), str(feat_dir), fnames, norm, workers=1, progress=False)
    mat = MatFeatures(str(feat_dir), fnames, norm)
    idx = np.array([2, 0, 1, 2])
    assert np.array_equal(s.gather(idx, 62, 11, 1), DynamicChunkSplitData([mat[i] for i in idx], 62, 11, 1))


def test_reuse_and_rebuild(corpus, tmp_path, builds):
    feat_dir, fnames, norm = corpus
    root = str(tmp_path / 'st')
    s1 = open_store(root, feat_dir, fnames, norm, workers=1, progress=False)
    mtime = os.stat(os.path.join(s1.path, 'features.f32')).st_mtime_ns
    s2 = open_store(root, feat_dir, fnames, norm, workers=1, progress=False)
    assert builds['n'] == 1 and s2.path == s1.path  # reused
    assert os.stat(os.path.join(s2.path, 'features.f32')).st_mtime_ns == mtime

    # a changed NormTerm: rebuilt, the superseded version removed
    norm2 = NormTerms(norm.feat_mean + 0.5, norm.feat_std, norm.labels)
    s3 = open_store(root, feat_dir, fnames, norm2, workers=1, progress=False)
    assert builds['n'] == 2 and s3.path != s1.path and not os.path.exists(s1.path)
    assert np.array_equal(s3[2], MatFeatures(feat_dir, fnames, norm2)[2])

    # label-only changes leave the NormTerm's feature terms and the file list alone: no rebuild
    norm3 = NormTerms(norm2.feat_mean, norm2.feat_std, norm2.labels)
    assert open_store(root, feat_dir, fnames, norm3, workers=1, progress=False).path == s3.path
    assert builds['n'] == 2

    # a rewritten feature file: rebuilt with the new numbers
    path = os.path.join(feat_dir, 'utt_03.mat')
    x = np.random.default_rng(5).standard_normal((40, F))
    write_mat(path, x)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # filesystems with coarse mtimes
    s4 = open_store(root, feat_dir, fnames, norm2, workers=1, progress=False)
    assert builds['n'] == 3 and s4.path != s3.path
    assert s4.lengths[3] == 40 and np.array_equal(s4[3], MatFeatures(feat_dir, fnames, norm2)[3])

    # rewritten in place with other numbers of the same shape: the same size, so only the mtime says it changed
    size = os.path.getsize(path)
    write_mat(path, np.random.default_rng(6).standard_normal((40, F)))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert os.path.getsize(path) == size
    s4b = open_store(root, feat_dir, fnames, norm2, workers=1, progress=False)
    assert builds['n'] == 4 and s4b.path != s4.path
    assert np.array_equal(s4b[3], MatFeatures(feat_dir, fnames, norm2)[3]) and not np.array_equal(s4b[3], s4[3])
    s4 = s4b

    # another file list (another split): its own store; the first one stays
    s5 = open_store(root, feat_dir, fnames[:5], norm2, workers=1, progress=False)
    assert builds['n'] == 5 and len(s5) == 5 and os.path.exists(s4.path)
    assert open_store(root, feat_dir, fnames, norm2, workers=1, progress=False).path == s4.path
    assert builds['n'] == 5
    assert not [d for d in os.listdir(root) if '.tmp' in d]  # no temporary folders left


def test_parallel_build_same_bytes(corpus, tmp_path):
    feat_dir, fnames, norm = corpus
    a = open_store(str(tmp_path / 'a'), feat_dir, fnames, norm, workers=1, progress=False)
    b = open_store(str(tmp_path / 'b'), feat_dir, fnames, norm, workers=2, progress=False)
    assert np.array_equal(np.asarray(a.data), np.asarray(b.data))
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.lengths, b.lengths)


def test_memory_mapped(tmp_path):
    """The features are file pages of a read-only map: reading all of them adds no anonymous memory."""
    rng = np.random.default_rng(2)
    feat_dir = tmp_path / 'feat'
    feat_dir.mkdir()
    fnames = []
    for i in range(24):  # 24 x 2000 x 130 x 4 B = 25 MB of float32
        write_mat(str(feat_dir / f'u{i}.mat'), rng.standard_normal((2000, F)))
        fnames.append(f'u{i}.wav')
    norm = NormTerms(np.zeros(F), np.ones(F), {'Act': (0.0, 1.0)})
    path = open_store(str(tmp_path / 'st'), str(feat_dir), fnames, norm, workers=1, progress=False).path
    size = os.path.getsize(os.path.join(path, 'features.f32'))
    assert size == 24 * 2000 * F * 4

    def rss_anon():
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith('RssAnon:'))
    s = FeatureStore(path)
    assert isinstance(s.data, np.memmap) and s.data.mode == 'r' and not s.data.flags.writeable
    if not os.path.exists('/proc/self/status'):
        return
    before = rss_anon()
    total = sum(float(s.data[i:i + 4096].sum(dtype=np.float64)) for i in range(0, s.data.shape[0], 4096))  # every page
    assert np.isfinite(total)
    assert rss_anon() - before < size // 4


def test_errors(corpus, tmp_path):
    feat_dir, fnames, norm = corpus
    with pytest.raises(UserError, match='no utterances'):
        open_store(str(tmp_path / 'st'), feat_dir, [], norm)
    with pytest.raises(UserError, match='not found'):
        open_store(str(tmp_path / 'st'), feat_dir, fnames + ['missing.wav'], norm)
    with open(os.path.join(feat_dir, 'utt_05.mat'), 'wb') as f:
        f.write(b'not a mat file')
    with pytest.raises(UserError, match='utt_05.mat'):
        open_store(str(tmp_path / 'st'), feat_dir, fnames, norm, workers=2, progress=False)
    assert not [d for d in os.listdir(tmp_path / 'st') if not d.endswith('.lock')]  # nothing half-built
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(UserError, match='cannot create'):
        open_store(str(blocker / 'st'), feat_dir, fnames, norm)


def big_corpus(tmp_path, n=24, T=2000):
    """n utterances of T frames (T >= 200: each result of a build worker overfills a 64 KiB pipe)."""
    rng = np.random.default_rng(3)
    feat_dir = tmp_path / 'feat'
    feat_dir.mkdir()
    for i in range(n):
        write_mat(str(feat_dir / f'u{i:02d}.mat'), rng.standard_normal((T, F)))
    return str(feat_dir), [f'u{i:02d}.wav' for i in range(n)]


def test_parallel_build_error_never_hangs(tmp_path):
    """One corrupt file among large ones, 2 workers, 8 builds: each fails with the file named, none hangs
    (multiprocessing.Pool.terminate deadlocked here in about one build in three). In a subprocess with a timeout."""
    feat_dir, fnames = big_corpus(tmp_path, n=40, T=200)
    with open(os.path.join(feat_dir, 'u00.mat'), 'wb') as f:
        f.write(b'not a mat file')
    script = f"""
import sys; sys.path.insert(0, {ROOT!r})
import numpy as np
from chunkser.store import open_store
from chunkser.normterm import NormTerms
from chunkser.utils import UserError
norm = NormTerms(np.zeros({F}), np.ones({F}), {{'Act': (0.0, 1.0)}})
for k in range(8):
    try:
        open_store({str(tmp_path / 'st')!r}, {feat_dir!r}, {fnames!r}, norm, workers=2, progress=False)
    except UserError as e:
        assert 'u00.mat' in str(e), e
        print('failed as expected', flush=True)
"""
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('failed as expected') == 8
    assert not [d for d in os.listdir(tmp_path / 'st') if not d.endswith('.lock')]


def test_ctrl_c_during_parallel_build(tmp_path):
    """SIGINT while the workers run: exit 130 within seconds, no temporary folder left."""
    feat_dir, fnames = big_corpus(tmp_path, n=600, T=600)
    pd.DataFrame({'FileName': fnames, 'EmoAct': 4.0, 'Split_Set': 'Train'}).to_csv(tmp_path / 'l.csv', index=False)
    NormTerms(np.zeros(F), np.ones(F), {e: (4.0, 1.0) for e in ('Act', 'Val', 'Dom')}).save(str(tmp_path / 'N'))
    root = tmp_path / 'st'
    p = subprocess.Popen([sys.executable, '-m', 'chunkser.store', '--feat-dir', feat_dir, '--label-csv',
                          str(tmp_path / 'l.csv'), '--norm-dir', str(tmp_path / 'N'), '--store', str(root),
                          '--splits', 'train', '--workers', '2'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a child inherits an ignored SIGINT (Python then never installs its handler): start it with
                         # the default, whatever an earlier test of this pytest process left
                         cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    def written():  # bytes in the store being built: > 0 once the workers are running
        tmp = [d for d in os.listdir(root) if '.tmp' in d] if root.is_dir() else []
        f = os.path.join(root, tmp[0], 'features.f32') if tmp else ''
        return os.path.getsize(f) if os.path.exists(f) else 0
    while not written():  # (a SIGINT that lands while the workers are forked is lost: Python ignores it there)
        assert p.poll() is None and time.time() - t0 < 60, 'the build never started'
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, (p.returncode, signal.getsignal(signal.SIGINT), err[-2000:])
    assert not [d for d in os.listdir(root) if not d.endswith('.lock')]


def test_cli_builds_every_split(tmp_path):
    from chunkser.commands.norm_para import compute_terms
    from chunkser.synthetic import write_corpus
    from chunkser.corpus import read_label_table
    feat_dir, label_csv = write_corpus(str(tmp_path / 'c'), size=20, seed=3, min_frames=70, max_frames=120)
    compute_terms(read_label_table(label_csv), feat_dir, label_csv).save(str(tmp_path / 'NormTerm'))
    assert store.main(['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', str(tmp_path / 'NormTerm'),
                       '--workers', '1']) == 0
    root = 'feat_store'  # the default, in the (temporary) working folder, as training.py and testing.py use it
    assert len([d for d in os.listdir(root) if not d.startswith('.')]) == 3  # Train, Validation, Test
