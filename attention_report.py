"""The method's claims measured on the demo corpus (docs/claims.md).

The command's code is chunkser/commands/attention_report.py; `chunkser attention_report ARGS` runs the same.
"""
from chunkser.entry import load_command, run_cli

command = load_command('attention_report')  # a missing package: one line saying how to install it


def main(argv=None):
    return command.main(argv)


if __name__ == '__main__':
    run_cli(main)
