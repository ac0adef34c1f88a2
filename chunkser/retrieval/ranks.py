"""Chunk ranks inside each sentence and the emotion curves made from them (Lin & Busso, TASLP 2023;
docs/retrieval.md): ranking with an emotion ranker, the rank files retrieval.py writes and the seq2seq
training reads, generate_chunk_EmoSeq.

A rank file is the reference's JSON, {file name: {"ChunkRankSeq": [C' ranks]}}, rank 1 = the chunk that won the most
pairs; X.provenance.json beside it says what produced it (the ranker, its sha256 and attribute, the corpus).
"""
import json
import os
import sys

import numpy as np
import torch

from ..files import atomic_write_bytes, ensure_writable_dir
from ..utils import UserError, chunk_batch

OUT_DIR = './EmoChunkRankSeq'
SPLIT_FILES = {'Train': 'training', 'Validation': 'validation', 'Development': 'validation', 'Test': 'testing'}


def rank_file(ranks_dir, split, emo):
    """Where retrieval.py writes a split's ranks: {ranks_dir}/{training,validation,testing}_{emo}.json."""
    return os.path.join(ranks_dir, f'{SPLIT_FILES.get(split, split.lower())}_{emo}.json')


# ----------------------------------------------------------------------------------
# ranks from a ranker

def first_identical(x, k):
    """x: (U*k, m, F) chunks, k per utterance -> (U*k,) index of the first chunk of the same utterance with the
    same features (itself when none). Rows of one batched LSTM call can round differently (seen on oneDNN), so
    identical chunks must share one encoding to tie exactly, as in the reference's one-pair-per-call loop."""
    N = x.shape[0]
    flat = x.reshape(N, -1)  # (N, m*F)
    # integer sums of the float bits: exact whatever the summation order, so identical rows hash alike
    key = flat.contiguous().view(torch.int32).sum(1, dtype=torch.int64).reshape(-1, k)  # (U, k)
    first = (key[:, :, None] == key[:, None, :]).int().argmax(-1)  # (U, k) first chunk j with an equal hash
    first = (first + torch.arange(0, N, k, device=x.device)[:, None]).reshape(-1)  # (N,) global index
    same = (flat == flat[first]).all(1)  # (N,) a hash collision keeps its own chunk
    return torch.where(same, first, torch.arange(N, device=x.device))


@torch.no_grad()
def rank_chunks(model, x):
    """x: (U*C', m, F) chunks of U utterances -> wins (U, C') int64 (0..C'-1) and ranks (U, C') int64 (1..C').
    win(p, q) = argmax softmax(f(c_p) - f(c_q)), an exact tie -> class 0; rank = pandas' rank(method='min',
    ascending=False) of the wins."""
    k = model.spec.chunks_per_utterance
    first = first_identical(x, k)  # (N,)
    own = first == torch.arange(len(first), device=x.device)  # (N,) the chunks encoded: one per distinct chunk
    slot = torch.cumsum(own, 0) - 1  # (N,) row of an encoded chunk among the encoded ones
    f = model.chunk_scores(x[own])[slot[first]].reshape(-1, k, 2)  # (U, C', 2) copies for identical chunks
    pair = torch.softmax(f[:, :, None, :] - f[:, None, :, :], dim=-1)  # (U, C', C', 2): pair (p, q) as the reference
    win = pair[..., 1] > pair[..., 0]  # (U, C', C') class 1 only when strictly more probable; p == q is a tie
    wins = win.sum(-1)  # (U, C')
    ranks = (wins[:, None, :] > wins[:, :, None]).sum(-1) + 1  # (U, C'): 1 + chunks with more wins
    return wins, ranks


def rank_utterances(model, utterances, device='cpu', batch_size=64, progress=False):
    """Normalised (T, F) utterances (a list, MatFeatures or a FeatureStore) -> wins and ranks (N, C') int.
    progress: a bar over the sentences on stderr (shown on a terminal only)."""
    from tqdm import tqdm
    s = model.spec
    wins, ranks = [], []
    bar = tqdm(total=len(utterances), desc='ranking', unit='sentence', disable=None if progress else True, leave=False)
    for i in range(0, len(utterances), batch_size):
        idx = np.arange(i, min(i + batch_size, len(utterances)))
        x = torch.from_numpy(chunk_batch(utterances, idx, s.chunk_frames, s.chunks, s.scale)).to(device)  # (b*C', m, F)
        w, r = rank_chunks(model, x)
        wins.append(w.cpu().numpy())
        ranks.append(r.cpu().numpy())
        bar.update(len(idx))
    bar.close()
    k = s.chunks_per_utterance
    return (np.concatenate(wins) if wins else np.zeros((0, k), int)), (np.concatenate(ranks) if ranks else np.zeros((0, k), int))


# ----------------------------------------------------------------------------------
# the emotion curve (docs/retrieval.md)

def generate_chunk_EmoSeq(mu, std, ranks):
    """Ranks (C',) and the raters' (mean, population std) -> the chunk-level emotion curve (C',) float64: a trend
    that steps down where the rank rises (less emotional), smoothed by a 3-point moving average (ends kept),
    rescaled to mean mu and std std. std == 0, or a flat trend: mu everywhere."""
    r = np.asarray(ranks)
    if std == 0:
        return np.full(len(r), float(mu))
    t = np.concatenate([[0], np.cumsum(-np.sign(np.diff(r)))]).astype(np.float64)  # (C',) t_1 = 0
    s = np.concatenate([t[:1], np.convolve(t, np.ones(3) / 3, 'valid'), t[-1:]])  # (C',)
    if s.std() == 0:
        return np.full(len(r), float(mu))
    return mu + (s - s.mean()) * std / s.std()



# ----------------------------------------------------------------------------------
# rank files

def write_ranks(path, fnames, ranks):
    """The reference's JSON layout (json.dump with indent 4), written atomically; '-' is stdout."""
    text = json.dumps({f: {'ChunkRankSeq': [int(r) for r in row]} for f, row in zip(fnames, ranks)}, indent=4)
    if path == '-':
        sys.stdout.write(text + '\n')
        return
    ensure_writable_dir(os.path.dirname(path) or '.')
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as e:
        raise UserError(f'{path}: cannot write the rank sequences ({e.strerror})')


def provenance_path(out):
    """Where the provenance of the rank JSON `out` goes: X.json -> X.provenance.json, beside it."""
    stem = out[:-len('.json')] if out.endswith('.json') else out
    return stem + '.provenance.json'



def read_provenance(path):
    """X.provenance.json of the rank file X.json as a dict; {} when there is none (ranks written elsewhere)."""
    p = provenance_path(path)
    if not os.path.isfile(p):
        return {}
    try:
        with open(p) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f'{p}: not a readable provenance file ({type(e).__name__})')
    return info if isinstance(info, dict) else {}


def read_ranks(path, fnames, k, emo):
    """The rank sequences of `fnames` from a rank file: (N, k) int64. Refuses, in one line, a missing or unreadable
    file, one of another attribute (its provenance), a file of the split without a sequence, and a sequence that is
    not k ranks in 1..k (whole numbers: true, 1.0, 1e999 and Infinity are not ranks)."""
    if not os.path.isfile(path):
        raise UserError(f'{path}: not found (write it with retrieval.py -set SPLIT -emo {emo} --checkpoint RANKER)')
    info = read_provenance(path)
    if info.get('emo', emo) != emo:
        raise UserError(f'{path}: ranks of {info["emo"]} (its provenance), not of -emo {emo}')
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable rank file ({type(e).__name__}; expected retrieval.py\'s JSON)')
    if not isinstance(table, dict):
        raise UserError(f'{path}: expected {{file name: {{"ChunkRankSeq": [ranks]}}}}')
    missing = [f for f in fnames if f not in table]
    if missing:
        raise UserError(f'{path}: no rank sequence for {len(missing)} file(s) of the split (first: {missing[0]}); '
                        f'expected ranks of every one (a rank file of another corpus or split?)')
    out = np.zeros((len(fnames), k), dtype=np.int64)
    for i, f in enumerate(fnames):
        seq = table[f].get('ChunkRankSeq') if isinstance(table[f], dict) else None
        if not isinstance(seq, list) or len(seq) != k or not all(type(r) is int and 1 <= r <= k for r in seq):
            got = 'no ChunkRankSeq list' if not isinstance(seq, list) else \
                f'{len(seq)} values' if len(seq) != k else f'{seq!r}'
            raise UserError(f'{path}: {f}: expected a ChunkRankSeq of {k} ranks in 1..{k} (the model\'s chunks per '
                            f'sentence), found {got}')
        out[i] = seq
    return out
