"""Files that are never half-written: atomic writes, JSON, locks, sums, output folders."""
import contextlib
import csv
import hashlib
import io
import json
import os

from .utils import UserError


@contextlib.contextmanager
def atomic_writer(path):
    """A binary file object on a temporary file beside `path`; on success fsync and rename into place, on any
    error (or Ctrl-C) the temporary file is removed: a crash never leaves half a file at `path`."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    with atomic_writer(path) as f:
        f.write(data)


def atomic_torch_save(obj, path):
    import torch  # only the scripts that save a model pay for it
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class FileLock:
    """An exclusive lock on a file, held inside `with` (a no-op where fcntl is missing): several processes
    (torchrun ranks, two scripts' --demo) build a store or a corpus once."""

    def __init__(self, path):
        self.path, self.f = path, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.f = open(self.path, 'a')
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()  # closing releases the lock


def file_sha256(path):
    """The sha256 of a file's bytes, read a block at a time; an unreadable file is a UserError."""
    h = hashlib.sha256()
    try:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
    except OSError as e:
        raise UserError(f'{path}: cannot read ({e.strerror})')
    return h.hexdigest()


def write_csv(path, rows, lineterminator='\r\n'):
    """Rows (the header first) as a CSV file written whole or not at all; csv's default line ends unless given."""
    buf = io.StringIO(newline='')
    csv.writer(buf, lineterminator=lineterminator).writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable JSON file ({e})')


def ensure_writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f'{path}: cannot create the output folder ({e.strerror})')
    if not os.access(path, os.W_OK):
        raise UserError(f'{path}: output folder is not writable')
    return path
