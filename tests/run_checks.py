"""Checks the ranker and seq2seq training tests share (the sequence-to-one runs have their own in test_training.py):
a run cut by SIGTERM and resumed against the same run uninterrupted; two torchrun processes against one."""
import glob
import os
import signal
import subprocess
import sys

import pandas as pd
import torch

from chunkser.commands import training
from chunkser.train import loop as train_loop, state as train_state


def assert_resume_equals_uninterrupted(argv, tmp_path, monkeypatch, capsys, at, resumed_line):
    """argv(out_dir, *extra) -> training.py's arguments. The cut run stops at iteration `at` (its StopSignals report
    SIGTERM there) and --resume finishes it: its history and best model equal the uninterrupted run's to the bit."""
    assert training.main(argv(tmp_path / 'full')) == 0
    calls = []

    def agreed(self, d):
        calls.append(1)
        return signal.SIGTERM if len(calls) == at else 0
    with monkeypatch.context() as m:
        m.setattr(train_state.StopSignals, 'agreed', agreed)
        assert training.main(argv(tmp_path / 'cut')) == 128 + signal.SIGTERM
    assert training.main(argv(tmp_path / 'cut', '--resume')) == 0
    assert resumed_line in capsys.readouterr().out
    full, cut = (pd.read_csv(glob.glob(str(p / '*.history.csv'))[0]).drop(columns='elapsed_s')
                 for p in (tmp_path / 'full', tmp_path / 'cut'))
    pd.testing.assert_frame_equal(cut, full, check_exact=True)
    a, b = (torch.load(glob.glob(str(p / '*.pth.tar'))[0], weights_only=True) for p in (tmp_path / 'full', tmp_path / 'cut'))
    assert all(torch.equal(a[k], b[k]) for k in a)


def one_and_two_processes(argv, tmp_path, monkeypatch, base):
    """The run of argv(out_dir) in this process and under torchrun --nproc_per_node=2, every dropout off (as
    tests/train_no_dropout.py runs it) -> the two history tables (pandas) of checkpoint `base`."""
    from train_no_dropout import build_model_without_dropout
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setattr(train_loop, 'build_model', build_model_without_dropout)
    monkeypatch.setattr(train_loop, 'plot_losses', lambda *a: None)
    assert training.main(argv(tmp_path / 'one')) == 0  # first: it builds the store the second run then reads
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(root, 'tests', 'train_no_dropout.py'), *argv(tmp_path / 'two')],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'x 2 processes' in r.stdout
    return tuple(pd.read_csv(tmp_path / d / f'{base}.history.csv') for d in ('one', 'two'))
