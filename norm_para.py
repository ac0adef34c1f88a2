"""Z-normalisation terms from the Train split: eight NormTerm .mat files in the reference's format.

The command's code is chunkser/commands/norm_para.py; `chunkser norm_para ARGS` runs the same.
"""
from chunkser.commands import norm_para as command
from chunkser.utils import run_cli


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
