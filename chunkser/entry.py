"""How a command starts, from the checkout's COMMAND.py or from `chunkser COMMAND`: its module loaded by name and run,
a third-party package missing at any point (at import, or imported later by one code path) turned into one line
that says how to install it, exit 2.

This module imports nothing outside the standard library at import time, so that line can be printed by a Python
that has none of the requirements.
"""
import contextlib
import importlib
import os
import sys

# The commands: chunkser/commands/NAME.py, each with main(argv), run by `chunkser NAME` and by the checkout's NAME.py
# (docs/architecture.md's command table lists the same; tests/test_layout.py checks both). No module of the package imports
# a command.
COMMANDS = ('norm_para', 'training', 'testing', 'predict', 'feature_extraction', 'retrieval', 'pretrained',
            'make_demo_corpus', 'attention_report', 'preference_labels', 'export')

# Shared modules with a small command line of their own: `chunkser NAME` (or python -m chunkser.NAME)
MODULE_COMMANDS = {'store': 'chunkser.store', 'keras_convert': 'chunkser.keras_convert',
                   'synthetic': 'chunkser.synthetic'}

# import name -> what to install, where it is not the package of that name alone
INSTALL = {'transformers': "transformers (chunkser's [ssl] extra)", 'huggingface_hub': "transformers (chunkser's [ssl] "
           'extra)', 'h5py': "h5py (chunkser's [keras] extra)", 'pytest': "pytest (chunkser's [dev] extra)",
           'yaml': 'pyyaml', 'sklearn': 'scikit-learn', 'onnxruntime': "onnxruntime (chunkser's [onnx] extra)",
           'onnx': "onnx (chunkser's [onnx] extra)", 'onnxscript': "onnxscript (chunkser's [onnx] extra)"}


def missing_line(error, prog=None):
    """The one line for a ModuleNotFoundError of a third-party package; None for one of our own modules."""
    name = (error.name or '').split('.')[0]
    if not name or name == __package__:
        return None
    prog = prog or os.path.basename(sys.argv[0]) or 'chunkser'
    return (f'error: {prog} needs the Python package {name}, which {sys.executable} does not have: pip install '
            f'{INSTALL.get(name, name)} (in a checkout: make venv, then run the command with .venv/bin/python)')


@contextlib.contextmanager
def dependencies(prog=None):
    """Inside: a missing third-party package prints missing_line on stderr and exits 2 (no traceback)."""
    try:
        yield
    except ModuleNotFoundError as e:
        line = missing_line(e, prog)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)


def load_command(name, prog=None):
    """chunkser/commands/NAME.py, imported."""
    with dependencies(prog):
        return importlib.import_module(f'{__package__}.commands.{name}')


def run_cli(main, prog=None):
    """utils.run_cli(main) (a UserError: one line, exit 2), a missing package: missing_line, exit 2."""
    try:
        with dependencies(prog):
            from .utils import run_cli as run
            run(main)
    finally:  # a torchrun process leaves its process group however the command ends
        if 'torch.distributed' in sys.modules:
            from .distrib import end_distributed
            end_distributed()
