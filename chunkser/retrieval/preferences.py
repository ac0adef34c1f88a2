"""The preference-pair rule of the retrieval follow-up's rankers (docs/retrieval.md).

Each sentence of a split is paired with int(N * 0.1) sentences drawn by the legacy global NumPy generator (seeded 31
per run, one draw per sentence in the table's order, as the reference draws them); a pair is kept when one way of
comparing all their raters' values reaches a share of 0.6: label 1 if the first sentence's raters rated higher.
"""
import os

import numpy as np

from .ranks import SPLIT_FILES

SEED, SHARE, MIN_SHARE = 31, 0.1, 0.6
HEADER = ('Sentence1', 'Sentence2', 'PreferLabel')
PAIR_SPLITS = ('Train', 'Validation')  # the splits of a ranker's pair files, the reference's two


def pair_file(folder, split, emo):
    """A split's preference pairs in `folder`: {training,validation}_pairs_{emo}.csv (the reference's prefixes)."""
    return os.path.join(folder, f'{SPLIT_FILES[split]}_pairs_{emo}.csv')


def preference_pairs(values, progress=False):
    """values: one (R_i,) array of rater values per sentence -> (P, 3) int32 rows (i, j, label), label 1 (i's raters
    higher) or 0, in the reference's order (sentence i, then its partners as drawn)."""
    N = len(values)
    R = max(len(v) for v in values)
    V = np.full((N, R), np.nan)  # (N, R) raters' values, NaN-padded: NaN compares False every way
    for i, v in enumerate(values):
        V[i, :len(v)] = v
    n_raters = np.array([len(v) for v in values], dtype=np.float64)  # (N,)
    np.random.seed(SEED)
    k = int(N * SHARE)
    rows = []  # int32 arrays, not tuples: a corpus split of 40k sentences keeps ~10^8 pairs
    from tqdm import tqdm
    for i in tqdm(range(N), desc='preference pairs', unit='sentence', disable=not progress, leave=False):
        js = np.random.choice(N, k, replace=False)  # (k,) partners, i itself possibly among them
        a = values[i][:, None, None]                # (R_i, 1, 1) against (1, k, R)
        b = V[js][None]
        total = len(values[i]) * n_raters[js]       # (k,) rater pairs of each sentence pair
        shares = np.stack([(a > b).sum((0, 2)), (a < b).sum((0, 2)), (a == b).sum((0, 2))], 1) / total[:, None]
        best = shares.argmax(1)                     # (k,) 0: P(>), 1: P(<), 2: P(=); the first of equal maxima
        keep = (shares.max(1) >= MIN_SHARE) & (best < 2)
        rows.append(np.stack([np.full(keep.sum(), i), js[keep], best[keep] == 0], 1).astype(np.int32))
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int32)


def write_pairs_csv(path, fnames, pairs, block=100_000):
    """The CSV the reference writes (CRLF lines, as its files have them), atomically, streamed in blocks of rows."""
    import csv
    import io
    from ..files import atomic_writer
    names = np.asarray(fnames, dtype=object)
    with atomic_writer(path) as f:
        for start in range(0, max(len(pairs), 1), block):
            buf = io.StringIO()
            w = csv.writer(buf)  # lineterminator '\r\n'
            if start == 0:
                w.writerow(HEADER)
            p = pairs[start:start + block]
            w.writerows(zip(names[p[:, 0]], names[p[:, 1]], p[:, 2].tolist()))
            f.write(buf.getvalue().encode('utf-8'))
