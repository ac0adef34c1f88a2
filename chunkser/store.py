"""The feature store: a corpus's z-normalised float32 features in one contiguous file, read by np.memmap.

    python store.py --feat-dir DIR --label-csv FILE --norm-dir ./NormTerm [--store ./feat_store] [--workers N]

One pass over a list of utterances loads each `.mat` file, normalises it exactly as
normterm.NormTerms.normalize does (float64 arithmetic, NaN -> 0, clip to [-3, 3]) and casts it to
float32, the dtype the model reads. The frames of all utterances go, in list order, into

    <store>/<list key>-<state key>/
        features.f32   (sum T_i, F) float32, C order: utterance i is rows offset_i .. offset_i + T_i
                       (features.f16, float16, with --store-dtype float16: half the disk, docs/frontends.md)
        index.npy      (N, 2) int64: offset_i, T_i
        meta.json      feat_dim, frame count, file names, NormTerm fingerprint, build time, format version

There is one store per list of file names (a split: Train, Validation, Test, ...). The folder's
name has two keys: the list key hashes the ordered file names, the state key hashes the feature
folder's path, the NormTerm fingerprint and each file's size and mtime_ns (a stat per file, no
content hashing). A changed feature file or NormTerm gives a new state key, so the store is
rebuilt and the old version of that list removed; a changed label table that changes a split's
file list gives a new list key; label values are not stored here, so they never force a rebuild.

The build writes into a temporary folder and renames it into place, so a crash never leaves a
half store, and a lock file lets several processes (torchrun ranks) share one build.
Memory stays O(batch): the features are file pages of the memory map, not process memory.

What a store holds comes from a *source* (FeatureSource here: .mat files and a NormTerm; audio_store.AudioSource:
wav files): where each utterance's file is, how it is loaded, what its key and meta.json record, and which data
file and reader class it has. The keys, folders, lock, build, rebuild and clean-up are the same for every source.
"""
import hashlib
import multiprocessing as mp
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from .cli import add_corpus_args, require_corpus
from .corpus import MatFeatures, feature_path, load_features, read_label_table, resolve_split, split_files
from .device import default_workers, worker_init
from .files import FileLock, ensure_writable_dir, read_json, remove_stale_temporaries, write_json
from .normterm import NormTerms
from .utils import ArgParser, UserError, chunk_step, run_cli

FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------
# keys: a cheap check of whether a store is current

def list_key(fnames):
    """Hash of the ordered file names: names a store folder (one per split list)."""
    h = hashlib.sha256()
    for f in fnames:
        h.update(f.encode())
        h.update(b'\0')
    return h.hexdigest()[:16]


DTYPES = {'float32': 'features.f32', 'float16': 'features.f16'}  # stored dtype -> its data file


def source_key(source, fnames, dtype='float32'):
    """Hash of what the stored numbers depend on: the source's key (its folder and, for features, the NormTerm
    values), each file's size and mtime_ns, and the stored dtype (float32 stores keep the keys they had before
    float16 existed)."""
    h = hashlib.sha256(f'v{FORMAT_VERSION}|{source.key()}'.encode())
    if dtype != 'float32':
        h.update(f'|{dtype}'.encode())
    for f in fnames:
        path = source.path(f)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UserError(f'{path}: {source.kind} file not found')
        h.update(f'{f}|{st.st_size}|{st.st_mtime_ns}\0'.encode())
    return h.hexdigest()[:16]


def state_key(feat_dir, fnames, norm, dtype='float32'):
    """A feature store's state key: feature folder, NormTerm values, each file's size and mtime_ns, dtype."""
    return source_key(FeatureSource(feat_dir, norm), fnames, dtype)


# ----------------------------------------------------------------------------------
# reading

class DamagedStore(UserError):
    """A store folder whose files do not agree with its meta.json (truncated, missing, edited): open_store rebuilds
    it; opened directly, one line naming what is wrong."""


def _read_index(path, meta, kind='feature', files=DTYPES):
    """meta.json's fields and index.npy checked against each other and the data file's size -> (meta fields,
    offsets (N,), lengths (N,)). kind names the store in messages, files maps its dtypes to data files."""
    try:
        fnames, feat_dim, frames = list(meta['fnames']), int(meta['feat_dim']), int(meta['frames'])
        dtype = meta.get('dtype', 'float32')
        index = np.load(os.path.join(path, 'index.npy'), allow_pickle=False)  # (N, 2) int64
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise DamagedStore(f'{path}: damaged {kind} store ({type(e).__name__}: {e})')
    if dtype not in files or index.shape != (len(fnames), 2) or feat_dim < 1:
        raise DamagedStore(f'{path}: damaged {kind} store (index.npy {index.shape} for {len(fnames)} files)')
    offsets, lengths = index[:, 0].copy(), index[:, 1].copy()  # (N,), (N,)
    if (lengths < 1).any() or not np.array_equal(offsets, np.cumsum(lengths) - lengths) or lengths.sum() != frames:
        raise DamagedStore(f'{path}: damaged {kind} store (index.npy does not cover its {frames} frames)')
    data = os.path.join(path, files[dtype])
    want = frames * feat_dim * np.dtype(dtype).itemsize
    have = os.path.getsize(data) if os.path.isfile(data) else None
    if have != want:
        raise DamagedStore(f'{data}: damaged {kind} store ({have} bytes, expected {want})')
    return (fnames, feat_dim, frames, dtype), offsets, lengths


class MappedStore:
    """The utterances of one store folder, memory-mapped: len(store), store[i] -> (T_i, F) float32, store.fnames.
    A subclass names its kind (in messages) and its data files."""
    kind, files = 'feature', DTYPES

    def __init__(self, path):
        self.path = path
        try:
            meta = read_json(os.path.join(path, 'meta.json'))
        except UserError as e:
            raise DamagedStore(f'damaged {self.kind} store: {e}')
        if not isinstance(meta, dict) or meta.get('version') != FORMAT_VERSION:
            version = meta.get('version') if isinstance(meta, dict) else None
            raise UserError(f'{path}: {self.kind} store format {version}, expected {FORMAT_VERSION}')
        (self.fnames, self.feat_dim, frames, self.dtype), self.offsets, self.lengths = \
            _read_index(path, meta, self.kind, self.files)
        self.data = np.memmap(os.path.join(path, self.files[self.dtype]), dtype=self.dtype, mode='r',
                              shape=(frames, self.feat_dim))  # (sum T, F), pages read on demand

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        o, T = self.offsets[i], self.lengths[i]
        return np.array(self.data[o:o + T], dtype=np.float32)  # (T, F) float32, a private copy like MatFeatures gives


class FeatureStore(MappedStore):
    """Normalised float32 features of a list of utterances, memory-mapped; same item contract as corpus.MatFeatures,
    and gather, the chunk windows of a batch straight from the map."""

    def __init__(self, path):
        super().__init__(path)
        with warnings.catch_warnings():  # torch warns that the map is read-only: gather only reads it
            warnings.simplefilter('ignore', UserWarning)
            self._rows = torch.from_numpy(self.data)  # the same pages, for gather's multi-threaded window copy

    def gather(self, idx, m, C, n):
        """Utterance indices -> their chunks (len(idx)*n*C, m, F) float32, equal to
        utils.DynamicChunkSplitData([self[i] for i in idx], m, C, n), built by index arithmetic
        straight from the memory map."""
        idx = np.asarray(idx, dtype=np.int64)
        k, F = n * C, self.feat_dim  # chunks per utterance
        out = np.empty((len(idx) * k, m, F), dtype=np.float32)
        T, off = self.lengths[idx], self.offsets[idx]  # (B,), (B,)
        step = chunk_step(T, m, k)  # (B,)
        short = T < m  # (B,) padded at the front with zeros (utils.pad_to_chunk): written below
        starts = np.where(short[:, None], 0, off[:, None] + np.arange(k)[None, :] * step[:, None])  # (B, k) map row
        W = self.data.shape[0] - m + 1  # windows of m consecutive rows in the map
        if W > 0:
            # every window as a (W, m, F) view of the map (windows overlap); selecting whole windows copies
            # 32 KB blocks, faster than selecting their rows one by one (BENCHMARKS.md, data pipeline)
            windows = torch.as_strided(self._rows, (W, m, F), (F, F, 1))
            if self.dtype == 'float32':
                torch.index_select(windows, 0, torch.from_numpy(starts.reshape(-1)), out=torch.from_numpy(out))
            else:  # float16 on disk: the model reads float32
                torch.from_numpy(out).copy_(torch.index_select(windows, 0, torch.from_numpy(starts.reshape(-1))))
        if short.any():
            sb = np.flatnonzero(short)  # (S,)
            rel = np.arange(m)[None, :] - (m - T[sb])[:, None]  # (S, m) frame within the utterance, < 0: padding
            rows = self.data[np.maximum(off[sb, None] + rel, 0)]  # (S, m, F)
            rows[rel < 0] = 0.0
            out.reshape(len(idx), k, m, F)[sb] = rows[:, None]  # the same padded chunk k times
        return out


# ----------------------------------------------------------------------------------
# building

class FeatureSource:
    """A feature store's source: each utterance's .mat file (corpus.feature_path), z-normalised by a NormTerm as
    normterm.NormTerms.normalize does, cast to float32 (T, F)."""
    kind, files = 'feature', DTYPES

    def __init__(self, feat_dir, norm):
        self.folder, self.norm, self.feat_dim = feat_dir, norm, norm.feat_dim

    def path(self, fname):
        return feature_path(self.folder, fname)

    def key(self):
        return f'{os.path.realpath(self.folder)}|{self.norm.fingerprint()}'

    def meta(self):  # meta.json's fields of this source (between utterances and fnames)
        return {'feat_dir': os.path.realpath(self.folder), 'norm_fingerprint': self.norm.fingerprint()}

    def load(self, path):
        return self.norm.normalize(load_features(path, self.feat_dim)).astype(np.float32)  # (T, F)

    def open(self, path):
        return FeatureStore(path)


def _load(job):
    source, path = job  # a pool worker's job: the source travels with it (pickled)
    return source.load(path)


def build_store(path, source, fnames, workers=1, progress=True, dtype='float32'):
    """Write the store folder `path` of `source`'s files `fnames` (temporary folder, then rename). Returns its
    store (source.open)."""
    parent = os.path.dirname(path)
    tmp = os.path.join(parent, f'.{os.path.basename(path)}.tmp{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t0 = time.perf_counter()
    index = np.zeros((len(fnames), 2), dtype=np.int64)
    jobs = [(source, source.path(f)) for f in fnames]
    pool = None
    try:
        if workers > 1:
            # not multiprocessing.Pool: its terminate() deadlocks when a worker is still sending a large array
            # after an error (seen here with one corrupt file in a few builds out of ten)
            ctx = mp.get_context('spawn' if os.name == 'nt' else 'fork')
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=worker_init)
            # in list order, a window at a time: results wait in this process when the workers outpace the writer,
            # and the window keeps that (and the peak memory of the build) independent of the corpus size
            window = 64 * workers
            arrays = (x for i in range(0, len(jobs), window)
                      for x in pool.map(_load, jobs[i:i + window], chunksize=8))
        else:
            arrays = map(_load, jobs)
        frames = 0
        with open(os.path.join(tmp, source.files[dtype]), 'wb') as f:
            for i, x in enumerate(tqdm(arrays, total=len(fnames), desc=f'{source.kind} store', unit='utt',
                                       disable=None if progress else True)):
                index[i] = frames, len(x)
                f.write(np.ascontiguousarray(x, dtype=dtype).tobytes())
                frames += len(x)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:  # drop queued files, let the running ones finish (milliseconds)
            pool.shutdown(wait=True, cancel_futures=True)
    np.save(os.path.join(tmp, 'index.npy'), index)
    write_json(os.path.join(tmp, 'meta.json'), {
        'version': FORMAT_VERSION, 'feat_dim': source.feat_dim, 'frames': frames, 'utterances': len(fnames),
        **source.meta(), 'fnames': list(fnames), 'build_seconds': round(time.perf_counter() - t0, 3), 'dtype': dtype})
    if os.path.exists(path):  # another process built it meanwhile (only where the lock is a no-op)
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, path)
    return source.open(path)


def open_source_store(store_dir, source, fnames, workers=None, progress=True, dtype='float32'):
    """The current store of `source`'s files `fnames` under `store_dir`: reused when its keys match, else built
    (and superseded versions of the same list, source and dtype removed). workers: build processes (default: one
    per CPU beside this process's, at most 8; one means inline)."""
    fnames = list(fnames)
    if not fnames:
        raise UserError(f'{store_dir}: no utterances to store (an empty list of files of {source.folder})')
    ensure_writable_dir(store_dir)
    lkey = list_key(fnames)
    if dtype not in source.files:
        raise UserError(f'--store-dtype {dtype}: expected one of {", ".join(source.files)}')
    path = os.path.join(store_dir, f'{lkey}-{source_key(source, fnames, dtype)}')
    with FileLock(os.path.join(store_dir, f'.{lkey}.lock')):
        remove_stale_temporaries(store_dir, f'.{lkey}-')  # the half-built folders of killed builds
        if os.path.isfile(os.path.join(path, 'meta.json')):
            try:
                return source.open(path)
            except DamagedStore as e:  # rebuilt below: the source files are the truth
                print(f'warning: {e}: rebuilding it', file=sys.stderr)
                shutil.rmtree(path, ignore_errors=True)
        # this process receives and writes every array, about a worker's load: it keeps a core of its own
        workers = workers if workers is not None else default_workers(reserve=1)
        try:
            store = build_store(path, source, fnames, workers=min(workers, len(fnames)), progress=progress,
                                dtype=dtype)
        except OSError as e:  # a full disk, a folder that became read-only: nothing half-built stays
            raise UserError(f'{store_dir}: cannot write the {source.kind} store ({e.strerror}); free space there, pass '
                            '--store DIR elsewhere or --no-store')
        # older states of this list, source and dtype (each has its own data file: another source's or dtype's
        # store of the same list may be in use) are no longer current
        for old in os.listdir(store_dir):
            if old.startswith(lkey + '-') and os.path.join(store_dir, old) != path and \
                    os.path.exists(os.path.join(store_dir, old, source.files[dtype])):
                shutil.rmtree(os.path.join(store_dir, old), ignore_errors=True)
    return store


def open_store(store_dir, feat_dir, fnames, norm, workers=None, progress=True, dtype='float32'):
    """The current FeatureStore of `fnames` under `store_dir` (open_source_store of their .mat files normalised by
    `norm`)."""
    return open_source_store(store_dir, FeatureSource(feat_dir, norm), fnames, workers=workers, progress=progress,
                             dtype=dtype)


def open_features(store_dir, feat_dir, fnames, norm, progress=True, dtype='float32'):
    """The features the scripts read: a FeatureStore under `store_dir`, or, with None (--no-store), each
    utterance's .mat file on demand. progress: a bar while a store is built (off on torchrun's other ranks).
    dtype: what the store keeps (--store-dtype; float16 halves its disk, the model still reads float32)."""
    if store_dir is None:
        return MatFeatures(feat_dir, fnames, norm)
    return open_store(store_dir, feat_dir, fnames, norm, progress=progress, dtype=dtype)


# ----------------------------------------------------------------------------------
# command line: build the stores of every split ahead of training

def main(argv=None):
    p = ArgParser(prog='store.py', description=__doc__.split('\n')[0])
    add_corpus_args(p)
    p.add_argument('--splits', default='train,validation,test', help='splits to store (default train,validation,test)')
    p.add_argument('--workers', type=int, default=None, help='build processes (default: CPUs - 1, at most 8)')
    args = p.parse_args(argv)
    require_corpus(args)
    norm = NormTerms.load(args.norm_dir)
    df = read_label_table(args.label_csv)
    if args.store is None:
        raise UserError('store.py: --no-store leaves nothing to build')
    store_dir = args.store  # the scripts' default too, so this pre-builds what they read
    for which in args.splits.split(','):
        split = resolve_split(df, which.strip(), args.label_csv)
        fnames = split_files(df, split)
        t0 = time.perf_counter()
        s = open_store(store_dir, args.feat_dir, fnames, norm, workers=args.workers, dtype=args.store_dtype)
        print(f'{split}: {len(s)} utterances, {int(s.lengths.sum())} frames, '
              f'{os.path.getsize(os.path.join(s.path, DTYPES[s.dtype])) / 2**20:.0f} MiB -> {s.path} '
              f'({time.perf_counter() - t0:.1f} s)')
    return 0


if __name__ == '__main__':
    run_cli(main)
