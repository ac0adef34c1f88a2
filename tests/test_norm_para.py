import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.io

from chunkser.commands import norm_para
from chunkser.normterm import NORM_FILES, NormTerms
from chunkser.synthetic import write_corpus
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def corpus(tmp_path):
    feat_dir, label_csv = write_corpus(str(tmp_path / 'c'), size=20, seed=3, min_frames=80, max_frames=200)
    # a NaN frame and an Inf frame in one Train file: both must be left out of the sums
    path = os.path.join(feat_dir, 'synth_00000.mat')
    x = scipy.io.loadmat(path)['Audio_data']
    x[5, 10], x[7, 3] = np.nan, np.inf
    scipy.io.savemat(path, {'Audio_data': x})
    return feat_dir, label_csv


def args(corpus, norm_dir, *extra):
    return ['--feat-dir', corpus[0], '--label-csv', corpus[1], '--norm-dir', str(norm_dir), *extra]


def test_terms_match_numpy_over_train_frames(corpus, tmp_path):
    assert norm_para.main(args(corpus, tmp_path / 'N')) == 0
    df = pd.read_csv(corpus[1])
    train = df[df.Split_Set == 'Train']
    frames = np.concatenate([scipy.io.loadmat(os.path.join(corpus[0], f[:-4] + '.mat'))['Audio_data'][:, 1:]
                             for f in train.FileName])
    frames = frames[np.isfinite(frames).all(1)]
    for name in NORM_FILES:
        v = scipy.io.loadmat(tmp_path / 'N' / f'{name}.mat')['normal_para']
        assert v.shape == ((1, 130) if name.startswith('feat') else (1, 1))
    t = NormTerms.load(str(tmp_path / 'N'))
    np.testing.assert_allclose(t.feat_mean, frames.mean(0), rtol=1e-10)
    np.testing.assert_allclose(t.feat_std, frames.std(0), rtol=1e-9)  # ddof 0
    assert t.labels['Act'] == pytest.approx((train.EmoAct.mean(), train.EmoAct.std(ddof=0)))
    assert t.labels['Val'][0] == pytest.approx(train.EmoVal.mean())


def test_refuses_to_overwrite_other_terms(corpus, tmp_path, capsys):
    n = tmp_path / 'N'
    assert norm_para.main(args(corpus, n)) == 0
    assert norm_para.main(args(corpus, n)) == 0  # same terms: nothing to refuse
    assert 'unchanged' in capsys.readouterr().out
    m = scipy.io.loadmat(n / 'act_norm_means.mat')['normal_para']
    scipy.io.savemat(n / 'act_norm_means.mat', {'normal_para': m + 1})
    with pytest.raises(UserError, match='different z-norm terms'):
        norm_para.main(args(corpus, n))
    assert norm_para.main(args(corpus, n, '--force')) == 0
    assert scipy.io.loadmat(n / 'act_norm_means.mat')['normal_para'] == pytest.approx(m)


def test_command_line_errors_exit_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'norm_para.py'), '--norm-dir', str(tmp_path)],
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items() if not k.startswith('SER_')})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ['error: no corpus given: pass --feat-dir DIR --label-csv FILE '
                                             '(or set SER_FEAT_DIR and SER_LABEL_CSV, or try --demo)']


def test_corpus_from_environment(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv('SER_FEAT_DIR', corpus[0])
    monkeypatch.setenv('SER_LABEL_CSV', corpus[1])
    assert norm_para.main(['--norm-dir', str(tmp_path / 'E')]) == 0
    assert len(os.listdir(tmp_path / 'E')) == 8
