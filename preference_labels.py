"""Preference labels for the emotion rankers (the retrieval follow-up's generate_preference_labels.py).

The command's code is chunkser/commands/preference_labels.py; `chunkser preference_labels ARGS` runs the same.
"""
from chunkser.commands import preference_labels as command
from chunkser.utils import run_cli


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
