"""Export checkpoints as ONNX models, scored by predict.py and testing.py with onnxruntime, without torch.

The command's code is chunkser/commands/export.py; `chunkser export ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('export')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
