"""Files that are never half-written: atomic writes, JSON, locks, sums, output folders."""
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket

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


# ----------------------------------------------------------------------------------
# temporaries of writers that were killed

TEMP_SUFFIX = re.compile(r'\.tmp(\d+)$')  # atomic_writer's and the store's: <name>.tmp<pid>


def pid_alive(pid):
    """Whether a process of this id runs on this machine (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(folder, prefix=''):
    """Remove the <name>.tmp<pid> files and folders in `folder` (names starting with `prefix`) whose writer no
    longer runs: what a killed run left behind. A live writer's are kept. Returns the names removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = TEMP_SUFFIX.search(name)
        if not name.startswith(prefix) or m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        removed.append(name)
    return removed


# ----------------------------------------------------------------------------------
# locks

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


class RunLock:
    """One run at a time on one set of output files: a lock file beside them (e.g. X.lock for X.pth.tar), held
    while the run lives. A second run on the same names is refused in one line naming the running one (its pid,
    host and command line, which the lock file holds); the lock is released when the holder exits, however it
    ends (the kernel drops a dead process's flock), so a killed run never blocks the next. A run that ends removes
    the file (a killed one leaves it, unlocked, for the next to take). A no-op where fcntl is missing."""

    def __init__(self, path, what='a run'):
        self.path, self.what, self.f = path, what, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        while True:
            try:
                f = open(self.path, 'a+')
            except OSError as e:
                raise UserError(f'{self.path}: cannot create the lock of {self.what} ({e.strerror})')
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or 'another process'
                f.close()
                raise UserError(f'{self.path}: {self.what} on these files is running ({holder}); wait for it to end '
                                'or choose other names (--out-dir)')
            if self.still_linked(f):
                break
            f.close()  # the run before removed the file after we opened it: take the lock on the file there now
        f.seek(0)
        f.truncate()
        import sys
        f.write(f'pid {os.getpid()} on {socket.gethostname()}: {" ".join(sys.argv)}\n')
        f.flush()
        self.f = f
        return self

    def still_linked(self, f):
        """The file we hold is the one at the path (not one a finishing run removed while we opened it)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc):
        if self.f is not None:
            with contextlib.suppress(OSError):  # removed while held: a starter that opened it retries (still_linked)
                os.unlink(self.path)
            self.f.close()  # closing releases the lock
            self.f = None


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


def write_csv(path, rows, what='the table', lineterminator='\r\n'):
    """Rows (the header first) as a CSV file written whole or not at all (csv's default line ends unless given); a
    full disk or a folder that refuses it is one line naming the file and `what`."""
    buf = io.StringIO(newline='')
    csv.writer(buf, lineterminator=lineterminator).writerows(rows)
    try:
        atomic_write_bytes(path, buf.getvalue().encode())
    except OSError as e:
        raise UserError(f'{path}: cannot write {what} ({e.strerror})')


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
