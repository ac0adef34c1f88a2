"""Build a small demo corpus of synthesized speech in the MSP-Podcast layout.

The command's code is chunkser/commands/make_demo_corpus.py; `chunkser make_demo_corpus ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('make_demo_corpus')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
