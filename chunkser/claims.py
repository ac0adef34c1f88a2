"""The measures of the claims study (attention_report.py): where a model's chunk weights or chunk values sit
against the one emotional sentence of an utterance, and the statistics over seeds and utterances.

An utterance of the study has C' chunks and one emotional span [EmoStart, EmoEnd] (seconds). Per utterance:
  share     the share of chunks overlapping the span: the weight mass uniform 1/C' weights put there
  mass      the mass the model's weights (scaled to sum 1) put on those chunks
  beats     the share of within-utterance shuffles of the model's own weights whose mass there is lower than the
            model's (ties count half): 0.5 = no better than its own weights in a random order
  rho_overlap  Spearman, over the chunks, of weight against coverage (each chunk's share of time inside the span)
  rho_signed   Spearman of weight (or, for a seq2seq model, chunk value) against coverage x sign(label - 4), so
               that a calm utterance's emotional chunks should score low and an aroused one's high
Spearman is NaN where either side is constant over the chunks (uniform weights; a span covering every chunk).
"""
import numpy as np
from scipy.stats import rankdata

from .utils import HOP, chunk_spans

SHUFFLES = 2000  # within-utterance shuffles of the control


def chunk_overlap(T, start, end, m, C, n, hop=HOP):
    """Chunks of an utterance of T frames (of `hop` seconds: the front end's) against the span [start, end] in
    seconds -> (overlaps (C',) bool, coverage (C',) the share of each chunk's time inside the span). Chunk k covers
    utils.chunk_spans' frames."""
    a, b = (chunk_spans(T, m, C, n) * hop).T  # (C',), (C',) seconds
    inside = np.clip(np.minimum(b, end) - np.maximum(a, start), 0, None)
    return (a < end) & (b > start), inside / (b - a)


def row_spearman(x, y):
    """Spearman correlation of each row of x with the same row of y, (N, C') -> (N,); NaN for a constant row."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)  # average ranks for ties
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(den > 1e-12, (rx * ry).sum(1) / den, np.nan)


def shuffle_beats(w, ov, shuffles=SHUFFLES, seed=0):
    """(N, C') weights summing to 1 and overlap masks -> (N,) share of within-utterance shuffles of the weights
    whose mass on the overlap is below the observed one, ties (|difference| < 1e-9) counting half."""
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((shuffles, w.shape[1])), axis=1)  # (P, C'), the same shuffles for every row
    shuffled = (w[:, perm] * ov[:, None, :]).sum(-1)  # (N, P, C') -> (N, P)
    d = shuffled - (w * ov).sum(1, keepdims=True)  # (N, P)
    return (d < -1e-9).mean(1) + 0.5 * (np.abs(d) <= 1e-9).mean(1)


def utterance_measures(w, values, ov, cov, labels):
    """One model's chunk weights (N, C') (raw: rescaled here to sum 1), chunk values (N, C') or None, overlap
    masks and coverage (N, C') and 1..7 labels (N,) -> dict of (N,) measures (see the module's text)."""
    w = np.asarray(w, np.float64)
    w = w / w.sum(1, keepdims=True)
    signed = cov * np.sign(np.asarray(labels, np.float64) - 4)[:, None]  # (N, C')
    share, mass = ov.mean(1), (w * ov).sum(1)
    return {'share': share, 'mass': mass, 'diff': mass - share, 'beats': shuffle_beats(w, ov),
            'rho_overlap': row_spearman(w, cov),
            'rho_signed': row_spearman(w if values is None else np.asarray(values, np.float64), signed)}


def se(x):
    """Standard error of the mean of the finite values of x (NaN for fewer than 2)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float('nan')


def nanmean(x):
    x = np.asarray(x, np.float64)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else float('nan')


def summarize(df, measures, by):
    """Per-utterance rows of several seeds -> one row per `by` group: for each measure, the mean over utterances
    of its seed average per utterance (`m`), the standard error over utterances (`m_se`), the spread (standard
    deviation) over seeds of the seeds' own means over utterances (`m_seed_sd`), and `m_n`, the utterances with
    a defined value. df has the columns by + ['seed', 'file'] + measures."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key), seeds=g['seed'].nunique(), n=g['file'].nunique())
        per_utt = g.groupby('file')[measures].mean()  # NaN seeds left out of an utterance's average
        per_seed = g.groupby('seed')[measures].mean()
        for m in measures:
            row[m] = nanmean(per_utt[m])
            row[m + '_se'] = se(per_utt[m])
            row[m + '_seed_sd'] = float(per_seed[m].std(ddof=1)) if per_seed[m].notna().sum() > 1 else float('nan')
            row[m + '_n'] = int(per_utt[m].notna().sum())
        rows.append(row)
    import pandas as pd
    return pd.DataFrame(rows)
