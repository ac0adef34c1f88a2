"""The shape of the tree, derived from the tree itself: the commands and the reference's two faces at the root, every
shared module in the chunkser package, imports pointing one way (root -> package; inside the package relative, no
circle), thin commands, short functions, and a README/docs file map that names what is there."""
import ast
import glob
import os
import re

from chunkser.cli import COMMANDS, MODULE_COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'chunkser')
ROOT_FILES = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py'))}
FACES = {'utils', 'model'}  # the reference's utils.py and model.py, re-exporting the package's
BENCHMARK = {'bench'}  # the benchmark's entry point (with benchmarking/)
MAX_FUNCTION_LINES = 60


def imported(path):
    """Top-level names of every module a file imports absolutely, at any depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def package_modules():
    """Dotted name -> path of every module of the package."""
    out = {}
    for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
        rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if rel[-1] == '__init__':
            rel = rel[:-1]
        out['.'.join(rel)] = path
    return out


def package_imports(name, path, top_level=False):
    """The package modules a module imports, at any depth or (top_level) where it runs at import time (relative
    imports resolved; `from . import x` names module x)."""
    modules = package_modules()
    is_pkg = path.endswith('__init__.py')
    here = name.split('.') if is_pkg else name.split('.')[:-1]
    out = set()
    tree = ast.parse(open(path).read())
    for node in (module_level_nodes(tree) if top_level else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = here[:len(here) - (node.level - 1)] + (node.module.split('.') if node.module else [])
            target = '.'.join(base)
            for a in node.names:
                sub = f'{target}.{a.name}'
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'chunkser':
            out.add(node.module)
    return out - {name}


def module_level_nodes(tree):
    """The statements of a module that run when it is imported: outside functions and classes (inside if/try/with)."""
    todo, out = list(tree.body), []
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [n for field in ('body', 'orelse', 'finalbody') for n in getattr(node, field, [])]
            todo += [n for h in getattr(node, 'handlers', []) for n in h.body]
    return out


def test_root_holds_commands_faces_and_the_benchmark():
    assert ROOT_FILES == set(COMMANDS) | FACES | BENCHMARK, ROOT_FILES ^ (set(COMMANDS) | FACES | BENCHMARK)
    assert len(ROOT_FILES) <= 15
    for name in COMMANDS:
        assert os.path.isfile(os.path.join(PACKAGE, 'commands', f'{name}.py')), name


def test_root_files_import_the_package_only():
    """No root file imports another root file (bench.py may use benchmarking/); the faces import only the module
    whose face they are."""
    for name in ROOT_FILES:
        path = os.path.join(ROOT, f'{name}.py')
        assert imported(path) & (ROOT_FILES - {name}) == set(), name
    for face in FACES:
        tree = ast.parse(open(os.path.join(ROOT, f'{face}.py')).read())
        froms = [n.module for n in tree.body if isinstance(n, (ast.ImportFrom, ast.Import))
                 and not isinstance(n, ast.Import)]
        assert froms == [f'chunkser.{face}'], (face, froms)


def test_commands_are_thin_mains():
    """A root command defines main(argv), whose body calls the package's command, and runs it under __main__; the
    package's command module defines main(argv) too."""
    for name in COMMANDS:
        tree = ast.parse(open(os.path.join(ROOT, f'{name}.py')).read())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'main']
        assert mains and [a.arg for a in mains[0].args.args] == ['argv'], name
        assert len(mains[0].body) <= 2, name
        assert any(isinstance(n, ast.If) and "__name__ == '__main__'" in ast.unparse(n.test) for n in tree.body), name
        assert imported(os.path.join(ROOT, f'{name}.py')) == {'chunkser'}, name
        sub = ast.parse(open(os.path.join(PACKAGE, 'commands', f'{name}.py')).read())
        assert any(isinstance(n, ast.FunctionDef) and n.name == 'main' for n in sub.body), name


def test_package_imports_no_root_file():
    """Inside the package, modules import each other relatively; none imports a root file by name."""
    for name, path in package_modules().items():
        assert imported(path) & ROOT_FILES == set(), name


def test_no_module_imports_a_command():
    """Commands are the top: no package module imports chunkser.commands (the console entry point looks them up by
    name)."""
    for name, path in package_modules().items():
        if name.startswith('chunkser.commands') or name == 'chunkser.__main__':
            continue
        assert not any(t.startswith('chunkser.commands') for t in package_imports(name, path)), name


def import_cycle(graph):
    """One cycle of the directed graph (a list of nodes), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_cycle_finder():
    assert import_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert import_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_circle():
    """Imports point one way (at any depth: an import inside a function counts). The package's __init__ and
    __main__ load by name, and the subpackages' empty __init__ files import nothing."""
    modules = package_modules()
    graph = {name: {t for t in package_imports(name, path) if t in modules and t != 'chunkser'}
             for name, path in modules.items() if name not in ('chunkser', 'chunkser.__main__')}
    assert import_cycle(graph) is None, ' -> '.join(import_cycle(graph))


def long_functions(path):
    tree = ast.parse(open(path).read())
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_over_60_lines():
    paths = list(package_modules().values()) + glob.glob(os.path.join(ROOT, '*.py')) \
        + glob.glob(os.path.join(ROOT, 'benchmarking', '*.py')) + glob.glob(os.path.join(ROOT, 'images', '*.py'))
    assert any(p.endswith(os.path.join('images', 'draw_framework.py')) for p in paths)
    long = {os.path.relpath(p, ROOT): long_functions(p) for p in paths}
    assert {p: f for p, f in long.items() if f} == {}


def test_module_commands_exist():
    for name, module in MODULE_COMMANDS.items():
        tree = ast.parse(open(os.path.join(ROOT, *module.split('.')) + '.py').read())
        assert any(isinstance(n, ast.FunctionDef) and n.name == 'main' for n in tree.body), name
