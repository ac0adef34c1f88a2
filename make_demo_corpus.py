"""Build a small demo corpus of synthesized speech in the MSP-Podcast layout.

The command's code is chunkser/commands/make_demo_corpus.py; `chunkser make_demo_corpus ARGS` runs the same.
"""
from chunkser.commands import make_demo_corpus as command
from chunkser.utils import run_cli


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
