"""Shared test fixtures. Shared data (golden outputs, released checkpoints) is read from ../shared
(or $SHARED_DIR); where it (or espeak-ng) is missing, tests that need it skip, except under CI (the variable CI
set to a true value: true, 1 or yes, in any case), where it is a failure. A missing GPU is a skip everywhere."""
import os
import sys
import tempfile

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the per-user model folder (CHUNKSER_HOME) of the machine running the tests is never searched: an empty one
os.environ['CHUNKSER_HOME'] = os.path.join(tempfile.mkdtemp(prefix='chunkser_home_'), 'none')


def pytest_configure(config):
    config.addinivalue_line('markers', 'numeric: compares numbers that PyTorch computes to a stated tolerance; on a CPU '
                            'with AVX-512, make test runs these once more with ATen, oneDNN and MKL limited to AVX2 '
                            '(the code paths an AVX2-only CPU runs)')


def in_ci():
    """True under CI: the variable CI holds a true value (true, 1 or yes, in any case), as CI runners set it."""
    return os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes')


def missing(what, module_level=False):
    """A test's requirement (shared data, espeak-ng, transformers) is not here: the test skips, or under CI fails.
    module_level: called while a test module is imported (skips the whole module; under CI, a collection error)."""
    if in_ci():
        pytest.fail(f'{what} (required under CI)')
    pytest.skip(what, allow_module_level=module_level)


def need_transformers(module_level=False):
    """The transformers module (the self-supervised front ends' tests need it). Missing or broken (any error while
    importing it or its AutoModel), the test skips, or under CI fails, as pytest.importorskip would not."""
    try:
        import transformers
        transformers.AutoModel  # a lazy attribute: imports the model classes, where a broken install fails
    except Exception as e:
        first = (str(e).splitlines() or [''])[0]
        missing(f'transformers cannot be imported ({type(e).__name__}: {first})', module_level)
    return transformers


def _shared_dir():
    return os.environ.get('SHARED_DIR') or os.path.join(os.path.dirname(ROOT), 'shared')


@pytest.fixture(scope='session')
def shared():
    """Path of the shared test data folder."""
    d = _shared_dir()
    if not os.path.isdir(os.path.join(d, 'golden')) or not os.path.isdir(os.path.join(d, 'upstream-v1.6')):
        missing(f'shared test data not found at {d} (set SHARED_DIR)')
    return d


@pytest.fixture(scope='session')
def upstream(shared):
    """(model_dir, norm_dir) of the released v1.6 checkpoints."""
    return os.path.join(shared, 'upstream-v1.6', 'trained_model_v1.6'), os.path.join(shared, 'upstream-v1.6', 'NormTerm')


@pytest.fixture(scope='session')
def golden_npz(shared):
    """name -> the arrays of shared/golden/<name>.npz (each original code's outputs; its README lists the keys)."""
    return lambda name: dict(np.load(os.path.join(shared, 'golden', f'{name}.npz')))


@pytest.fixture(scope='session')
def golden(golden_npz):
    """The PyTorch reference's outputs on the 11 synthetic utterances."""
    return golden_npz('reference_outputs')


@pytest.fixture(scope='session')
def golden_corpus(golden, tmp_path_factory):
    """The 11 golden utterances as a corpus in the MSP-Podcast layout (all Test): (feat_dir, label_csv)."""
    import pandas as pd
    import scipy.io
    d = tmp_path_factory.mktemp('golden_corpus')
    os.makedirs(d / 'feat_mat')
    rows = []
    for i in range(len(golden['lengths'])):
        scipy.io.savemat(d / 'feat_mat' / f'utt_{i:02d}.mat', {'Audio_data': golden[f'lld_{i}']})
        rows.append({'FileName': f'utt_{i:02d}.wav', 'EmoAct': 1 + i * 0.5, 'EmoVal': 7 - i * 0.5, 'EmoDom': 4 + (i % 3),
                     'Split_Set': 'Test'})
    pd.DataFrame(rows).to_csv(d / 'labels.csv', index=False)
    return str(d / 'feat_mat'), str(d / 'labels.csv')


@pytest.fixture
def one_thread():
    """One torch thread for the test: small products and batch-1 calls are fastest on one, and on a busy 2-core
    machine OpenMP teams wait on a descheduled thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='session')
def small(tmp_path_factory):
    """A 40-utterance synthetic corpus (50-250 frames) with its NormTerm: (feat_dir, label_csv, norm_dir)."""
    from chunkser.commands import norm_para
    from chunkser.synthetic import write_corpus
    d = str(tmp_path_factory.mktemp('small'))
    feat_dir, label_csv = write_corpus(d, size=40, seed=2, min_frames=50, max_frames=250)
    norm_dir = os.path.join(d, 'NormTerm')
    assert norm_para.main(['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir]) == 0
    return feat_dir, label_csv, norm_dir


@pytest.fixture(scope='session')
def quality_corpus(tmp_path_factory):
    """The quality runs' corpus (tests/test_objectives.py): 240 utterances of 62-160 frames in which EmoAct, EmoVal
    and EmoDom each live in their own columns of one ~1 s segment, EmoClass their (act, val) quadrant (A S H N);
    168 Train, 36 Validation, 36 Test. (feat_dir, label_csv, norm_dir, store_dir): the store folder is shared, so
    each split's store is built once."""
    from chunkser.commands import norm_para
    from chunkser.synthetic import write_corpus
    d = str(tmp_path_factory.mktemp('quality'))
    feat_dir, label_csv = write_corpus(d, size=240, seed=0, min_frames=62, max_frames=160, all_targets=True)
    norm_dir = os.path.join(d, 'NormTerm')
    assert norm_para.main(['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir]) == 0
    return feat_dir, label_csv, norm_dir, os.path.join(d, 'store')


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder, so default paths (./Models, ./NormTerm) never touch the repo."""
    monkeypatch.chdir(tmp_path)

