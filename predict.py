"""Predict arousal (Act), valence (Val), dominance (Dom) on the 1..7 scale, or the emotion class, for audio or features.

The command's code is chunkser/commands/predict.py; `chunkser predict ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('predict')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
