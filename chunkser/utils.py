"""The bottom layer: what the reference's utils.py is known for, and the error contract every module raises into.

The dynamic chunk split (the one place of the chunk rule), the CCC loss and metric, the z-normalisation of a
feature matrix; `UserError`, the argparse parser whose mistakes are UserErrors, and the command runner that
turns one into one line and exit 2. It imports numpy only, and no module of the project.
"""
import argparse
import errno
import sys

import numpy as np

DEFAULT_M, DEFAULT_C, DEFAULT_N = 62, 11, 1  # chunk frames (~1 s), chunks, scale
FEAT_DIM = 130  # IS13-ComParE LLDs and their deltas per frame
HOP = 0.016     # seconds per feature frame
SAMPLE_RATE = 16000  # the features are defined on 16 kHz mono audio
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the disk's faults, not the program's


# ----------------------------------------------------------------------------------
# errors

class UserError(Exception):
    """A mistake of the user's (bad path, corrupt file, wrong argument): one line, exit 2."""


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
    except OSError as e:  # a full disk or a read-only folder met where no reader named it: still one line
        if debug or e.errno not in DISK_ERRORS:
            raise
        print(f'error: {e.filename or "writing"}: {e.strerror} (free space or write elsewhere)', file=sys.stderr)
        code = 2
    sys.exit(code or 0)


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors (one line, exit 2), so tests can call main() in-process; every
    command's parser has --debug (run_cli reads it) from here."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument('--debug', action='store_true', help='show tracebacks of user errors')

    def error(self, message):
        raise UserError(f'{self.prog}: {message}')


# ----------------------------------------------------------------------------------
# z-normalisation

def z_normalize(x, mean, std):
    """(T, F) raw features -> (x - mean) / std, NaN -> 0, clipped to [-3, 3] (float64, as the reference)."""
    z = (x - mean) / std
    z[np.isnan(z)] = 0.0
    return np.clip(z, -3.0, 3.0)


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


def chunk_batch(feats, idx, m=DEFAULT_M, C=DEFAULT_C, n=DEFAULT_N):
    """Utterances `idx` of a feature set -> (len(idx)*n*C, m, F) float32 chunks: by index arithmetic straight
    from a FeatureStore's memory map, else through DynamicChunkSplitData."""
    if hasattr(feats, 'gather'):
        return feats.gather(idx, m, C, n)
    return DynamicChunkSplitData([feats[i] for i in idx], m, C, n)


def frame_batch(feats, idx):
    """Utterances `idx` of a feature set -> (len(idx), T_max, F) float32 frames, whole, each padded after its end
    with NaN rows up to the longest: the utterance-level heads' input, which tells padding from frames by the NaN
    (z-normalised features have none: z_normalize maps NaN to 0)."""
    utts = [np.asarray(feats[i], dtype=np.float32) for i in idx]  # (T_i, F) each
    out = np.full((len(utts), max(len(x) for x in utts), utts[0].shape[1]), np.nan, dtype=np.float32)
    for b, x in enumerate(utts):
        out[b, :len(x)] = x
    return out


def model_batch(feats, idx, spec):
    """What the network of `spec` (a model.ModelSpec) reads for utterances `idx`: their chunks (chunk_batch), or
    their whole frames (frame_batch) for an utterance-level head, or their (N, 1) waveforms the same way for an
    audio network (its backbone makes chunks or frames of them)."""
    if spec.reads_frames or spec.reads_audio:
        return frame_batch(feats, idx)
    return chunk_batch(feats, idx, spec.chunk_frames, spec.chunks, spec.scale)


# ----------------------------------------------------------------------------------
# loss and metric

def cc_coef(output, target, population=False):
    """The training loss, 1 - CCC of a batch, with torch's unbiased variances (as the reference); population=True:
    population variances (the Keras original's K.var)."""
    mu_y, mu_p = target.mean(), output.mean()
    cov = ((target - mu_y) * (output - mu_p)).mean()
    c = 0 if population else 1  # Bessel's correction
    return 1 - 2 * cov / (target.var(correction=c) + output.var(correction=c) + (mu_p - mu_y) ** 2)


def evaluation_metrics(true_value, predicted_value):
    """The evaluation CCC over a whole split (population statistics, as the reference)."""
    y = np.asarray(true_value, dtype=np.float64)
    p = np.asarray(predicted_value, dtype=np.float64)
    rho = np.corrcoef(y, p)[0, 1]
    return float(2 * p.std() * y.std() * rho / (p.var() + y.var() + (p.mean() - y.mean()) ** 2))
