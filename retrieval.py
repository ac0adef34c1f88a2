"""Chunk-level emotion retrieval (Lin & Busso, TASLP 2023): rank the chunks inside each sentence with an emotion ranker.

The command's code is chunkser/commands/retrieval.py; `chunkser retrieval ARGS` runs the same.
"""
from chunkser.commands import retrieval as command
from chunkser.utils import run_cli


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
