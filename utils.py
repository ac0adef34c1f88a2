"""The bottom layer of the chunk-level SER pipeline; it imports no other module of the project.

Corpus reading (label table, split names, `.mat` features, z-norm terms), the dynamic chunk split
(the one place of the chunk rule), the CCC loss and metric, device choice, atomic files and locks,
and the one user-error type with the command-line runner that turns it into one line and exit 2.
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import signal
import sys

import numpy as np
import scipy.io
import torch

ATTRIBUTES = ('Act', 'Dom', 'Val')
LABEL_COLUMN = {'Act': 'EmoAct', 'Dom': 'EmoDom', 'Val': 'EmoVal'}
NORM_FILES = ['feat_norm_means', 'feat_norm_stds'] + \
    [f'{e.lower()}_norm_{s}' for e in ATTRIBUTES for s in ('means', 'stds')]
DEFAULT_M, DEFAULT_C, DEFAULT_N = 62, 11, 1  # chunk frames (~1 s), chunks, scale
FEAT_DIM = 130  # IS13-ComParE LLDs and their deltas per frame
HOP = 0.016     # seconds per feature frame


# ----------------------------------------------------------------------------------
# errors

class UserError(Exception):
    """A mistake of the user's (bad path, corrupt file, wrong argument): one line, exit 2."""


def ignore_sigint():
    """Initializer of worker processes: Ctrl-C is the parent's to handle (it cancels the queue and shuts the
    pool down), so a worker finishes its current item instead of dying mid-write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_cli(main):
    """Run `main(argv)` as a command: a UserError prints one line and exits 2 (traceback with --debug)."""
    debug = '--debug' in sys.argv[1:]
    try:
        code = main(sys.argv[1:])
    except UserError as e:
        if debug:
            raise
        print(f'error: {e}', file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        code = 130
    sys.exit(code or 0)


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors (one line, exit 2) so tests can call main() in-process."""

    def error(self, message):
        raise UserError(f'{self.prog}: {message}')


# ----------------------------------------------------------------------------------
# label table and splits

def read_label_table(path):
    """The corpus CSV as a DataFrame; checks the columns every script needs."""
    import pandas as pd
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f'{path}: label file not found')
    except Exception as e:
        raise UserError(f'{path}: not a readable CSV label table ({type(e).__name__}: {e})')
    for col in ('FileName', 'Split_Set'):
        if col not in df.columns:
            raise UserError(f'{path}: expected a column {col!r} (found {", ".join(map(str, df.columns))})')
    return df


def resolve_split(df, which, path='label table'):
    """'train' | 'validation' | 'test' | an explicit split name -> the name used in Split_Set."""
    names = set(df['Split_Set'].astype(str))
    candidates = {'train': ['Train'], 'validation': ['Validation', 'Development'],
                  'test': ['Test', 'Test1']}.get(which, [which])
    for c in candidates:
        if c in names:
            return c
    raise UserError(f'{path}: no {" or ".join(candidates)} rows in Split_Set '
                    f'(splits present: {", ".join(sorted(names))})')


def split_items(df, split, emo, path='label table'):
    """File names and raw 1..7 labels of one split for one attribute."""
    col = LABEL_COLUMN[emo]
    if col not in df.columns:
        raise UserError(f'{path}: expected a column {col!r} for -emo {emo}')
    rows = df[df['Split_Set'].astype(str) == split]
    if len(rows) == 0:
        raise UserError(f'{path}: split {split!r} is empty')
    labels = rows[col].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(labels)
    if bad.any():
        first = ', '.join(rows['FileName'].astype(str).to_numpy()[bad][:3])
        raise UserError(f'{path}: {bad.sum()} rows of split {split!r} have no {col} label (first: {first})')
    return [str(f) for f in rows['FileName']], labels


def feature_path(feat_dir, fname):
    return os.path.join(feat_dir, os.path.splitext(fname)[0] + '.mat')


def require_feature_files(feat_dir, fnames, split):
    """Every row of a used split needs its feature file: name the first missing one."""
    missing = [f for f in fnames if not os.path.isfile(feature_path(feat_dir, f))]
    if missing:
        raise UserError(f'{feature_path(feat_dir, missing[0])}: feature file of a {split} row not found '
                        f'({len(missing)} missing)')


# ----------------------------------------------------------------------------------
# features and normalisation

def load_mat(path, key='Audio_data'):
    """One variable of a MATLAB file, with one-line errors for missing or corrupt files."""
    try:
        data = scipy.io.loadmat(path, variable_names=[key])
    except FileNotFoundError:
        raise UserError(f'{path}: file not found')
    except Exception as e:
        raise UserError(f'{path}: not a readable .mat file ({type(e).__name__}: {e})')
    if key not in data:
        raise UserError(f'{path}: expected a variable {key!r} in the .mat file')
    return data[key]


def load_features(path, feat_dim=None):
    """An utterance's features without the time column: (T, F) float64."""
    x = load_mat(path)
    if x.ndim != 2 or x.shape[1] < 2 or (feat_dim is not None and x.shape[1] != feat_dim + 1):
        want = f'(T, {feat_dim + 1})' if feat_dim is not None else '(T, 1 + F)'
        raise UserError(f'{path}: Audio_data has shape {x.shape}, expected {want} with the frame time in column 0')
    if x.shape[0] == 0:
        raise UserError(f'{path}: Audio_data has no frames')
    return np.asarray(x[:, 1:], dtype=np.float64)


class NormTerms:
    """The eight z-norm terms of a NormTerm folder: feature mean/std (F,), label mean/std per attribute."""

    def __init__(self, feat_mean, feat_std, labels):
        self.feat_mean = np.asarray(feat_mean, dtype=np.float64).reshape(-1)
        self.feat_std = np.asarray(feat_std, dtype=np.float64).reshape(-1)
        self.labels = {e: (float(m), float(s)) for e, (m, s) in labels.items()}  # emo -> (mean, std)

    @classmethod
    def load(cls, norm_dir):
        if not os.path.isdir(norm_dir):
            raise UserError(f'{norm_dir}: NormTerm folder not found (run norm_para.py, or pass --norm-dir)')
        t = {}
        for name in NORM_FILES:
            path = os.path.join(norm_dir, name + '.mat')
            if not os.path.isfile(path):
                raise UserError(f'{path}: missing z-norm term (expected the eight files norm_para.py writes)')
            t[name] = np.asarray(load_mat(path, 'normal_para'), dtype=np.float64)
        labels = {e: (t[f'{e.lower()}_norm_means'].item(), t[f'{e.lower()}_norm_stds'].item()) for e in ATTRIBUTES}
        return cls(t['feat_norm_means'], t['feat_norm_stds'], labels)

    def save(self, norm_dir):
        os.makedirs(norm_dir, exist_ok=True)
        for name, value in self.arrays().items():
            scipy.io.savemat(os.path.join(norm_dir, name + '.mat'), {'normal_para': value})

    def arrays(self):
        """name -> the array as stored: (1, F) for features, (1, 1) for labels."""
        out = {'feat_norm_means': self.feat_mean[None, :], 'feat_norm_stds': self.feat_std[None, :]}
        for e, (m, s) in self.labels.items():
            out[f'{e.lower()}_norm_means'] = np.array([[m]])
            out[f'{e.lower()}_norm_stds'] = np.array([[s]])
        return out

    def fingerprint(self):
        """A short hash of the terms' values (not of the files' bytes, whose headers hold dates)."""
        h = hashlib.sha256()
        for name, value in sorted(self.arrays().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    @property
    def feat_dim(self):
        return self.feat_mean.shape[0]

    def normalize(self, x):
        """(T, F) raw features -> z-normalised, NaN -> 0, clipped to [-3, 3] (float64, as the reference)."""
        if x.shape[1] != self.feat_dim:
            raise UserError(f'features have {x.shape[1]} columns but the NormTerm has {self.feat_dim}')
        z = (x - self.feat_mean) / self.feat_std
        z[np.isnan(z)] = 0.0
        return np.clip(z, -3.0, 3.0)

    def norm_label(self, y, emo):
        m, s = self.labels[emo]
        return (np.asarray(y, dtype=np.float64) - m) / s

    def denorm_label(self, y, emo):
        m, s = self.labels[emo]
        return np.asarray(y, dtype=np.float64) * s + m


# ----------------------------------------------------------------------------------
# dynamic chunk split

def chunk_step(T, m=DEFAULT_M, k=DEFAULT_C * DEFAULT_N):
    """Frames between consecutive chunk starts for utterances of T frames (an int or an array), k chunks each:
    int((T - m) / (k - 1)), the reference's rule. T < m: the utterance is padded to m first, so 0; one chunk
    (k = 1, where the reference divides by zero): 0."""
    T = np.asarray(T)
    return np.where(T >= m, (T - m) // max(k - 1, 1), 0) if k > 1 else np.zeros_like(T)


def chunk_starts(T, m=DEFAULT_M, C=DEFAULT_C, n=DEFAULT_N):
    """First frame of each of the n*C chunks of an utterance of T >= m frames (after padding): (n*C,)."""
    return np.arange(n * C) * int(chunk_step(T, m, n * C))


def chunk_spans(T, m=DEFAULT_M, C=DEFAULT_C, n=DEFAULT_N):
    """Frames [start, end) of the utterance that each chunk covers: (n*C, 2). An utterance shorter than a chunk
    is padded at the front, so its chunks all cover the whole utterance [0, T)."""
    pad = max(m - T, 0)
    lo = chunk_starts(T + pad, m, C, n) - pad
    return np.stack([np.maximum(lo, 0), np.minimum(lo + m, T)], axis=1)


def pad_to_chunk(x, m=DEFAULT_M):
    """Utterances shorter than a chunk are padded at the front with zeros (the Train mean after
    z-normalisation) up to m frames, so the LSTM's last step still reads the real last frame."""
    T = x.shape[0]
    if T >= m:
        return x
    return np.concatenate([np.zeros((m - T, x.shape[1]), dtype=x.dtype), x], axis=0)


def DynamicChunkSplitData(batch, m=DEFAULT_M, C=DEFAULT_C, n=DEFAULT_N):
    """A list of (T, F) utterances -> (len(batch)*n*C, m, F) chunks in the input's dtype."""
    out = []
    for x in batch:
        x = pad_to_chunk(np.asarray(x), m)
        idx = chunk_starts(x.shape[0], m, C, n)[:, None] + np.arange(m)[None, :]  # (n*C, m)
        out.append(x[idx])  # (n*C, m, F)
    return np.concatenate(out, axis=0)


def chunk_batch(feats, idx, m=DEFAULT_M, C=DEFAULT_C, n=DEFAULT_N, out=None):
    """Utterances `idx` of a feature set -> (len(idx)*n*C, m, F) float32 chunks: by index arithmetic straight
    from a FeatureStore's memory map (into `out` when given), else through DynamicChunkSplitData."""
    if hasattr(feats, 'gather'):
        return feats.gather(idx, m, C, n, out=out)
    return DynamicChunkSplitData([feats[i] for i in idx], m, C, n)


# ----------------------------------------------------------------------------------
# loss and metric

def cc_coef(output, target):
    """The training loss, 1 - CCC of a batch, with torch's unbiased variances (as the reference)."""
    mu_y, mu_p = target.mean(), output.mean()
    cov = ((target - mu_y) * (output - mu_p)).mean()
    return 1 - 2 * cov / (target.var() + output.var() + (mu_p - mu_y) ** 2)


def evaluation_metrics(true_value, predicted_value):
    """The evaluation CCC over a whole split (population statistics, as the reference)."""
    y = np.asarray(true_value, dtype=np.float64)
    p = np.asarray(predicted_value, dtype=np.float64)
    rho = np.corrcoef(y, p)[0, 1]
    return float(2 * p.std() * y.std() * rho / (p.var() + y.var() + (p.mean() - y.mean()) ** 2))


# ----------------------------------------------------------------------------------
# utterance sets

class MatFeatures:
    """Normalised float32 features of a list of utterances, read from their `.mat` files on demand."""

    def __init__(self, feat_dir, fnames, norm):
        self.feat_dir, self.fnames, self.norm = feat_dir, list(fnames), norm

    def __len__(self):
        return len(self.fnames)

    def __getitem__(self, i):
        x = load_features(feature_path(self.feat_dir, self.fnames[i]), self.norm.feat_dim)
        return self.norm.normalize(x).astype(np.float32)  # (T, F)


def iter_batches(order, batch_size, min_last=2):
    """Consecutive batches of `order`; a last batch smaller than `min_last` joins the one before (the CCC of
    one utterance is NaN; under torchrun every process needs a share)."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_last:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def check_features(feat_dir, fnames, feat_dim):
    """Read every feature file once, so a corrupt one is named before training starts."""
    from tqdm import tqdm
    for f in tqdm(fnames, desc='checking features', unit='file', disable=None, leave=False):
        load_features(feature_path(feat_dir, f), feat_dim)


# ----------------------------------------------------------------------------------
# device, seed, files

def select_device(name='auto', tf32=False):
    """auto: CUDA -> MPS -> CPU. On CUDA TF32 stays off unless asked, so numbers match fp32 CPU runs."""
    if name == 'auto':
        if torch.cuda.is_available():
            name = 'cuda'
        elif getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            name = 'mps'
        else:
            name = 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device is available')
    if name == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise UserError('--device mps: no MPS device is available')
    if name == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return torch.device(name)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def default_workers(reserve=0):
    """Worker processes by default: the CPUs less `reserve` kept for this process's own share, 1..8
    (a parent that receives and writes every result, as the feature store's, reserves one)."""
    return max(1, min((os.cpu_count() or 1) - reserve, 8))


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
