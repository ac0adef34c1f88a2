"""`chunkser COMMAND ARGS` (or `python -m chunkser COMMAND ARGS`, also under torchrun's -m): the command of that
name, exactly as `python COMMAND.py ARGS` runs it from the checkout. `chunkser --help` lists them."""
import importlib
import importlib.util
import sys

from .entry import COMMANDS, MODULE_COMMANDS, dependencies, run_cli


def usage():
    width = max(map(len, COMMANDS + tuple(MODULE_COMMANDS)))
    lines = ['usage: chunkser COMMAND [ARGS ...]   (chunkser COMMAND --help for its arguments)', '', 'commands:']
    for name in COMMANDS:
        lines.append(f'  {name:<{width}}  {first_line(f"chunkser.commands.{name}")}')
    for name, module in MODULE_COMMANDS.items():
        lines.append(f'  {name:<{width}}  {first_line(module)}')
    return '\n'.join(lines)


def first_line(module):
    """A command's one-line summary: its module's docstring's first line, read without importing it."""
    import ast
    spec = importlib.util.find_spec(module)
    with open(spec.origin) as f:
        return (ast.get_docstring(ast.parse(f.read())) or '').split('\n')[0]


def main():
    argv = sys.argv[1:]
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(usage())
        sys.exit(0 if argv else 2)
    name = argv[0]
    if name in COMMANDS:
        module = f'chunkser.commands.{name}'
    elif name in MODULE_COMMANDS:
        module = MODULE_COMMANDS[name]
    else:
        print(f'error: no command {name!r}; chunkser --help lists them', file=sys.stderr)
        sys.exit(2)
    prog = f'chunkser {name}'
    sys.argv = [prog] + argv[1:]
    with dependencies(prog):  # a missing package: one line saying how to install it
        command = importlib.import_module(module)
    run_cli(command.main, prog)


if __name__ == '__main__':
    main()
