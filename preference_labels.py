"""Preference labels for the emotion rankers (the retrieval follow-up's generate_preference_labels.py).

The command's code is chunkser/commands/preference_labels.py; `chunkser preference_labels ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('preference_labels')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
