"""Feature extraction: a folder of audio files -> one feature `.mat` per file, as the corpus ships them.

The command's code is chunkser/commands/feature_extraction.py; `chunkser feature_extraction ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('feature_extraction')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
