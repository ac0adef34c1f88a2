"""Score a split with a trained checkpoint and print the reference's seven result lines.

The command's code is chunkser/commands/testing.py; `chunkser testing ARGS` runs the same.
"""
from chunkser.commands import testing as command
from chunkser.utils import run_cli


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
