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

import pretrained
from utils import UserError

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
    """Serves a folder; the paths in server.truncate get their full Content-Length but only half the bytes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
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
    """An HTTP server on 127.0.0.1 (a free port) in a thread, for the duration of the block: its base URL."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
    server.truncate = set(truncate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
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
    with serve(served) as url:
        assert pretrained.main(['--dest', str(dest), '--url-base', url]) == 0
    out = capsys.readouterr().out
    assert f'downloading from {url}' in out and '14 installed, 0 already present' in out
    assert files_under(dest) == sorted(pretrained.SHA256)
    assert_identical(dest, upstream_root, pretrained.SHA256)


def test_http_404_exits_2_naming_the_url(served, tmp_path):
    os.remove(served / TAMPERED)
    order = list(pretrained.SHA256)
    dest = tmp_path / 'dest'
    with serve(served) as url:
        r = subprocess.run([sys.executable, os.path.join(ROOT, 'pretrained.py'), '--dest', str(dest), '--url-base', url],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f'error: {url}/{TAMPERED}: HTTP 404 File not found']
    assert files_under(dest) == sorted(order[:order.index(TAMPERED)])  # the verified files before it, no temporaries


def test_http_truncated_body_leaves_no_partial_file(served, upstream_root, tmp_path, capsys, monkeypatch):
    dest = tmp_path / 'dest'
    order = list(pretrained.SHA256)
    monkeypatch.setattr(sys, 'argv', ['pretrained.py', '--dest', str(dest), '--url-base', 'set below'])
    with serve(served, truncate={TAMPERED}) as url:
        sys.argv[-1] = url
        with pytest.raises(SystemExit) as e:
            pretrained.run_cli(pretrained.main)  # as the command runs it
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {TAMPERED}: transfer ended after ') and 'not installed' in err[0], err
    assert f'from {url}/{TAMPERED}' in err[0]
    assert files_under(dest) == sorted(order[:order.index(TAMPERED)])  # nothing of the cut file, no temporaries
    assert_identical(dest, upstream_root, order[:order.index(TAMPERED)])


@pytest.mark.parametrize('readme', ['trained_model_v1.6/README.md', 'NormTerm/README.md'])
def test_readme_sums_match_script(readme):
    """Every sha256 a README lists is the script's; the checkpoint README lists all fourteen."""
    text = open(os.path.join(ROOT, readme)).read()
    rows = re.findall(r'^\|\s*`([^`]+)`\s*\|\s*`([0-9a-f]{64})`\s*\|', text, re.M)
    table = dict(rows)
    assert len(table) == len(rows)
    if readme.startswith('trained_model'):
        assert table == pretrained.SHA256
    else:
        names = re.findall(r'^\|\s*`(\w+\.mat)`', text, re.M)
        assert sorted('NormTerm/' + n for n in names) == sorted(r for r in pretrained.SHA256 if r.startswith('NormTerm/'))
