"""Resume after interruption, safe loading, clear errors on bad input, torchrun training."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

import model as M
from model import ModelSpec
import checkpoint as CK
import testing
import training
from utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))


def run_args(small, out, iters=12, extra=()):
    return ['-iter', str(iters), '-batch', '8', '-atten', 'RnnAttenVec', '--val-every', '4', '--seed', '3',
            '--feat-dir', small[0], '--label-csv', small[1], '--norm-dir', small[2], '--out-dir', str(out), *extra]


def best_of(out, iters=12):
    return torch.load(os.path.join(out, CK.checkpoint_name(iters, 8, 'RnnAttenVec', 'Act')), weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


@pytest.fixture(scope='module')
def uninterrupted(small, tmp_path_factory):
    out = tmp_path_factory.mktemp('full')
    assert training.main(run_args(small, out)) == 0
    return best_of(out), pd.read_csv(glob.glob(str(out / '*.history.csv'))[0])


# ---- resumable training -------------------------------------------------------------

def start(small, out, extra=()):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'training.py'), *run_args(small, out, extra=extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_sigkill_then_resume_equals_uninterrupted(small, uninterrupted, tmp_path):
    out = tmp_path / 'M'
    proc = start(small, out)
    wait_for(out / 'LSTM_iter12_batch8_ChunkSeq2One_RnnAttenVec_Act.resume.pt', proc)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    assert training.main(run_args(small, out, extra=['--resume'])) == 0
    assert_same_state(best_of(out), uninterrupted[0])
    hist = pd.read_csv(glob.glob(str(out / '*.history.csv'))[0])
    np.testing.assert_allclose(hist.val_loss, uninterrupted[1].val_loss, atol=1e-6)


def test_sigterm_saves_then_resume_equals_uninterrupted(small, uninterrupted, tmp_path):
    out = tmp_path / 'M'
    proc = start(small, out)
    wait_for(out / 'LSTM_iter12_batch8_ChunkSeq2One_RnnAttenVec_Act.history.csv', proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip('the run finished before the signal arrived')
    assert proc.returncode == 128 + signal.SIGTERM
    state = torch.load(out / 'LSTM_iter12_batch8_ChunkSeq2One_RnnAttenVec_Act.resume.pt', weights_only=True)
    assert 4 <= state['iter'] < 12 and not state['finished']
    assert training.main(run_args(small, out, extra=['--resume'])) == 0
    assert_same_state(best_of(out), uninterrupted[0])


def test_finished_run_is_not_resumed(small, tmp_path, capsys):
    out = tmp_path / 'M'
    assert training.main(run_args(small, out, iters=4)) == 0
    mtime = os.path.getmtime(out / CK.checkpoint_name(4, 8, 'RnnAttenVec', 'Act'))
    capsys.readouterr()
    assert training.main(run_args(small, out, iters=4, extra=['--resume'])) == 0
    assert 'finished at iteration 4; nothing to resume' in capsys.readouterr().out
    assert os.path.getmtime(out / CK.checkpoint_name(4, 8, 'RnnAttenVec', 'Act')) == mtime


def test_resume_with_other_settings_is_refused(small, tmp_path):
    out = tmp_path / 'M'
    proc = start(small, out)
    wait_for(out / 'LSTM_iter12_batch8_ChunkSeq2One_RnnAttenVec_Act.resume.pt', proc)
    proc.kill()
    proc.wait()
    with pytest.raises(UserError, match="saved with lr=0.0001, this run has 0.001"):
        training.main(run_args(small, out, extra=['--resume', '--lr', '1e-3']))
    with pytest.raises(UserError, match='saved with --seed 3'):
        training.main(run_args(small, out, extra=['--resume', '--seed', '4']))
    with pytest.raises(UserError, match='no training state to resume'):
        training.main(run_args(small, tmp_path / 'elsewhere', extra=['--resume']))


# ---- safe loading -------------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    path = tmp_path / 'evil.pth.tar'
    torch.save({'lstm.weight_ih_l0': Payload()}, path)
    with pytest.raises(UserError, match='refused: the file needs to run code'):
        CK.load_model(str(path), ModelSpec(head='SelfAttenVec'))
    assert not os.path.exists('pwned') and not os.path.exists(tmp_path / 'pwned')


def test_wrong_head_and_width_explained(upstream, tmp_path):
    rnn = os.path.join(upstream[0], CK.checkpoint_name(5000, 128, 'RnnAttenVec', 'Act'))
    with pytest.raises(UserError, match=r'not a SelfAttenVec checkpoint \(it looks like a RnnAttenVec checkpoint\)'):
        CK.load_model(rnn, ModelSpec(head='SelfAttenVec'))
    with pytest.raises(UserError, match=r'lstm.weight_ih_l0 has shape \(520, 130\), expected \(520, 88\)'):
        CK.load_model(rnn, ModelSpec(head='RnnAttenVec', feat_dim=88))
    junk = tmp_path / 'junk.pth.tar'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='junk.pth.tar: not a readable PyTorch checkpoint'):
        CK.load_model(str(junk), ModelSpec(head='RnnAttenVec'))


# ---- bad input, clear errors --------------------------------------------------------

def cli(script, argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True)


@pytest.fixture
def broken(small, tmp_path):
    """A copy of the small corpus, to damage."""
    d = tmp_path / 'b'
    shutil.copytree(os.path.dirname(small[0]), d)
    return str(d / 'feat_mat'), str(d / 'labels_concensus.csv'), str(d / 'NormTerm')


def first_train_mat(c):
    df = pd.read_csv(c[1])
    return os.path.join(c[0], df[df.Split_Set == 'Train'].FileName.iloc[0][:-4] + '.mat')


def damage_truncate(c):
    p = first_train_mat(c)
    data = open(p, 'rb').read()
    open(p, 'wb').write(data[:len(data) // 2])
    return p, 'not a readable .mat file'


def damage_no_audio_data(c):
    p = first_train_mat(c)
    scipy.io.savemat(p, {'something': np.zeros((100, 131))})
    return p, "expected a variable 'Audio_data'"


def damage_width(c):
    p = first_train_mat(c)
    scipy.io.savemat(p, {'Audio_data': np.zeros((100, 60))})
    return p, r'shape \(100, 60\), expected \(T, 131\)'


def damage_missing_file(c):
    p = first_train_mat(c)
    os.remove(p)
    return p, 'feature file of a Train row not found'


def damage_label_column(c):
    pd.read_csv(c[1]).drop(columns=['EmoAct']).to_csv(c[1], index=False)
    return c[1], "expected a column 'EmoAct'"


def damage_split_column(c):
    pd.read_csv(c[1]).drop(columns=['Split_Set']).to_csv(c[1], index=False)
    return c[1], "expected a column 'Split_Set'"


def damage_filename_column(c):
    pd.read_csv(c[1]).rename(columns={'FileName': 'Name'}).to_csv(c[1], index=False)
    return c[1], "expected a column 'FileName'"


def damage_empty_train(c):
    df = pd.read_csv(c[1])
    df.loc[df.Split_Set == 'Train', 'Split_Set'] = 'Other'
    df.to_csv(c[1], index=False)
    return c[1], 'no Train rows in Split_Set'


def damage_missing_label(c):
    df = pd.read_csv(c[1])
    df.loc[df.index[df.Split_Set == 'Validation'][0], 'EmoAct'] = np.nan
    df.to_csv(c[1], index=False)
    return c[1], "1 rows of split 'Validation' have no EmoAct label"


@pytest.mark.parametrize('damage', [damage_truncate, damage_no_audio_data, damage_width, damage_missing_file,
                                    damage_label_column, damage_split_column, damage_filename_column,
                                    damage_empty_train, damage_missing_label])
def test_bad_corpus_one_line_exit_2_before_training(broken, damage, tmp_path):
    path, msg = damage(broken)
    r = cli('training.py', run_args(broken, tmp_path / 'M'))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {path}: '), r.stderr
    assert pytest.importorskip('re').search(msg, lines[0]), lines[0]
    assert 'Traceback' not in r.stderr and not os.path.exists(tmp_path / 'M' / CK.checkpoint_name(12, 8, 'RnnAttenVec', 'Act'))


def test_debug_shows_the_traceback(broken, tmp_path):
    damage_truncate(broken)
    r = cli('training.py', run_args(broken, tmp_path / 'M', extra=['--debug']))
    assert r.returncode != 0 and 'Traceback' in r.stderr


@pytest.mark.parametrize('argv,msg', [(['-emo', 'Joy'], "argument -emo/--emo_attr: invalid choice: 'Joy'"),
                                      (['-atten', 'Nope'], "argument -atten/--atten_type: invalid choice: 'Nope'")])
def test_unknown_emo_or_atten(small, argv, msg):
    r = cli('testing.py', argv + ['--feat-dir', small[0], '--label-csv', small[1]])
    assert r.returncode == 2 and r.stderr.strip() == f'error: testing.py: {msg} (choose from ' + r.stderr.split('(choose from ')[1].strip()


def test_unwritable_output_folder(small, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    r = cli('training.py', run_args(small, blocker / 'sub'))
    assert r.returncode == 2 and r.stderr.startswith(f'error: {blocker / "sub"}: cannot create the output folder')


def test_nan_and_short_utterances_are_scored(small, upstream, tmp_path):
    d = tmp_path / 'c'
    (d / 'f').mkdir(parents=True)
    x = np.random.default_rng(0).normal(size=(30, 131))
    x[3:5, 7] = np.nan
    x[9, 2] = np.inf
    scipy.io.savemat(d / 'f' / 'a.mat', {'Audio_data': x})
    scipy.io.savemat(d / 'f' / 'b.mat', {'Audio_data': np.random.default_rng(1).normal(size=(3, 131))})
    pd.DataFrame({'FileName': ['a.wav', 'b.wav'], 'EmoAct': [2.0, 5.0], 'Split_Set': ['Test', 'Test']}).to_csv(d / 'l.csv', index=False)
    out = tmp_path / 'p.csv'
    assert testing.main(['-atten', 'RnnAttenVec', '--feat-dir', str(d / 'f'), '--label-csv', str(d / 'l.csv'),
                         '--model-dir', upstream[0], '--norm-dir', upstream[1], '--out', str(out)]) == 0
    assert np.isfinite(pd.read_csv(out).pred).all()


# ---- torchrun ---------------------------------------------------------------------

def torchrun(*argv):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *argv],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_two_processes_same_gradients_as_one(tmp_path):
    from ddp_grad_check import step_grads
    heads = ['GatedVec', 'RnnAttenVec', 'SelfAttenVec']
    r = torchrun(os.path.join(ROOT, 'tests', 'ddp_grad_check.py'), str(tmp_path / 'g.pt'), *heads)
    assert r.returncode == 0, r.stderr[-3000:]
    two = torch.load(tmp_path / 'g.pt', weights_only=True)
    for atten in heads:
        one_grads, one_loss = step_grads(atten)
        assert two[atten][1] == pytest.approx(one_loss, abs=1e-6)
        assert one_grads.keys() == two[atten][0].keys()
        for k in one_grads:
            torch.testing.assert_close(two[atten][0][k], one_grads[k], atol=1e-5, rtol=1e-4, msg=f'{atten} {k}')


def test_torchrun_short_run_writes_one_checkpoint_and_resumes(small, tmp_path):
    out = tmp_path / 'M'
    r = torchrun(os.path.join(ROOT, 'training.py'), *run_args(small, out, iters=5))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(CK.checkpoint_name(5, 8, 'RnnAttenVec', 'Act')[:-8] + s for s in
                                             ('.pth.tar', '.json', '.history.csv', '.png', '.resume.pt'))
    assert r.stdout.count('iter 5 |') == 1 and 'x 2 processes' in r.stdout
    hist = pd.read_csv(glob.glob(str(out / '*.history.csv'))[0])
    assert list(hist.iter) == [4, 5]
    r = torchrun(os.path.join(ROOT, 'training.py'), *run_args(small, out, iters=5, extra=['--resume']))
    assert r.returncode == 0 and 'nothing to resume' in r.stdout
    with pytest.raises(UserError, match='saved with world_size=2, this run has 1'):
        training.main(run_args(small, out, iters=5, extra=['--resume']))
