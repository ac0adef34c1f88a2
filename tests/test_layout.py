"""The shape the README promises: utils.py at the bottom, a file map that matches the tree."""
import ast
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py'))} | {'benchmarking', 'images'}


def imported(path):
    """Top-level names of every module a file imports, at any depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def test_utils_imports_no_project_module():
    assert imported(os.path.join(ROOT, 'utils.py')) & PROJECT == set()


def test_shared_modules_import_no_script():
    """Imports point one way: scripts -> shared modules -> utils.py. The modules below are imported by the
    scripts; none of them imports training.py, testing.py, predict.py or another top-level command."""
    commands = {'training', 'testing', 'predict', 'norm_para', 'pretrained', 'bench', 'attention_report', 'retrieval',
                'keras_convert', 'synthetic'}
    for module in ('model', 'checkpoint', 'scoring', 'streams', 'distrib', 'cli', 'store', 'inference', 'plots', 'utils'):
        assert imported(os.path.join(ROOT, f'{module}.py')) & commands == set(), module


def test_readme_file_map_matches_the_tree():
    """Every Python file at the top level (and every test file) is named in the README, and every file the README's
    map names exists."""
    readme = open(os.path.join(ROOT, 'README.md')).read()
    files = readme[readme.index('## Files'):readme.index('### How the code fits together')]
    tests = readme[readme.index('## Tests'):readme.index('## Files')]
    named = set(re.findall(r'`([\w/]+\.py)`', files))
    assert {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, '*.py'))} <= named
    for f in named:
        assert os.path.isfile(os.path.join(ROOT, f)), f
    test_files = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'tests', 'test_*.py'))}
    assert test_files <= set(re.findall(r'`(test_\w+\.py)`', tests)), test_files - set(re.findall(r'`(test_\w+\.py)`', tests))
