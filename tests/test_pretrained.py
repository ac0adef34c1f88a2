"""pretrained.py: installs the 14 released files byte for byte from a folder or a file:// URL, refuses a
file whose sha256 is wrong without leaving anything half-written, skips what is already there, and
agrees with the READMEs' tables."""
import contextlib
import filecmp
import functools
import http.server
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

from chunkser.commands import pretrained
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TAMPERED = 'NormTerm/feat_norm_means.mat'  # mid-order: files before it get installed, files after it not


@pytest.fixture
def upstream_root(upstream):
    return os.path.dirname(upstream[0])


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob('*') if p.is_file())


def assert_identical(dest, src, rels):
    for rel in rels:
        assert filecmp.cmp(os.path.join(dest, rel), os.path.join(src, rel), shallow=False), rel


def test_install_from_folder_then_rerun_skips(upstream_root, tmp_path, capsys):
    dest = tmp_path / 'dest'
    assert pretrained.main(['--dest', str(dest), '--from', upstream_root]) == 0
    out = capsys.readouterr().out
    assert files_under(dest) == sorted(pretrained.SHA256)
    assert_identical(dest, upstream_root, pretrained.SHA256)
    assert sum(line.startswith('installed') for line in out.splitlines()) == 14
    assert all(os.stat(dest / rel).st_mode & 0o644 == 0o644 for rel in pretrained.SHA256)

    mtimes = {rel: os.stat(dest / rel).st_mtime_ns for rel in pretrained.SHA256}
    assert pretrained.main(['--dest', str(dest), '--from', upstream_root]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith('skipped') for line in out.splitlines()) == 14
    assert '0 installed, 14 already present' in out
    assert {rel: os.stat(dest / rel).st_mtime_ns for rel in pretrained.SHA256} == mtimes


def test_install_from_file_url(upstream_root, tmp_path):
    dest = tmp_path / 'dest'
    assert pretrained.main(['--dest', str(dest), '--url-base', pathlib.Path(upstream_root).as_uri()]) == 0
    assert files_under(dest) == sorted(pretrained.SHA256)
    assert_identical(dest, upstream_root, pretrained.SHA256)


@pytest.mark.parametrize('how', ['folder', 'url'])
def test_tampered_file_refused_nothing_half_written(upstream_root, tmp_path, how):
    src = tmp_path / 'src'
    shutil.copytree(upstream_root, src)
    bad = src / TAMPERED
    bad.chmod(0o644)  # the shared copy is read-only
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))

    dest = tmp_path / 'dest'
    source = ['--from', str(src)] if how == 'folder' else ['--url-base', src.as_uri()]
    with pytest.raises(UserError) as e:
        pretrained.main(['--dest', str(dest)] + source)
    msg = str(e.value)
    assert '\n' not in msg and TAMPERED in msg
    assert pretrained.SHA256[TAMPERED] in msg and pretrained.hashlib.sha256(data).hexdigest() in msg

    # only verified files are in place: those before the bad one, complete; no temporaries
    order = list(pretrained.SHA256)
    before = order[:order.index(TAMPERED)]
    assert files_under(dest) == sorted(before)
    assert_identical(dest, upstream_root, before)

    # with the bad file fixed, a rerun installs just the rest
    shutil.copyfile(os.path.join(upstream_root, TAMPERED), bad)
    assert pretrained.main(['--dest', str(dest)] + source) == 0
    assert files_under(dest) == sorted(order)
    assert_identical(dest, upstream_root, order)


def test_present_wrong_file_needs_force(upstream_root, tmp_path):
    dest = tmp_path / 'dest'
    pretrained.main(['--dest', str(dest), '--from', upstream_root])
    victim = dest / 'trained_model_v1.6' / 'LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_Val.pth.tar'
    victim.write_bytes(b'not a checkpoint')

    with pytest.raises(UserError, match='--force') as e:
        pretrained.main(['--dest', str(dest), '--from', upstream_root])
    assert victim.name in str(e.value)
    assert victim.read_bytes() == b'not a checkpoint'  # left alone

    assert pretrained.main(['--dest', str(dest), '--from', upstream_root, '--force']) == 0
    assert files_under(dest) == sorted(pretrained.SHA256)
    assert_identical(dest, upstream_root, pretrained.SHA256)


def test_missing_source_folder(tmp_path):
    with pytest.raises(UserError, match='--from folder not found'):
        pretrained.main(['--dest', str(tmp_path / 'dest'), '--from', str(tmp_path / 'nowhere')])


def test_unreachable_url_exits_2_with_one_line(tmp_path):
    base = (tmp_path / 'nowhere').as_uri()
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'pretrained.py'), '--dest', str(tmp_path / 'dest'),
                        '--url-base', base], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and base + '/trained_model_v1.6/' in lines[0]
    assert files_under(tmp_path / 'dest') == []


# ---- over HTTP, from a local server ------------------------------------------------

class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and records each request's path (as sent) in server.requests; a path with a raw [ or ] is a
    bad request (RFC 3986 reserves them: in a path they must be percent-encoded); the paths in server.truncate get
    their full Content-Length but only half the bytes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if '[' in self.path or ']' in self.path:
            self.send_error(400, 'unencoded [ or ] in the path')
            return
        rel = urllib.parse.unquote(self.path.lstrip('/'))
        if rel not in self.server.truncate:
            return super().do_GET()
        data = open(os.path.join(self.directory, rel), 'rb').read()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True  # the connection drops mid-body


@contextlib.contextmanager
def serve(folder, truncate=()):
    """An HTTP server on 127.0.0.1 (a free port) in a thread, for the duration of the block: (its base URL, the
    paths requested so far)."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
    server.truncate = set(truncate)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def served(upstream_root, tmp_path):
    """A copy of the released files laid out as the download site."""
    src = tmp_path / 'site'
    shutil.copytree(upstream_root, src)
    for folder in (src, src / 'NormTerm', src / 'trained_model_v1.6'):
        folder.chmod(0o755)  # the shared copy is read-only
    return src


def test_install_over_http(served, upstream_root, tmp_path, capsys):
    dest = tmp_path / 'dest'
    with serve(served) as (url, _):
        assert pretrained.main(['--dest', str(dest), '--url-base', url]) == 0
    out = capsys.readouterr().out
    assert f'downloading from {url}' in out and '14 installed, 0 already present' in out
    assert files_under(dest) == sorted(pretrained.SHA256)
    assert_identical(dest, upstream_root, pretrained.SHA256)


def test_http_404_exits_2_naming_the_url(served, tmp_path):
    os.remove(served / TAMPERED)
    order = list(pretrained.SHA256)
    dest = tmp_path / 'dest'
    with serve(served) as (url, _):
        r = subprocess.run([sys.executable, os.path.join(ROOT, 'pretrained.py'), '--dest', str(dest), '--url-base', url],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f'error: {url}/{TAMPERED}: HTTP 404 File not found']
    assert files_under(dest) == sorted(order[:order.index(TAMPERED)])  # the verified files before it, no temporaries


def test_http_truncated_body_leaves_no_partial_file(served, upstream_root, tmp_path, capsys, monkeypatch):
    dest = tmp_path / 'dest'
    order = list(pretrained.SHA256)
    monkeypatch.setattr(sys, 'argv', ['pretrained.py', '--dest', str(dest), '--url-base', 'set below'])
    with serve(served, truncate={TAMPERED}) as (url, _):
        sys.argv[-1] = url
        with pytest.raises(SystemExit) as e:
            pretrained.run_cli(pretrained.main)  # as the command runs it
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {TAMPERED}: transfer ended after ') and 'not installed' in err[0], err
    assert f'from {url}/{TAMPERED}' in err[0]
    assert files_under(dest) == sorted(order[:order.index(TAMPERED)])  # nothing of the cut file, no temporaries
    assert_identical(dest, upstream_root, order[:order.index(TAMPERED)])


@pytest.fixture
def all_sets_site(shared, tmp_path):
    """The three sets laid out as their download sites, under one folder: pytorch/, keras/ and retrieval/ (the
    upstream layout: rankers and rank sequences under chunk_emotion_rankers/), by symbolic links to ../shared."""
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'pytorch').symlink_to(os.path.join(shared, 'upstream-v1.6'))
    (site / 'keras').symlink_to(os.path.join(shared, 'upstream-keras-v1.6'))
    src = os.path.join(shared, 'upstream-retrieval-v1.6')
    for rel in pretrained.RETRIEVAL_SHA256:
        target = site / 'retrieval' / pretrained.retrieval_remote(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.join(src, rel))
    return site, {'pytorch': os.path.join(shared, 'upstream-v1.6'), 'keras': os.path.join(shared, 'upstream-keras-v1.6'),
                  'retrieval': src}


def test_keras_url_base_then_no_source_downloads_every_set(all_sets_site, tmp_path, capsys, monkeypatch):
    """--keras-url-base over HTTP installs the Keras set alone (its conversion step given every file), the [ and ]
    of its file names sent percent-encoded; then, with no source given, every set is downloaded from its URL base
    (here pointed at the same server): the PyTorch and retrieval sets, the Keras one already present."""
    site, src = all_sets_site
    dest = tmp_path / 'dest'
    converted = []  # the Keras set's conversion (tested in test_keras.py) is recorded here instead: 8 s saved
    keras_set = next(fs for fs in pretrained.SETS if fs.name == 'keras')
    monkeypatch.setattr(keras_set, 'post', lambda args, dests: converted.append(sorted(dests)))
    keras = {rel: os.path.join('trained_model_keras_v1.6', rel.split('/', 1)[1]) for rel in pretrained.KERAS_SHA256}
    with serve(site) as (url, requests):
        assert pretrained.main(['--dest', str(dest), '--keras-url-base', f'{url}/keras']) == 0
        out = capsys.readouterr().out
        assert len(requests) == 12 and all('%5Bepoch' in p and '%5D_' in p and '[' not in p for p in requests), requests
        assert sorted(urllib.parse.unquote(p) for p in requests) == sorted(f'/keras/{rel}' for rel in keras)
        assert f'downloading from {url}/keras' in out and '12 installed, 0 already present' in out
        assert files_under(dest) == sorted(keras.values())  # the Keras set only
        assert converted == [sorted((str(dest / keras[rel]), h) for rel, h in pretrained.KERAS_SHA256.items())]

        for fs in pretrained.SETS:  # the defaults, pointed at the local server
            monkeypatch.setattr(fs, 'url_base', f'{url}/{fs.name}')
        del requests[:]
        assert pretrained.main(['--dest', str(dest)]) == 0
        out = capsys.readouterr().out
    retrieval = {rel: '/retrieval/' + pretrained.retrieval_remote(rel) for rel in pretrained.RETRIEVAL_SHA256}
    assert sorted(requests) == sorted([f'/pytorch/{rel}' for rel in pretrained.SHA256] + list(retrieval.values()))
    for name, n in (('pytorch', 14), ('retrieval', 9)):
        assert f'downloading from {url}/{name}' in out
        assert f'{n} installed, 0 already present' in out
    assert '0 installed, 12 already present' in out and len(converted) == 2  # (convert_keras skips what it has)
    described = [rel[:-len('.pth.tar')] + '.json' for rel in retrieval if rel.endswith('.pth.tar')]  # their JSON
    assert files_under(dest) == sorted(list(pretrained.SHA256) + list(keras.values()) +
                                       list(pretrained.RETRIEVAL_SHA256) + described)
    assert_identical(dest, src['pytorch'], pretrained.SHA256)
    assert_identical(dest, src['retrieval'], pretrained.RETRIEVAL_SHA256)
    for rel, installed in keras.items():
        assert filecmp.cmp(dest / installed, os.path.join(src['keras'], rel), shallow=False), rel


@pytest.mark.parametrize('readme', ['trained_model_v1.6/README.md', 'NormTerm/README.md'])
def test_readme_sums_match_script(readme):
    """Every sha256 a README lists is the script's; the checkpoint README lists all fourteen, each once; the NormTerm
    README lists its eight files and leaves their sums to the checkpoint README."""
    text = open(os.path.join(ROOT, readme)).read()
    rows = re.findall(r'^\|\s*`([^`]+)`\s*\|\s*`([0-9a-f]{64})`\s*\|', text, re.M)
    folder = os.path.dirname(readme)
    for name, digest in rows:  # a bare file name is relative to the README's folder
        assert pretrained.SHA256.get(name if '/' in name else f'{folder}/{name}') == digest, name
    if readme.startswith('trained_model'):
        assert len(rows) == len(pretrained.SHA256) and dict(rows) == pretrained.SHA256
    else:
        assert rows == [] and '../trained_model_v1.6/README.md' in text
        names = re.findall(r'^\|\s*`(\w+\.mat)`', text, re.M)
        assert sorted('NormTerm/' + n for n in names) == sorted(r for r in pretrained.SHA256 if r.startswith('NormTerm/'))


# ---- installing without network, the Keras set's log, where a JSON says its files came from -----------------

def test_unreachable_url_says_how_to_install_offline(tmp_path):
    for flag, hint in (('--url-base', '--from DIR (make pretrained PRETRAINED_FROM=DIR)'),
                       ('--retrieval-url-base', '--retrieval-from DIR (make pretrained RETRIEVAL_FROM=DIR)')):
        with pytest.raises(UserError) as e:
            pretrained.main(['--dest', str(tmp_path / 'dest'), flag, (tmp_path / 'nowhere').as_uri()])
        assert 'cannot be reached' in str(e.value) and str(e.value).endswith(
            f'; without network, install from a copy of the files: {hint}')


def test_keras_log_names_where_the_files_go(shared, tmp_path, capsys, monkeypatch):
    """The Keras .h5 files come from trained_model_v1.6/ upstream and go to trained_model_keras_v1.6/: the log
    names the latter, installed and skipped alike."""
    monkeypatch.setattr(next(fs for fs in pretrained.SETS if fs.name == 'keras'), 'post', lambda args, dests: None)
    argv = ['--dest', str(tmp_path / 'dest'), '--keras-from', os.path.join(shared, 'upstream-keras-v1.6')]
    for verb in ('installed', 'skipped'):
        assert pretrained.main(argv) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(verb)]
        assert len(lines) == 12 and all(line.split()[1].startswith('trained_model_keras_v1.6/') for line in lines)
        assert all(os.path.isfile(tmp_path / 'dest' / line.split()[1].rstrip(':')) for line in lines)


def test_retrieval_json_source_is_the_folder_copied_from(shared, tmp_path):
    src = os.path.join(shared, 'upstream-retrieval-v1.6')
    dest = tmp_path / 'dest'
    assert pretrained.main(['--dest', str(dest), '--retrieval-from', src]) == 0
    models = [rel for rel in pretrained.RETRIEVAL_SHA256 if rel.endswith('.pth.tar')]
    for rel in models:
        info = pretrained.read_json(str(dest / rel[:-len('.pth.tar')]) + '.json')
        assert info['source'] == os.path.join(os.path.abspath(src), *rel.split('/')), rel


def test_default_dest_is_chunkser_home(upstream_root, tmp_path, monkeypatch):
    monkeypatch.setenv('CHUNKSER_HOME', str(tmp_path / 'home'))
    monkeypatch.chdir(tmp_path)
    assert pretrained.main(['--from', upstream_root]) == 0
    assert files_under(tmp_path) == sorted(f'home/{rel}' for rel in pretrained.SHA256)
    monkeypatch.delenv('CHUNKSER_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'user'))
    assert pretrained.parse_args([]).dest == str(tmp_path / 'user' / '.cache' / 'chunkser')
