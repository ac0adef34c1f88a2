"""The preference-pair rule of the retrieval follow-up's rankers (SPEC-retrieval.md, section 1).

Each sentence of a split is paired with int(N * 0.1) sentences drawn by the legacy global NumPy generator (seeded 31
per run, one draw per sentence in the table's order, as the reference draws them); a pair is kept when one way of
comparing all their raters' values reaches a share of 0.6: label 1 if the first sentence's raters rated higher.
"""
import numpy as np

SEED, SHARE, MIN_SHARE = 31, 0.1, 0.6
HEADER = ('Sentence1', 'Sentence2', 'PreferLabel')


def preference_pairs(values, progress=False):
    """values: one (R_i,) array of rater values per sentence -> [(i, j, label)], label 1 (i higher) or 0."""
    N = len(values)
    R = max(len(v) for v in values)
    V = np.full((N, R), np.nan)  # (N, R) raters' values, NaN-padded: NaN compares False every way
    for i, v in enumerate(values):
        V[i, :len(v)] = v
    n_raters = np.array([len(v) for v in values], dtype=np.float64)  # (N,)
    np.random.seed(SEED)
    k = int(N * SHARE)
    pairs = []
    from tqdm import tqdm
    for i in tqdm(range(N), desc='preference pairs', unit='sentence', disable=not progress, leave=False):
        js = np.random.choice(N, k, replace=False)  # (k,) partners, i itself possibly among them
        a = values[i][:, None, None]                # (R_i, 1, 1) against (1, k, R)
        b = V[js][None]
        total = len(values[i]) * n_raters[js]       # (k,) rater pairs of each sentence pair
        shares = np.stack([(a > b).sum((0, 2)), (a < b).sum((0, 2)), (a == b).sum((0, 2))], 1) / total[:, None]
        best = shares.argmax(1)                     # (k,) 0: P(>), 1: P(<), 2: P(=); the first of equal maxima
        keep = (shares.max(1) >= MIN_SHARE) & (best < 2)
        pairs += [(i, int(j), 1 if c == 0 else 0) for j, c in zip(js[keep], best[keep])]
    return pairs


def pairs_csv(fnames, pairs):
    """The CSV the reference writes (pandas' to_csv: CRLF lines here as its file has them) as bytes."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf)  # lineterminator '\r\n', as the reference's files
    w.writerow(HEADER)
    w.writerows((fnames[i], fnames[j], lab) for i, j, lab in pairs)
    return buf.getvalue().encode('utf-8')
