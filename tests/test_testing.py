import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from chunkser import checkpoint as CK
from chunkser.commands import testing
from chunkser.files import write_json
from chunkser.model import ModelSpec
from chunkser.normterm import NormTerms
from chunkser.synthetic import write_corpus
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('corpus')
    return write_corpus(str(d), size=30, seed=5, min_frames=40, max_frames=300)  # includes T < 62: padded


def base_args(corpus, upstream, *extra):
    return ['-emo', 'Act', '-atten', 'SelfAttenVec', '--feat-dir', corpus[0], '--label-csv', corpus[1],
            '--model-dir', upstream[0], '--norm-dir', upstream[1], *extra]


@pytest.mark.numeric
def test_scores_short_and_long_utterances_and_writes_csv(corpus, upstream, tmp_path, capsys):
    out = tmp_path / 'p.csv'
    assert testing.main(base_args(corpus, upstream, '--out', str(out))) == 0
    df = pd.read_csv(out)
    labels = pd.read_csv(corpus[1])
    assert list(df.columns) == ['file', 'true', 'pred']
    assert list(df.file) == list(labels[labels.Split_Set == 'Test'].FileName)
    assert np.isfinite(df.pred).all()
    assert 'Loaded checkpoint: ' + upstream[0] in capsys.readouterr().out


def test_checkpoint_search_order(corpus, upstream, tmp_path, capsys):
    """No --model-dir: ./Models first, then ./trained_model_v1.6 (cwd is a temporary folder)."""
    argv = base_args(corpus, upstream)
    i = argv.index('--model-dir')
    argv = argv[:i] + argv[i + 2:]
    name = CK.checkpoint_name(ModelSpec(head='SelfAttenVec', emo='Act'), 128, iterations=5000)
    with pytest.raises(UserError, match='make pretrained'):
        testing.main(argv)
    os.makedirs('trained_model_v1.6')
    shutil.copy(os.path.join(upstream[0], name), 'trained_model_v1.6')
    assert testing.main(argv) == 0
    assert f'Loaded checkpoint: ./trained_model_v1.6/{name}' in capsys.readouterr().out
    os.makedirs('Models')
    shutil.copy(os.path.join(upstream[0], name), 'Models')
    assert testing.main(argv) == 0
    assert f'Loaded checkpoint: ./Models/{name}' in capsys.readouterr().out


def test_refuses_checkpoint_of_other_norm_terms(corpus, upstream, tmp_path):
    mdir = tmp_path / 'm'
    mdir.mkdir()
    name = CK.checkpoint_name(ModelSpec(head='SelfAttenVec', emo='Act'), 128, iterations=5000)
    shutil.copy(os.path.join(upstream[0], name), mdir)
    cfg = dict(ModelSpec(head='SelfAttenVec').to_json(), norm_dir='/elsewhere', norm_fingerprint='0123456789abcdef')
    write_json(CK.description_path(str(mdir / name)), cfg)
    argv = base_args(corpus, (str(mdir), upstream[1]))
    with pytest.raises(UserError, match='holds other terms'):
        testing.main(argv)
    assert testing.main(argv + ['--force']) == 0
    cfg['norm_fingerprint'] = NormTerms.load(upstream[1]).fingerprint()
    write_json(CK.description_path(str(mdir / name)), cfg)
    assert testing.main(argv) == 0


def test_split_names(corpus, upstream, tmp_path, capsys):
    df = pd.read_csv(corpus[1])
    df['Split_Set'] = df.Split_Set.replace({'Validation': 'Development', 'Test': 'Test1'})
    df.loc[df.index[:3], 'Split_Set'] = 'Test2'
    csv = tmp_path / 'l.csv'
    df.to_csv(csv, index=False)
    c = (corpus[0], str(csv))
    out = tmp_path / 'o.csv'
    assert testing.main(base_args(c, upstream, '--out', str(out))) == 0
    assert len(pd.read_csv(out)) == (df.Split_Set == 'Test1').sum()
    assert testing.main(base_args(c, upstream, '--split', 'Test2', '--out', str(out))) == 0
    assert len(pd.read_csv(out)) == 3
    with pytest.raises(UserError, match="no rows with Split_Set 'Test9'"):
        testing.main(base_args(c, upstream, '--split', 'Test9'))


def test_missing_labels_are_named(corpus, upstream, tmp_path):
    df = pd.read_csv(corpus[1])
    test_rows = df.index[df.Split_Set == 'Test']
    df.loc[test_rows[:2], 'EmoAct'] = np.nan
    csv = tmp_path / 'l.csv'
    df.to_csv(csv, index=False)
    with pytest.raises(UserError, match=f'2 rows .* no EmoAct label .first: {df.FileName[test_rows[0]]}'):
        testing.main(base_args((corpus[0], str(csv)), upstream))


def test_missing_feature_file_exit_2(corpus, upstream, tmp_path):
    df = pd.read_csv(corpus[1])
    df.loc[df.index[-1], 'FileName'] = 'nowhere.wav'
    csv = tmp_path / 'l.csv'
    df.to_csv(csv, index=False)
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'testing.py'), *base_args((corpus[0], str(csv)), upstream)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f'error: {os.path.join(corpus[0], "nowhere.mat")}: feature file of a Test row not found (1 missing)'


def test_confusion_csv_bytes_and_atomic_write(tmp_path, monkeypatch):
    """--out of a categorical model: <stem>.confusion.csv is the csv module's default dialect (CRLF lines), the
    corner cell 'true\\pred', counts as integers; a write that fails leaves no file and says which one."""
    monkeypatch.setattr('chunkser.plots.plot_confusion', lambda path, classes, cm: open(path, 'wb').close())
    testing.write_confusion(str(tmp_path / 'pred'), ('A', 'N'), np.array([[3, 1], [0, 2]]))
    assert (tmp_path / 'pred.confusion.csv').read_bytes() == b'true\\pred,A,N\r\nA,3,1\r\nN,0,2\r\n'
    assert (tmp_path / 'pred.confusion.png').exists()

    def fail(path, data):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr('chunkser.files.atomic_write_bytes', fail)
    with pytest.raises(UserError, match=r'other\.csv: cannot write the predictions \(No space left on device\)'):
        testing.write_predictions(str(tmp_path / 'other.csv'), ['file', 'true', 'pred'], [['a.wav', '1', '2']])
    assert not (tmp_path / 'other.csv').exists()
