"""The test set-up itself: make test's second run of the numeric tests really computes on AVX2 code paths (PyTorch's
ATen kernels, oneDNN, MKL), and CI's rule that a missing requirement fails instead of skipping is switched on by
.ci/run and read from any true value of CI."""
import ast
import os
import re
import shutil
import subprocess
import sys

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


# oneDNN names the ISA it dispatches to in its verbose header, in words that differ by vendor and generation. What
# the tests need to know is the vector width: 512-bit code (AVX-512, AVX10.x/512, and AMX, which oneDNN only pairs
# with AVX-512 or AVX10) or at most 256-bit code (AVX2 and older).
WIDE_ISA_WORDS = ('AVX-512', 'AVX10', 'AMX')


def isa_is_512_bit(isa):
    """True where oneDNN's ISA line names 512-bit code, False where it names AVX2 or older."""
    return any(w in isa for w in WIDE_ISA_WORDS)


@pytest.mark.parametrize('isa,wide', [
    ('Intel SSE4.1', False),
    ('Intel AVX', False),
    ('Intel AVX2', False),
    ('Intel AVX2 with Intel DL Boost', False),
    ('Intel AVX2 with Intel DL Boost and bfloat16 support', False),
    ('Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions', True),
    ('Intel AVX-512 with Intel DL Boost', True),
    ('Intel AVX-512 with Intel DL Boost and bfloat16 support', True),
    ('Intel AVX-512 with float16, Intel DL Boost and bfloat16 support', True),
    ('Intel AVX10.1/512 with float16, Intel DL Boost and bfloat16 support', True),
    ('Intel AMX with bfloat16 and 8-bit integer support', True),
    ('Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support', True),
    ('Intel AVX10.1 and Intel AMX with float16, bfloat16 and 8-bit integer support', True),
])
def test_isa_width_reads_every_vendor_string(isa, wide):
    """The ISA lines oneDNN prints on AMD EPYC (AVX2 only or AVX-512) and on Intel Xeon (AVX-512, AVX10, AMX)."""
    assert isa_is_512_bit(isa) is wide


def onednn_isa():
    """The ISA line oneDNN prints in this process (its verbose header, printed the first time verbose is on)."""
    import tempfile
    with tempfile.TemporaryFile('w+') as out:
        fd = os.dup(1)
        os.dup2(out.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.nn.LSTM(4, 4)(torch.randn(2, 1, 4))
        finally:
            os.dup2(fd, 1)
            os.close(fd)
        out.seek(0)
        header = out.read()
    return re.search(r'^onednn_verbose,.*,cpu,isa:(.+)$', header, re.M)[1]


@pytest.mark.numeric
def test_this_run_computes_on_the_code_paths_it_says(capfd):
    """In make test's second run (SER_AVX2_RERUN=1) ATen and oneDNN run AVX2 code and MKL is limited to it; in an
    ordinary run on an AVX-512 CPU (AMD or Intel, with or without AVX10 and AMX) they run 512-bit code, so the second
    run computes something else."""
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        torch.nn.LSTM(4, 4)(torch.randn(2, 1, 4))
    header = capfd.readouterr().out  # oneDNN prints its header the first time verbose is on in a process: here
    isa = re.search(r'^onednn_verbose,.*,cpu,isa:(.+)$', header, re.M)[1]
    aten = torch.backends.cpu.get_cpu_capability()
    if os.environ.get('SER_AVX2_RERUN') == '1':
        assert {k: os.environ.get(k) for k in AVX2_LIMITS} == AVX2_LIMITS
        assert aten == 'AVX2' and 'AVX2' in isa and not isa_is_512_bit(isa), (aten, isa)
    elif cpu_has_avx512() and not any(k in os.environ for k in AVX2_LIMITS):
        assert aten == 'AVX512' and isa_is_512_bit(isa), (aten, isa)
    else:
        assert aten in ('AVX2', 'AVX512', 'DEFAULT'), aten


# ONEDNN_MAX_CPU_ISA caps oneDNN at a level; on a CPU without that level oneDNN takes the highest it has below it
@pytest.mark.parametrize('limit,wide', [('SSE41', False), ('AVX', False), ('AVX2', False), ('AVX2_VNNI', False),
                                        ('AVX2_VNNI_2', False), ('AVX512_CORE', True), ('AVX512_CORE_VNNI', True),
                                        ('AVX512_CORE_BF16', True), ('AVX10_1_512', True),
                                        ('AVX10_1_512_AMX', True), ('DEFAULT', True)])
def test_isa_limits_give_the_width_they_name(limit, wide):
    """Each ISA limit oneDNN takes, in a process of its own: the ISA line it then prints has the width the limit names
    (on a CPU without AVX-512 every limit gives AVX2 or older)."""
    wide = wide and cpu_has_avx512()
    code = 'import sys; sys.path.insert(0, sys.argv[1]); import test_harness as h; print(h.onednn_isa())'
    env = {k: v for k, v in os.environ.items() if k not in AVX2_LIMITS}
    env['ONEDNN_MAX_CPU_ISA'] = limit
    r = subprocess.run([sys.executable, '-c', code, os.path.join(ROOT, 'tests')], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    isa = r.stdout.strip().splitlines()[-1]
    assert isa_is_512_bit(isa) is wide, isa


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
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match='espeak-ng is not installed') as e:
        conftest.missing('espeak-ng is not installed')
    assert e.type is (pytest.fail.Exception if ci else pytest.skip.Exception)  # a skip under CI fails here


@pytest.mark.parametrize('ci', [True, False])
def test_broken_transformers_fails_under_ci(monkeypatch, ci):
    """The front-end tests' transformers: missing (or failing to import) skips them, but under CI fails them, at
    module level too (pytest.importorskip skipped them under CI as well)."""
    monkeypatch.setenv('CI', 'true' if ci else 'false')
    monkeypatch.setitem(sys.modules, 'transformers', None)  # `import transformers` raises ModuleNotFoundError
    for module_level in (False, True):
        # both caught here, so a skip where a failure is due fails this test instead of skipping it
        with pytest.raises((pytest.fail.Exception, pytest.skip.Exception),
                           match=r'^transformers cannot be imported \(ModuleNotFoundError: ') as e:
            conftest.need_transformers(module_level)
        assert e.type is (pytest.fail.Exception if ci else pytest.skip.Exception) and '\n' not in str(e.value)
        if not ci:
            assert e.value.allow_module_level is module_level


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
    imports, in its tests too), conftest.py and the package modules they pull in at import time import none of them,
    nor chunkser.features.lld (the module that makes features with it)."""
    from test_layout import imported, package_imports, package_modules
    tests = os.path.join(ROOT, 'tests')
    modules = package_modules()
    todo = {('file', os.path.join(tests, 'test_cuda.py')), ('file', os.path.join(tests, 'conftest.py'))}
    seen, names = set(), set()
    while todo:
        kind, path = todo.pop()
        seen.add(path)
        top = module_level_imports(path)
        names |= top
        if kind == 'file':  # a test file: its helper modules, and the package modules it names anywhere
            todo |= {('file', os.path.join(tests, n + '.py')) for n in imported(path)
                     if os.path.isfile(os.path.join(tests, n + '.py'))}
            pulled = {m for m in modules for node in ast.walk(ast.parse(open(path).read()))
                      if isinstance(node, ast.ImportFrom) and node.module
                      and (m == node.module or any(m == f'{node.module}.{a.name}' for a in node.names))}
        else:  # a package module: what it imports at module level
            pulled = {m for m in package_imports(module_of(path), path, top_level=True) if m in modules}
        names |= pulled
        for m in pulled:
            todo |= {('module', modules[m])} - {('module', p) for p in seen}
    todo_paths = {os.path.relpath(p, ROOT) for p in seen}
    assert 'chunkser/commands/training.py' in todo_paths and 'chunkser/commands/testing.py' in todo_paths
    assert names & {'opensmile', 'soundfile', 'audiofile', 'audinterface', 'chunkser.features.lld'} == set(), \
        names & {'opensmile', 'soundfile', 'audiofile', 'audinterface', 'chunkser.features.lld'}


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    return '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)
