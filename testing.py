"""Score a split with a trained checkpoint and print the reference's seven result lines.

The command's code is chunkser/commands/testing.py; `chunkser testing ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('testing')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
