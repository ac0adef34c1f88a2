"""The test set-up itself: make test's second run of the numeric tests really computes on AVX2 code paths (PyTorch's
ATen kernels, oneDNN, MKL), and CI's rule that a missing requirement fails instead of skipping is switched on by
.ci/run and read from any true value of CI."""
import os
import re
import shutil
import subprocess

import pytest
import torch

import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2_LIMITS = {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2'}


def cpu_has_avx512():
    try:
        return bool(re.search(r'^flags\s*:.*\bavx512f\b', open('/proc/cpuinfo').read(), re.M))
    except OSError:
        return False


def make_test_rerun():
    """The environment assignments of make test's second (numeric) run, as make would run it."""
    make = shutil.which('make')
    assert make is not None, 'make test needs make'
    r = subprocess.run([make, '-n', '-s', '-C', ROOT, 'test', 'VENV=/nonexistent/venv'], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if '-m numeric' in ln)
    head = line[:line.index('/nonexistent/venv/bin/python')]
    return dict(re.findall(r'(\w+)=(\S+)', head))


def test_make_test_reruns_the_numeric_tests_on_avx2_code_paths():
    """The second run limits ATen, oneDNN and MKL (not oneDNN alone: ATen's own kernels would stay on AVX-512 and
    most numbers would come out bit-identical) and says so to the tests, so that the test below checks, in that
    run, that the limits took."""
    assert make_test_rerun() == dict(AVX2_LIMITS, SER_AVX2_RERUN='1')


@pytest.mark.numeric
def test_this_run_computes_on_the_code_paths_it_says(capfd):
    """In make test's second run (SER_AVX2_RERUN=1) ATen and oneDNN run AVX2 code and MKL is limited to it; in an
    ordinary run on an AVX-512 CPU they run AVX-512, so the second run computes something else."""
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        torch.nn.LSTM(4, 4)(torch.randn(2, 1, 4))
    header = capfd.readouterr().out  # oneDNN prints its header the first time verbose is on in a process: here
    isa = re.search(r'^onednn_verbose,.*,cpu,isa:(.+)$', header, re.M)[1]
    aten = torch.backends.cpu.get_cpu_capability()
    if os.environ.get('SER_AVX2_RERUN') == '1':
        assert {k: os.environ.get(k) for k in AVX2_LIMITS} == AVX2_LIMITS
        assert aten == 'AVX2' and 'AVX2' in isa and 'AVX-512' not in isa, (aten, isa)
    elif cpu_has_avx512() and not any(k in os.environ for k in AVX2_LIMITS):
        assert aten == 'AVX512' and 'AVX-512' in isa, (aten, isa)
    else:
        assert aten in ('AVX2', 'AVX512', 'DEFAULT'), aten


@pytest.mark.parametrize('value,ci', [('true', True), ('TRUE', True), ('True', True), ('1', True), ('yes', True),
                                      ('Yes', True), (' true\n', True), ('false', False), ('0', False), ('no', False),
                                      ('', False), (None, False)])
def test_ci_flag_accepts_any_true_value(monkeypatch, value, ci):
    """Under CI a missing requirement fails the test; elsewhere it skips it."""
    if value is None:
        monkeypatch.delenv('CI', raising=False)
    else:
        monkeypatch.setenv('CI', value)
    assert conftest.in_ci() is ci
    with pytest.raises(pytest.fail.Exception if ci else pytest.skip.Exception, match='espeak-ng is not installed'):
        conftest.missing('espeak-ng is not installed')


def test_ci_run_sets_ci(tmp_path):
    """.ci/run exports CI=true itself, so the rule holds whatever the runner sets (here: nothing)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    fake = bin_dir / 'make'  # stands in for make: prints what it was given
    fake.write_text('#!/bin/sh\necho "CI=${CI-unset} make $*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != 'CI'}
    env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
    r = subprocess.run(['bash', os.path.join(ROOT, '.ci', 'run')], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['CI=true make test PYTEST_ARGS=-q -p no:cacheprovider']


def module_level_imports(path):
    """Top-level names of the modules a file imports when it is imported: its statements outside functions and
    classes (inside if/try blocks too)."""
    import ast
    names, todo = set(), list(ast.parse(open(path).read()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [n for field in ('body', 'orelse', 'finalbody', 'handlers') for n in getattr(node, field, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return names


def test_cuda_tests_need_no_opensmile():
    """The GPU machine has no opensmile (nor soundfile and audiofile, which come with it): tests/test_cuda.py (all its
    imports, in its tests too), conftest.py and the project modules they pull in at import time import none of them,
    nor feature_extraction (the module that makes features with it)."""
    from test_layout import imported  # every import of a file, at any depth
    tests = os.path.join(ROOT, 'tests')
    todo = imported(os.path.join(tests, 'test_cuda.py')) | imported(os.path.join(tests, 'conftest.py'))
    seen = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        for folder in (ROOT, tests):  # a project module, or a helper module of the tests: follow it
            path = os.path.join(folder, name + '.py')
            if os.path.isfile(path):
                todo |= module_level_imports(path) - seen
    assert 'training' in seen and 'testing' in seen  # (what the CUDA tests run)
    assert seen & {'opensmile', 'soundfile', 'audiofile', 'audinterface', 'feature_extraction'} == set()
