"""training.py with every dropout off (the LSTM's between layers, the heads'), for tests/test_reliability.py:
run under torchrun, its validation losses are compared with those of one process. Same arguments as training.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chunkser.commands import training  # noqa: E402
from chunkser.train import loop as train_loop  # noqa: E402
from ddp_grad_check import no_dropout  # noqa: E402
from chunkser.distrib import end_distributed  # noqa: E402
from chunkser.utils import run_cli  # noqa: E402


def build_model_without_dropout(spec, build=train_loop.build_model):
    return no_dropout(build(spec))


if __name__ == '__main__':
    train_loop.build_model = build_model_without_dropout
    try:
        run_cli(training.main)
    finally:
        end_distributed()
