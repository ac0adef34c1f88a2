"""The shape the README promises: commands over shared modules over utils.py, and a file map that matches the tree."""
import ast
import glob
import os
import re

from cli import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py'))}
PROJECT = MODULES | {'benchmarking', 'images'}
BENCHMARK = {'bench'}  # the benchmark (with benchmarking/) may import anything


def imported(path):
    """Top-level names of every module a file imports, at any depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def readme_section(start, end):
    readme = open(os.path.join(ROOT, 'README.md')).read()
    return readme[readme.index(start):readme.index(end)]


def test_utils_imports_no_project_module():
    assert imported(os.path.join(ROOT, 'utils.py')) & PROJECT == set()


def test_no_module_imports_a_command():
    """Imports point one way: commands -> shared modules -> utils.py; a command is never imported (the
    benchmark and the tests may)."""
    assert set(COMMANDS) <= MODULES, set(COMMANDS) - MODULES
    for name in sorted(MODULES - BENCHMARK):
        assert imported(os.path.join(ROOT, f'{name}.py')) & set(COMMANDS) - {name} == set(), name


def test_commands_are_thin_mains():
    """Every command defines main(argv) and runs it under __main__."""
    for name in COMMANDS:
        tree = ast.parse(open(os.path.join(ROOT, f'{name}.py')).read())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'main']
        assert mains and [a.arg for a in mains[0].args.args] == ['argv'], name
        assert any(isinstance(n, ast.If) and "__name__ == '__main__'" in ast.unparse(n.test) for n in tree.body), name


def test_readme_script_table_lists_the_commands():
    table = readme_section('### Commands', '### Shared modules')
    assert set(re.findall(r'`(\w+)\.py`', table)) == set(COMMANDS) | BENCHMARK


def test_readme_file_map_matches_the_tree():
    """Every Python file at the top level (and every test file) is named in the README, and every file the README's
    map names exists."""
    files = readme_section('## Files', '### How the code fits together')
    tests = readme_section('## Tests', '## Files')
    named = set(re.findall(r'`([\w/]+\.py)`', files))
    assert {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, '*.py'))} <= named, \
        {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, '*.py'))} - named
    for f in named:
        assert os.path.isfile(os.path.join(ROOT, f)), f
    shared = readme_section('### Shared modules', '### How the code fits together')
    assert not set(re.findall(r'`(\w+)\.py`', shared)) & set(COMMANDS)
    test_files = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'tests', 'test_*.py'))}
    assert test_files <= set(re.findall(r'`(test_\w+\.py)`', tests)), test_files - set(re.findall(r'`(test_\w+\.py)`', tests))
