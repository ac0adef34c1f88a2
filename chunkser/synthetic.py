"""A synthetic corpus in the MSP-Podcast layout, for tests and the benchmark.

    python synthetic.py --out DIR [--size 300] [--seed 0]

Each utterance is T frames (172..688 by default, 2.75..11 s) of 130 noise features with
column-specific offsets and scales, like raw LLDs. The label (1..7) is carried by one ~1 s
segment (62 frames) at a random place, where a few columns move with the label; the rest of
the utterance says nothing about it, so a model must find the right chunk (with `spread`, other columns
carry the label over the whole utterance too: the sentence is emotional throughout, most in that segment). EmoStart/EmoEnd give the segment in seconds (0.016 s frames). Splits are
about 70/15/15 Train/Validation/Test.
"""
import os

import numpy as np
import pandas as pd
import scipy.io

from .files import atomic_write_bytes
from .utils import HOP, ArgParser, run_cli

SIGNAL_COLS = (3, 17, 42, 77)  # feature columns (0-based, time column excluded) that carry the label (EmoAct)
SPREAD_COLS = (11, 35, 66, 120)  # with spread: the columns that carry EmoAct over the whole utterance
VAL_COLS, DOM_COLS = (5, 23, 50, 90), (8, 30, 60, 100)  # with all_targets: the columns of EmoVal and EmoDom


def quadrant(act, val):
    """all_targets' EmoClass: the (act, val) quadrant around 4 as one of the challenge's letters."""
    return np.where(act >= 4, np.where(val >= 4, 'H', 'A'), np.where(val >= 4, 'N', 'S'))


def make_utterance(rng, T, y, feat_dim=130, seg=62, more=(), spread=0.0, segment=None):
    """(T, 1 + feat_dim) float64 Audio_data: time column, then features; the label lives in one segment.
    `more`: further (columns, label) pairs carried by the same segment. spread: SPREAD_COLS shifted by
    spread * 1.2 * (y - 4) of their scale in every frame. segment: a list that gets (start, end) frames."""
    col_rng = np.random.default_rng(12345)  # the same column offsets/scales in every utterance
    offset, scale = col_rng.normal(0, 20, feat_dim), col_rng.uniform(0.1, 5, feat_dim)
    x = offset + scale * rng.standard_normal((T, feat_dim))
    seg = min(seg, T)
    start = rng.integers(0, T - seg + 1)
    if segment is not None:
        segment[:] = [int(start), int(start + seg)]
    if spread:
        cols = list(SPREAD_COLS)
        x[:, cols] += scale[cols] * spread * 1.2 * (y - 4)
    for cols, v in ((SIGNAL_COLS, y), *more):
        cols = list(cols)
        x[start:start + seg, cols] = offset[cols] + scale[cols] * (1.2 * (v - 4) + 0.3 * rng.standard_normal((seg, len(cols))))
    t = np.arange(T)[:, None] * HOP
    return np.concatenate([t, x], axis=1)


def write_corpus(out_dir, size=300, seed=0, min_frames=172, max_frames=688, feat_dim=130, splits=(0.7, 0.15, 0.15),
                 all_targets=False, spread=0.0):
    """Writes OUT/feat_mat/*.mat and OUT/labels_concensus.csv; returns (feat_dir, label_csv). Only EmoAct is
    audible unless all_targets: then EmoVal and EmoDom too, and EmoClass is the (act, val) quadrant (A S H N)."""
    rng = np.random.default_rng(seed)
    feat_dir = os.path.join(out_dir, 'feat_mat')
    os.makedirs(feat_dir, exist_ok=True)
    n_train, n_val = int(round(splits[0] * size)), int(round(splits[1] * size))
    rows = []
    for i in range(size):
        split = 'Train' if i < n_train else 'Validation' if i < n_train + n_val else 'Test'
        act, dom, val = rng.uniform(1, 7, 3)
        T = int(rng.integers(min_frames, max_frames + 1))
        name = f'synth_{i:05d}.wav'
        more = ((VAL_COLS, val), (DOM_COLS, dom)) if all_targets else ()
        segment = []
        scipy.io.savemat(os.path.join(feat_dir, name[:-4] + '.mat'), {'Audio_data': make_utterance(
            rng, T, act, feat_dim, more=more, spread=spread, segment=segment)})
        rows.append({'FileName': name, 'EmoClass': str(quadrant(act, val)) if all_targets else 'X',
                     'EmoAct': act, 'EmoVal': val, 'EmoDom': dom,
                     'SpkrID': i % 17, 'Gender': 'Female' if i % 2 else 'Male', 'Split_Set': split,
                     'EmoStart': segment[0] * HOP, 'EmoEnd': segment[1] * HOP})
    label_csv = os.path.join(out_dir, 'labels_concensus.csv')
    atomic_write_bytes(label_csv, pd.DataFrame(rows).to_csv(index=False).encode())
    return feat_dir, label_csv


def main(argv=None):
    p = ArgParser(prog='synthetic.py', description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--size', type=int, default=300, help='utterances (default 300)')
    p.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    p.add_argument('--all-targets', action='store_true', help='EmoVal, EmoDom and EmoClass audible too')
    args = p.parse_args(argv)
    feat_dir, label_csv = write_corpus(args.out, args.size, args.seed, all_targets=args.all_targets)
    print(f'wrote {args.size} utterances: --feat-dir {feat_dir} --label-csv {label_csv}')
    return 0


if __name__ == '__main__':
    run_cli(main)
