"""A training run cut by SIGTERM at a given iteration and resumed with --resume, against the same run uninterrupted:
the check the ranker and seq2seq tests share (the sequence-to-one runs have their own in test_training.py)."""
import glob
import signal

import pandas as pd
import torch

import training


def assert_resume_equals_uninterrupted(argv, tmp_path, monkeypatch, capsys, at, resumed_line):
    """argv(out_dir, *extra) -> training.py's arguments. The cut run stops at iteration `at` (its StopSignals report
    SIGTERM there) and --resume finishes it: its history and best model equal the uninterrupted run's to the bit."""
    assert training.main(argv(tmp_path / 'full')) == 0
    calls = []

    def agreed(self, d):
        calls.append(1)
        return signal.SIGTERM if len(calls) == at else 0
    with monkeypatch.context() as m:
        m.setattr(training.StopSignals, 'agreed', agreed)
        assert training.main(argv(tmp_path / 'cut')) == 128 + signal.SIGTERM
    assert training.main(argv(tmp_path / 'cut', '--resume')) == 0
    assert resumed_line in capsys.readouterr().out
    full, cut = (pd.read_csv(glob.glob(str(p / '*.history.csv'))[0]).drop(columns='elapsed_s')
                 for p in (tmp_path / 'full', tmp_path / 'cut'))
    pd.testing.assert_frame_equal(cut, full, check_exact=True)
    a, b = (torch.load(glob.glob(str(p / '*.pth.tar'))[0], weights_only=True) for p in (tmp_path / 'full', tmp_path / 'cut'))
    assert all(torch.equal(a[k], b[k]) for k in a)
