"""The installed package: the wheel holds chunkser/ alone and the console command `chunkser`; installed outside the
checkout (pip --target, no root module importable there) `chunkser predict` writes the same CSV as the checkout's
predict.py; the per-user model folder ($CHUNKSER_HOME) that `chunkser pretrained` fills without --dest is searched
by predict, predict_files and testing from any folder; and the one-line errors of a missing model folder or a
missing dependency."""
import glob
import importlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import chunkser
import chunkser.entry
from chunkser import inference
from chunkser.commands import pretrained, testing
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py')))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """The wheel pip builds from a copy of the checkout's package files (the checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp('src')
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, 'chunkser'), src / 'chunkser', ignore=shutil.ignore_patterns('__pycache__'))
    out = tmp_path_factory.mktemp('wheel')
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index',
                        '-q', '-w', str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = glob.glob(str(out / '*.whl'))
    return path


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
    """The wheel installed into a folder outside the checkout: run(args, cwd, home) runs `chunkser args` there."""
    site = tmp_path_factory.mktemp('site')
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', '--target', str(site),
                        wheel], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    def run(args, cwd, home, exe=(str(site / 'bin' / 'chunkser'),)):
        env = dict(os.environ, PYTHONPATH=str(site), CHUNKSER_HOME=str(home))
        return subprocess.run([*exe, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    run.site = str(site)
    return run


def golden_audio(shared, name):
    return os.path.join(shared, 'golden', 'audio', name)


def test_wheel_holds_the_package_and_the_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split('/')[0] for n in names} == {'chunkser', f'chunkser-{chunkser.__version__}.dist-info'}
    packaged = {n for n in names if n.endswith('.py')}
    in_tree = {os.path.relpath(p, ROOT).replace(os.sep, '/')
               for p in glob.glob(os.path.join(ROOT, 'chunkser', '**', '*.py'), recursive=True)}
    assert packaged == in_tree
    entry = zipfile.ZipFile(wheel).read(f'chunkser-{chunkser.__version__}.dist-info/entry_points.txt').decode()
    assert 'chunkser = chunkser.__main__:main' in entry


def test_no_root_module_outside_the_checkout(installed, tmp_path):
    code = ('import importlib.util, sys, chunkser; '
            f'print(chunkser.__file__); print([m for m in {ROOT_MODULES!r} if importlib.util.find_spec(m)])')
    r = installed(['-c', code], tmp_path, tmp_path / 'home', exe=(sys.executable,))
    assert r.returncode == 0, r.stderr
    where, found = r.stdout.splitlines()
    assert where.startswith(installed.site) and found == '[]'
    assert set(ROOT_MODULES) >= {'training', 'testing', 'predict', 'utils', 'model', 'norm_para'}


def test_help_lists_the_commands(installed, tmp_path):
    r = installed(['--help'], tmp_path, tmp_path / 'home')
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith('  ')]
    assert listed[:len(chunkser.entry.COMMANDS)] == list(chunkser.entry.COMMANDS)


def test_installed_predict_equals_the_checkouts(installed, shared, upstream, tmp_path):
    """chunkser predict (installed, run from another folder) and python predict.py (the checkout): one CSV."""
    paths = [golden_audio(shared, 'calm.wav'), golden_audio(shared, 'short.wav'), golden_audio(shared, 'excited.mat')]
    flags = ['--model-dir', upstream[0], '--norm-dir', upstream[1]]
    (tmp_path / 'away').mkdir()
    r = installed(['predict', *paths, *flags, '--out', tmp_path / 'installed.csv'], tmp_path / 'away', tmp_path / 'h')
    assert r.returncode == 0, r.stderr
    c = subprocess.run([sys.executable, os.path.join(ROOT, 'predict.py'), *paths, *flags, '--out',
                        str(tmp_path / 'checkout.csv')], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stderr
    assert r.stdout == c.stdout
    want = (tmp_path / 'checkout.csv').read_bytes()
    assert (tmp_path / 'installed.csv').read_bytes() == want and len(want.splitlines()) == 4


def test_pretrained_without_dest_fills_chunkser_home(installed, shared, upstream, tmp_path):
    """chunkser pretrained --from DIR with no --dest installs into $CHUNKSER_HOME; then chunkser predict, from a
    folder with no models, finds them there: the same CSV as with --model-dir and --norm-dir."""
    home, away = tmp_path / 'home', tmp_path / 'away'
    away.mkdir()
    r = installed(['pretrained', '--from', os.path.dirname(upstream[0])], away, home)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(home)) == ['NormTerm', 'trained_model_v1.6'] and os.listdir(away) == []
    assert len(os.listdir(home / 'trained_model_v1.6')) == 6 and len(os.listdir(home / 'NormTerm')) == 8
    wav = golden_audio(shared, 'calm.wav')
    found = installed(['predict', wav], away, home)
    given = installed(['predict', wav, '--model-dir', upstream[0], '--norm-dir', upstream[1]], away, tmp_path / 'no')
    assert found.returncode == given.returncode == 0, found.stderr + given.stderr
    assert found.stdout == given.stdout and found.stdout.count('\n') == 2


@pytest.fixture
def home_with_models(upstream, tmp_path, monkeypatch):
    """$CHUNKSER_HOME holding the released models (as `chunkser pretrained` lays them out), the cwd an empty folder."""
    home = tmp_path / 'home'
    home.mkdir()
    os.symlink(upstream[0], home / 'trained_model_v1.6')
    os.symlink(upstream[1], home / 'NormTerm')
    monkeypatch.setenv('CHUNKSER_HOME', str(home))
    (tmp_path / 'away').mkdir()
    monkeypatch.chdir(tmp_path / 'away')
    return home


def test_predict_files_finds_the_per_user_models(home_with_models, shared, upstream):
    paths = [golden_audio(shared, 'short.mat'), golden_audio(shared, 'calm.wav')]
    found = inference.predict_files(paths)
    given = inference.predict_files(paths, model_dir=upstream[0], norm_dir=upstream[1])
    assert found.equals(given) and found[['Act', 'Val', 'Dom']].notna().all().all()


def test_testing_finds_the_per_user_models(home_with_models, golden_corpus, upstream, capsys):
    feat_dir, label_csv = golden_corpus
    corpus = ['--feat-dir', feat_dir, '--label-csv', label_csv, '-emo', 'Val', '--no-store']
    assert testing.main(corpus) == 0
    found = capsys.readouterr().out
    assert testing.main(corpus + ['--model-dir', upstream[0], '--norm-dir', upstream[1]]) == 0
    given = capsys.readouterr().out
    strip = lambda out: [line for line in out.splitlines() if not line.startswith(('Loaded', 'Avg. Time'))]  # noqa: E731
    assert strip(found) == strip(given) and 'Val-CCC' in found
    assert f'Loaded checkpoint: {home_with_models}' in found


def test_nothing_found_is_one_error_naming_both_folders(installed, shared, tmp_path, monkeypatch):
    """From a folder without models or NormTerm, an empty $CHUNKSER_HOME: one line naming both options and
    `chunkser pretrained`; the library call names its keyword arguments instead of the flags."""
    (tmp_path / 'away').mkdir()
    r = installed(['predict', golden_audio(shared, 'calm.wav')], tmp_path / 'away', tmp_path / 'empty')
    assert r.returncode == 2 and r.stdout == ''
    (line,) = r.stderr.splitlines()
    assert line.startswith('error: no SelfAttenVec checkpoint') and str(tmp_path / 'empty') in line
    assert '`chunkser pretrained`' in line and '--model-dir DIR and --norm-dir DIR' in line
    monkeypatch.setenv('CHUNKSER_HOME', str(tmp_path / 'empty'))
    monkeypatch.chdir(tmp_path / 'away')
    with pytest.raises(UserError) as e:
        inference.predict_files(golden_audio(shared, 'calm.wav'))
    assert "model_dir= DIR and norm_dir= DIR" in str(e.value) and '--' not in str(e.value)
    with pytest.raises(UserError, match=r'Models \(no such folder in .*away\)'):
        inference.predict_files(golden_audio(shared, 'calm.wav'), model_dir='Models')


BLOCK_TQDM = "import runpy, sys; sys.modules['tqdm'] = None; sys.path.insert(0, {root!r}); sys.argv = {argv!r}; "


@pytest.mark.parametrize('how', ['predict.py', 'python -m chunkser'])
def test_missing_dependency_is_one_line(how, tmp_path):
    """A Python without tqdm (imported by predict at start): one line naming it and how to install, exit 2."""
    if how == 'predict.py':
        code = BLOCK_TQDM.format(root=ROOT, argv=['predict.py', 'x.wav']) + \
            f"runpy.run_path({os.path.join(ROOT, 'predict.py')!r}, run_name='__main__')"
        prog = 'predict.py'
    else:
        code = BLOCK_TQDM.format(root=ROOT, argv=['chunkser', 'predict', 'x.wav']) + \
            "runpy.run_module('chunkser', run_name='__main__', alter_sys=True)"
        prog = 'chunkser predict'
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.splitlines() == [f'error: {prog} needs the Python package tqdm, which {sys.executable} does not '
                                     'have: pip install tqdm (in a checkout: make venv, then run the command with '
                                     '.venv/bin/python)']


def test_missing_dependency_inside_a_command_is_one_line(monkeypatch, capsys):
    """A package imported late, on one code path (transformers for a self-supervised front end): the same line."""
    def needs_transformers(argv):
        import transformers  # noqa: F401
    monkeypatch.setitem(sys.modules, 'transformers', None)
    with pytest.raises(SystemExit) as e:
        chunkser.entry.run_cli(needs_transformers, prog='chunkser feature_extraction')
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith('error: chunkser feature_extraction needs the Python package '
                                              'transformers, which ')
    with pytest.raises(ModuleNotFoundError):  # one of our own modules missing is a bug: its traceback stays
        with chunkser.entry.dependencies():
            importlib.import_module('chunkser.nothing_here')
