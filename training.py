"""Train a chunk-level SER model (the reference's procedure, for every encoder, head and objective).

The command's code is chunkser/commands/training.py; `chunkser training ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('training')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
