"""Install the released v1.6 models and their z-norm terms, each file checked by sha256.

The command's code is chunkser/commands/pretrained.py; `chunkser pretrained ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('pretrained')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
