"""Train a chunk-level SER model (the reference's procedure, for every encoder, head and objective).

The command's code is chunkser/commands/training.py; `chunkser training ARGS` runs the same.
"""
from chunkser.commands import training as command
from chunkser.utils import run_cli


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
