"""Resume after interruption, safe loading, clear errors on bad input, torchrun training."""
import glob
import os
import re
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

from chunkser import checkpoint as CK
from chunkser.commands import testing
from chunkser.commands import training
from chunkser.train import loop as train_loop
from chunkser.corpus import iter_batches
from chunkser.model import ModelSpec
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))


def run_args(small, out, iters=12, extra=()):
    return ['-iter', str(iters), '-batch', '8', '-atten', 'RnnAttenVec', '--val-every', '4', '--seed', '3',
            '--feat-dir', small[0], '--label-csv', small[1], '--norm-dir', small[2], '--out-dir', str(out), *extra]


# ---- resumable training -------------------------------------------------------------

# The resume tests: 28 Train utterances in batches of 10 make epochs of 3 batches (10, 10, 8); validating every
# 2 iterations saves the state at iteration 2 (batch 2 of the first epoch) and 4 (batch 1 of the second), both
# mid-epoch, and at 6 (the end). Small chunks keep an iteration short.
R_ITERS, R_BATCH = 6, 10
R_BASE = CK.checkpoint_name(ModelSpec(head='RnnAttenVec', emo='Act'), R_BATCH, iterations=R_ITERS)[:-len('.pth.tar')]
HISTORY_COLUMNS = ['iter', 'train_loss', 'val_loss', 'best_val_loss', 'saved']  # all but elapsed_s


def resume_args(small, out, extra=()):
    return ['-iter', str(R_ITERS), '-batch', str(R_BATCH), '-atten', 'RnnAttenVec', '--val-every', '2', '--seed', '3',
            '--chunk-frames', '20', '--chunks', '4', '--scale', '1', '--feat-dir', small[0], '--label-csv', small[1],
            '--norm-dir', small[2], '--out-dir', str(out), *extra]


def results(out):
    """(best checkpoint's state_dict, history without the timings) of a resume-test run in `out`."""
    best = torch.load(os.path.join(out, R_BASE + '.pth.tar'), weights_only=True)
    return best, pd.read_csv(os.path.join(out, R_BASE + '.history.csv'))[HISTORY_COLUMNS]


def assert_same_results(out, uninterrupted):
    best, hist = results(out)
    assert_same_state(best, uninterrupted[0])
    assert list(hist.iter) == [2, 4, 6]
    np.testing.assert_allclose(hist.to_numpy(float), uninterrupted[1].to_numpy(float), atol=1e-6, rtol=0)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


@pytest.fixture(scope='module')
def uninterrupted(small, tmp_path_factory):
    out = tmp_path_factory.mktemp('full')
    assert training.main(resume_args(small, out)) == 0
    return (*results(out), out)


def start(small, out):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'training.py'), *resume_args(small, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=300):
    """Poll until `path` exists; the process must still be running (not a speed check: a hang guard)."""
    for _ in range(int(timeout / 0.05)):
        if os.path.exists(path):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f'{path} did not appear')


def resumed_line(capsys, argv):
    """Resume in-process; the line that says where the run resumed."""
    capsys.readouterr()
    assert training.main(argv) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith('training '))


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(small, uninterrupted, tmp_path, capsys):
    out = tmp_path / 'M'
    proc = start(small, out)
    wait_for(out / (R_BASE + '.resume.pt'), proc)  # written at iteration 2, atomically
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    state = torch.load(out / (R_BASE + '.resume.pt'), weights_only=True)
    assert not state['finished'] and state['iter'] in (2, 4)
    epoch = len(iter_batches(np.arange(28), R_BATCH))
    assert epoch == 3 and 0 < state['pos'] < epoch  # mid-epoch: 2 of 3 or 1 of 3

    line = resumed_line(capsys, resume_args(small, out, extra=['--resume']))
    n, p = map(int, re.search(r'\(resumed at iteration (\d+), batch (\d+) of its epoch\)', line).groups())
    assert (n, p) == (state['iter'], state['pos'])
    assert_same_results(out, uninterrupted)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'Ctrl-C'])
def test_sigterm_or_ctrl_c_saves_and_exits_then_resume_equals_uninterrupted(small, uninterrupted, tmp_path,
                                                                            capsys, sig):
    out = tmp_path / 'M'
    proc = start(small, out)
    wait_for(out / (R_BASE + '.resume.pt'), proc)  # inside the training loop, 4 iterations to go
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, stderr  # 143 for SIGTERM, 130 for Ctrl-C
    assert 'Traceback' not in stderr
    state = torch.load(out / (R_BASE + '.resume.pt'), weights_only=True)
    assert not state['finished'] and 2 <= state['iter'] < R_ITERS
    assert f'interrupted at iteration {state["iter"]}: state saved to ' in stdout

    line = resumed_line(capsys, resume_args(small, out, extra=['--resume']))
    assert f'(resumed at iteration {state["iter"]}, batch {state["pos"]} of its epoch)' in line
    assert_same_results(out, uninterrupted)


def test_finished_run_is_not_resumed(small, tmp_path, capsys):
    out = tmp_path / 'M'
    assert training.main(run_args(small, out, iters=4)) == 0
    mtime = os.path.getmtime(out / CK.checkpoint_name(ModelSpec(head='RnnAttenVec', emo='Act'), 8, iterations=4))
    capsys.readouterr()
    assert training.main(run_args(small, out, iters=4, extra=['--resume'])) == 0
    assert 'finished at iteration 4; nothing to resume' in capsys.readouterr().out
    assert os.path.getmtime(out / CK.checkpoint_name(ModelSpec(head='RnnAttenVec', emo='Act'), 8, iterations=4)) == mtime


def other_norm_terms(norm_dir, dest):
    """A copy of a NormTerm folder with other feature means."""
    shutil.copytree(norm_dir, dest)
    path = os.path.join(dest, 'feat_norm_means.mat')
    scipy.io.savemat(path, {'normal_para': scipy.io.loadmat(path)['normal_para'] + 0.5})
    return str(dest)


def test_resume_with_other_settings_is_refused(small, uninterrupted, tmp_path):
    out = uninterrupted[2]  # its resume state says finished; the settings are checked first
    before = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    corpus = tmp_path / 'copy'
    shutil.copytree(os.path.dirname(small[0]), corpus)  # the same utterances in another folder
    other_corpus = {'--feat-dir': str(corpus / 'feat_mat'), '--label-csv': str(corpus / 'labels_concensus.csv')}
    cases = [({'--lr': '1e-3'}, "saved with lr=0.0001, this run has 0.001"),
             ({'--seed': '4'}, 'saved with --seed 3, this run has --seed 4'),
             ({'--feat-dir': other_corpus['--feat-dir']}, f"saved with feat_dir='{small[0]}', this run has "
                                                         f"'{other_corpus['--feat-dir']}'"),
             ({'--label-csv': other_corpus['--label-csv']}, f"saved with label_csv='{small[1]}', this run has "
                                                           f"'{other_corpus['--label-csv']}'"),
             ({'--norm-dir': other_norm_terms(small[2], tmp_path / 'NormTerm')}, 'saved with norm_fingerprint='),
             # the chunking and the validation schedule keep the checkpoint's name, so only the keys catch them
             ({'--chunk-frames': '21'}, 'saved with chunk_frames=20, this run has 21'),
             ({'--chunks': '5'}, 'saved with chunks=4, this run has 5'),
             ({'--scale': '2'}, 'saved with scale=1, this run has 2'),
             ({'--val-every': '3'}, 'saved with val_every=2, this run has 3')]
    for change, msg in cases:
        argv = resume_args(small, out, extra=['--resume'])
        for flag, value in change.items():
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        with pytest.raises(UserError) as e:
            training.main(argv)
        assert '\n' not in str(e.value) and msg in str(e.value) and str(e.value).startswith(str(out)), str(e.value)
    with pytest.raises(UserError, match='no training state to resume'):
        training.main(resume_args(small, tmp_path / 'elsewhere', extra=['--resume']))
    assert before == {f: os.path.getmtime(out / f) for f in os.listdir(out)}  # nothing written


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
    rnn = os.path.join(upstream[0], CK.checkpoint_name(ModelSpec(head='RnnAttenVec', emo='Act'), 128, iterations=5000))
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
    assert re.search(msg, lines[0]), lines[0]
    assert 'Traceback' not in r.stderr and not os.path.exists(tmp_path / 'M' / CK.checkpoint_name(ModelSpec(head='RnnAttenVec', emo='Act'), 8, iterations=12))


def test_debug_shows_the_traceback(broken, tmp_path):
    damage_truncate(broken)
    r = cli('training.py', run_args(broken, tmp_path / 'M', extra=['--debug']))
    assert r.returncode != 0 and 'Traceback' in r.stderr


@pytest.mark.parametrize('argv,msg,choices', [
    (['-emo', 'Joy'], "argument -emo/--emo_attr: invalid choice: 'Joy'", ['Act', 'Dom', 'Val', 'Class']),
    (['-atten', 'Nope'], "argument -atten/--atten_type: invalid choice: 'Nope'",
     ['NonAtten', 'GatedVec', 'RnnAttenVec', 'SelfAttenVec', 'MultiHeadAttenVec', 'AttnStatsPool'])])
def test_unknown_emo_or_atten(small, argv, msg, choices):
    r = cli('testing.py', argv + ['--feat-dir', small[0], '--label-csv', small[1]])
    assert r.returncode == 2, r.stderr
    # one line, the choices listed in full (argparse quotes them or not, by Python version)
    m = re.fullmatch(rf'error: testing\.py: {re.escape(msg)} \(choose from (.+)\)', r.stderr.strip())
    assert m is not None, r.stderr
    assert re.findall(r'\w+', m[1]) == choices, m[1]


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

TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
TORCHRUN_ENV = dict(os.environ, OMP_NUM_THREADS='1')


def torchrun(*argv):
    return subprocess.run([*TORCHRUN, *argv], capture_output=True, text=True, timeout=300, env=TORCHRUN_ENV)


@pytest.fixture(scope='module')
def torchrun_uninterrupted(small, tmp_path_factory):
    """The resume tests' run on 2 processes, uninterrupted: (best state_dict, history, its stdout, its folder)."""
    out = tmp_path_factory.mktemp('full2')
    r = torchrun(os.path.join(ROOT, 'training.py'), *resume_args(small, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return (*results(out), r.stdout, out)


@pytest.mark.numeric
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
            # the README's 1e-5, absolute (gradients up to 0.2; measured: at most 1.3e-6, the same with ATen, oneDNN
            # and MKL limited to AVX2)
            torch.testing.assert_close(two[atten][0][k], one_grads[k], atol=1e-5, rtol=0, msg=f'{atten} {k}')


def test_torchrun_short_run_writes_one_checkpoint_and_resumes(small, torchrun_uninterrupted):
    *_, stdout, out = torchrun_uninterrupted
    assert sorted(os.listdir(out)) == sorted(R_BASE + s for s in ('.pth.tar', '.json', '.history.csv', '.png',
                                                                  '.resume.pt'))
    assert stdout.count(f'iter {R_ITERS} |') == 1 and 'x 2 processes' in stdout  # rank 0 alone writes and logs
    hist = pd.read_csv(out / (R_BASE + '.history.csv'))
    assert list(hist.iter) == [2, 4, 6]
    r = torchrun(os.path.join(ROOT, 'training.py'), *resume_args(small, out, extra=['--resume']))
    assert r.returncode == 0 and 'nothing to resume' in r.stdout
    with pytest.raises(UserError, match='saved with world_size=2, this run has 1'):
        training.main(resume_args(small, out, extra=['--resume']))


def test_torchrun_sigterm_then_resume_equals_uninterrupted(small, torchrun_uninterrupted, tmp_path):
    """SIGTERM to torchrun (which passes it to both workers) after the first state file: both ranks stop at the same
    iteration and rank 0 saves; resumed under torchrun, the run ends as the uninterrupted 2-process one."""
    out = tmp_path / 'M'
    proc = subprocess.Popen([*TORCHRUN, os.path.join(ROOT, 'training.py'), *resume_args(small, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)
    wait_for(out / (R_BASE + '.resume.pt'), proc)  # written at iteration 2, 4 iterations to go
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0, stdout  # torchrun reports its workers' stop
    state = torch.load(out / (R_BASE + '.resume.pt'), weights_only=True)
    assert not state['finished'] and 2 <= state['iter'] < R_ITERS, (state['iter'], stdout, stderr[-3000:])
    assert stdout.count(f'interrupted at iteration {state["iter"]}: state saved to ') == 1, stdout

    r = torchrun(os.path.join(ROOT, 'training.py'), *resume_args(small, out, extra=['--resume']))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (f'x 2 processes, seed 3 -> {out / R_BASE}.pth.tar (resumed at iteration {state["iter"]}, batch '
            f'{state["pos"]} of its epoch)') in r.stdout, r.stdout
    assert_same_results(out, torchrun_uninterrupted[:2])


@pytest.mark.numeric
def test_two_processes_validate_as_one(small, tmp_path, monkeypatch):
    """A short torchrun run on 2 processes, dropout off, has the validation (and training) losses of 1 process."""
    from train_no_dropout import build_model_without_dropout

    def argv(out):
        return ['-iter', '4', '-batch', '10', '-atten', 'GatedVec', '--val-every', '2', '--seed', '5',
                '--chunk-frames', '20', '--chunks', '4', '--scale', '1', '--feat-dir', small[0],
                '--label-csv', small[1], '--norm-dir', small[2], '--out-dir', str(out)]
    r = torchrun(os.path.join(ROOT, 'tests', 'train_no_dropout.py'), *argv(tmp_path / 'two'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'x 2 processes' in r.stdout
    monkeypatch.setattr(train_loop, 'build_model', build_model_without_dropout)
    assert training.main(argv(tmp_path / 'one')) == 0
    one, two = (pd.read_csv(glob.glob(str(tmp_path / d / '*.history.csv'))[0]) for d in ('one', 'two'))
    assert list(one.iter) == list(two.iter) == [2, 4]
    np.testing.assert_allclose(two.val_loss, one.val_loss, atol=1e-5, rtol=0)  # seen: 6e-8, 2e-6
    # The training losses are of training-mode batch norm, whose batch variances are small after a few steps:
    # float rounding (threads, the reduction order) comes out amplified (seen: 2e-5, 8e-5); the losses of
    # different batches differ by 1e-2 and more, so a batch sharded wrongly would still show.
    np.testing.assert_allclose(two.train_loss, one.train_loss, atol=5e-4, rtol=0)
