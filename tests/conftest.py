"""Shared test fixtures. Shared data (golden outputs, released checkpoints) is read from ../shared
(or $SHARED_DIR); where it is missing, tests that need it skip, except under CI=true, where it is a failure."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line('markers', 'numeric: compares numbers to a stated tolerance; on a CPU with AVX-512, make test '
                            'runs these once more under ONEDNN_MAX_CPU_ISA=AVX2, as an AVX2-only machine computes them')


def _shared_dir():
    return os.environ.get('SHARED_DIR') or os.path.join(os.path.dirname(ROOT), 'shared')


@pytest.fixture(scope='session')
def shared():
    """Path of the shared test data folder."""
    d = _shared_dir()
    if not os.path.isdir(os.path.join(d, 'golden')) or not os.path.isdir(os.path.join(d, 'upstream-v1.6')):
        if os.environ.get('CI') == 'true':
            pytest.fail(f'shared test data missing at {d} (required under CI)')
        pytest.skip(f'shared test data not found at {d} (set SHARED_DIR)')
    return d


@pytest.fixture(scope='session')
def upstream(shared):
    """(model_dir, norm_dir) of the released v1.6 checkpoints."""
    return os.path.join(shared, 'upstream-v1.6', 'trained_model_v1.6'), os.path.join(shared, 'upstream-v1.6', 'NormTerm')


@pytest.fixture(scope='session')
def small(tmp_path_factory):
    """A 40-utterance synthetic corpus (50-250 frames) with its NormTerm: (feat_dir, label_csv, norm_dir)."""
    import norm_para
    from synthetic import write_corpus
    d = str(tmp_path_factory.mktemp('small'))
    feat_dir, label_csv = write_corpus(d, size=40, seed=2, min_frames=50, max_frames=250)
    norm_dir = os.path.join(d, 'NormTerm')
    assert norm_para.main(['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir]) == 0
    return feat_dir, label_csv, norm_dir


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder, so default paths (./Models, ./NormTerm) never touch the repo."""
    monkeypatch.chdir(tmp_path)
