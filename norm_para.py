"""Z-normalisation terms from the Train split: eight NormTerm .mat files in the reference's format.

The command's code is chunkser/commands/norm_para.py; `chunkser norm_para ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('norm_para')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
