"""Predict arousal (Act), valence (Val), dominance (Dom) on the 1..7 scale, or the emotion class, for audio or features.

The command's code is chunkser/commands/predict.py; `chunkser predict ARGS` runs the same.
"""
from chunkser.commands import predict as command
from chunkser.utils import run_cli


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
