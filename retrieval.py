"""Chunk-level emotion retrieval (Lin & Busso, TASLP 2023): rank the chunks inside each sentence with an emotion ranker.

The command's code is chunkser/commands/retrieval.py; `chunkser retrieval ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('retrieval')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
