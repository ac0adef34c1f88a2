"""The openSMILE front end: audio -> the IS13-ComParE LLD features the corpus ships, one file or a folder.

`Audio_data` is a (T, 131) float64 array: column 0 the frame time (frame index x 0.016 s), then the 65
IS13-ComParE low-level descriptors and their 65 deltas from openSMILE with both framers at 32 ms / 16 ms (the
stock config's 60 ms and 25 ms framers changed, as the corpus's features were made). Audio is down-mixed by
averaging its channels and resampled to 16 kHz first.
feature_extraction.py is its command line; predict.py and the demo builder call it directly.
"""
import concurrent.futures
import hashlib
import io
import math
import os
import tempfile
import warnings

import numpy as np
import scipy.io
from tqdm import tqdm

from ..device import default_workers, worker_init
from ..files import atomic_write_bytes, ensure_writable_dir, remove_stale_temporaries
from ..utils import HOP, SAMPLE_RATE, UserError

FRAME_SAMPLES = 512          # one 32 ms frame: shorter audio gives no frame at all
AUDIO_EXTENSIONS = ('.wav', '.flac')

# Both framers of the shipped IS13-ComParE config at 32 ms / 16 ms instead of 60/10 and 20/10 ms.
# Sections given again after the include override only the fields they name.
CONFIG_TEMPLATE = r"""
\{{{base}}}

[is13_frame60:cFramer]
frameSize = 0.032
frameStep = 0.016

[is13_frame25:cFramer]
frameSize = 0.032
frameStep = 0.016
"""

_SMILES = None  # per process: (lld, lld_de) extractors, built on first use


def _config_file():
    """Write our config once into the temp folder; its name carries a hash of its text, so workers
    (and later runs) share one file and a changed opensmile install gets a new one."""
    import opensmile
    base = os.path.join(os.path.dirname(opensmile.__file__), 'core', 'config', 'is09-13', 'IS13_ComParE.conf')
    if not os.path.isfile(base):
        raise RuntimeError(f'{base}: IS13_ComParE.conf not found in the installed opensmile package')
    text = CONFIG_TEMPLATE.format(base=base)
    path = os.path.join(tempfile.gettempdir(), f'ser_is13_32ms_{hashlib.sha256(text.encode()).hexdigest()[:12]}.conf')
    if not os.path.isfile(path):
        atomic_write_bytes(path, text.encode())
    return path


def _smiles():
    global _SMILES
    if _SMILES is None:
        import opensmile  # heavy (pandas, audinterface): imported only where features are made
        conf = _config_file()
        _SMILES = tuple(opensmile.Smile(feature_set=conf, feature_level=level) for level in ('lld', 'lld_de'))
    return _SMILES


# ----------------------------------------------------------------------------------
# one file

def load_audio(path):
    """Any .wav/.flac -> (N,) float64 mono at 16 kHz: channels averaged, then resampled."""
    import soundfile  # installed with opensmile (through audiofile)
    if not os.path.isfile(path):
        raise UserError(f'{path}: audio file not found')
    try:
        x, sr = soundfile.read(path, dtype='float64', always_2d=True)  # (N, channels)
    except Exception as e:
        reason = getattr(e, 'error_string', None) or f'{type(e).__name__}: {e}'  # libsndfile's own words
        raise UserError(f'{path}: not a readable audio file ({reason})')
    bad = ~np.isfinite(x).all(axis=1)  # (N,) a float file may hold NaN or infinite samples
    if bad.any():
        raise UserError(f'{path}: {int(bad.sum())} of {len(x)} samples are NaN or infinite (first at '
                        f'{np.flatnonzero(bad)[0] / sr:.3f} s); expected finite audio')
    x = x.mean(axis=1)  # (N,)
    if sr != SAMPLE_RATE:
        import scipy.signal  # only resampling pays for it
        g = math.gcd(SAMPLE_RATE, int(sr))
        x = scipy.signal.resample_poly(x, SAMPLE_RATE // g, int(sr) // g)
    return x


def features_from_signal(x):
    """(N,) 16 kHz mono samples in [-1, 1] -> (T, 131) float64 features (time column first)."""
    if len(x) < FRAME_SAMPLES:
        raise ValueError(f'{len(x) / SAMPLE_RATE * 1000:.0f} ms of audio, shorter than one 32 ms frame')
    # openSMILE reads 16-bit samples and the opensmile package truncates floats to int16; rounding
    # (and clipping) to the 16-bit grid here makes that step exact, so 16-bit files match bit for bit.
    x = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768), -32768, 32767).astype(np.float32) / 32768
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # opensmile's pandas/audinterface chatter
        lld, lld_de = (s.process_signal(x, SAMPLE_RATE).to_numpy() for s in _smiles())  # (T1, 65), (T2, 65)
    # the two levels can differ by a frame or two: align on the first frame, cut to the shorter
    T = min(len(lld), len(lld_de))
    t = np.arange(T, dtype=np.float64)[:, None] * HOP  # (T, 1)
    return np.concatenate([t, lld[:T], lld_de[:T]], axis=1).astype(np.float64)  # (T, 131)


def extract_features(path):
    """An audio file (any rate, any channels) -> (T, 131) float64, as stored in `Audio_data`."""
    x = load_audio(path)
    try:
        return features_from_signal(x)
    except ValueError as e:
        raise UserError(f'{path}: {e}')


def save_features(feats, out_path):
    buf = io.BytesIO()
    scipy.io.savemat(buf, {'Audio_data': feats})
    atomic_write_bytes(out_path, buf.getvalue())


# ----------------------------------------------------------------------------------
# a folder

def find_audio(wav_dir):
    """All audio files under wav_dir, sorted (so runs and reports are reproducible)."""
    found = []
    for root, dirs, files in os.walk(wav_dir):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(AUDIO_EXTENSIONS)]
    return found


def _extract_one(job, features=extract_features):
    """Worker: (audio path, .mat path) -> None, or the error message (never raises, so others go on)."""
    path, out_path = job
    try:
        save_features(features(path), out_path)
        return None
    except UserError as e:
        return str(e)
    except Exception as e:  # openSMILE or disk trouble with one file must not stop the run
        return f'{path}: {type(e).__name__}: {e}'


def clean_interrupted(out_dir, verbose=True):
    """Remove the half-written .mat.tmp<pid> files of a run that was killed (a live run's are kept)."""
    stale = remove_stale_temporaries(out_dir)
    if verbose and stale:
        print(f'{len(stale)} temporary file(s) of an interrupted run removed from {out_dir}')


def extract_folder(wav_dir, out_dir, workers=None, verbose=True, features=None):
    """Extract every audio file under wav_dir into out_dir/<stem>.mat; returns [(path, error)] of the failures.
    features: another front end's audio path -> Audio_data (frontend.py's), run in this process."""
    if not os.path.isdir(wav_dir):
        raise UserError(f'{wav_dir}: audio folder not found')
    paths = find_audio(wav_dir)
    if not paths:
        raise UserError(f'{wav_dir}: no {" or ".join(AUDIO_EXTENSIONS)} files found (searched recursively)')
    ensure_writable_dir(out_dir)
    clean_interrupted(out_dir, verbose)
    workers = workers or default_workers()

    # the output folder is flat: two inputs with one stem would overwrite each other, so neither is written
    by_stem = {}
    for p in paths:
        by_stem.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
    failures, jobs = [], []
    for stem, group in by_stem.items():
        if len(group) > 1:
            failures += [(p, f'{p}: another input has the same name {stem} ({", ".join(q for q in group if q != p)}); '
                          f'both would be {stem}.mat') for p in group]
            continue
        out_path = os.path.join(out_dir, stem + '.mat')
        if not os.path.exists(out_path):
            jobs.append((group[0], out_path))
    skipped = len(paths) - len(jobs) - len(failures)
    if verbose and skipped:
        print(f'{skipped} of {len(paths)} files already have a .mat in {out_dir}: skipped')

    collisions = len(failures)
    bar = tqdm(total=len(jobs), desc='features', unit='file', disable=None if verbose else True)
    if features is not None or workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            err = _extract_one(job, features or extract_features)
            if err:
                failures.append((job[0], err))
            bar.update()
    else:
        pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), initializer=worker_init)
        try:
            futures = {pool.submit(_extract_one, job): job for job in jobs}
            for fut in concurrent.futures.as_completed(futures):
                path = futures[fut][0]
                try:
                    err = fut.result()
                except Exception as e:  # a worker died (e.g. a crash inside openSMILE)
                    err = f'{path}: worker failed ({type(e).__name__}: {e})'
                if err:
                    failures.append((path, err))
                bar.update()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    bar.close()
    failures.sort()
    if verbose:
        print(f'{len(jobs) - (len(failures) - collisions)} written, {skipped} skipped, '
              f'{len(failures)} failed (of {len(paths)} files) -> {out_dir}')
    return failures
