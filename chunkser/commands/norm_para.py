"""Z-normalisation terms from the Train split: eight NormTerm .mat files in the reference's format.

    python norm_para.py --feat-dir DIR --label-csv FILE --norm-dir ./NormTerm [--force]

Feature means and standard deviations (ddof 0) are taken over every frame of every Train
utterance (time column dropped); frames holding NaN or Inf are left out of the sums. Label
terms are over the Train rows' EmoAct / EmoDom / EmoVal.
"""
import os

import numpy as np
from tqdm import tqdm

from ..cli import add_corpus_args, require_corpus
from ..corpus import (ATTRIBUTES, LABEL_COLUMN, feature_path, load_features, read_label_table, require_feature_files,
                    resolve_split, split_rows)
from ..normterm import NORM_FILES, NormTerms
from ..utils import ArgParser, UserError, run_cli


def parse_args(argv):
    p = ArgParser(prog='norm_para.py', description=__doc__.split('\n')[0])
    add_corpus_args(p)
    p.add_argument('--force', action='store_true', help='overwrite a NormTerm folder that holds different terms')
    return p.parse_args(argv)


def feature_moments(paths):
    """Mean and population std (F,) over all finite frames, merged file by file (Chan et al.) in float64."""
    n, mean, m2 = 0, None, None
    for path in tqdm(paths, desc='norm_para', unit='utt', disable=None):
        x = load_features(path)  # (T, F)
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) == 0:
            continue
        if mean is None:
            mean, m2 = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        if x.shape[1] != mean.shape[0]:
            raise UserError(f'{path}: {x.shape[1]} feature columns, expected {mean.shape[0]} like the other files')
        nb, mb = len(x), x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta ** 2 * n * nb / tot
        n = tot
    if n == 0:
        raise UserError('no finite feature frames in the Train split')
    return mean, np.sqrt(m2 / n)


def compute_terms(df, feat_dir, label_csv):
    train = resolve_split(df, 'train', label_csv)
    rows = split_rows(df, train)
    fnames = [str(f) for f in rows['FileName']]
    require_feature_files(feat_dir, fnames, train)
    paths = [feature_path(feat_dir, f) for f in fnames]
    mean, std = feature_moments(paths)
    labels = {}
    for e in ATTRIBUTES:
        col = LABEL_COLUMN[e]
        if col not in df.columns:
            raise UserError(f'{label_csv}: expected a column {col!r}')
        y = rows[col].to_numpy(dtype=np.float64)
        y = y[np.isfinite(y)]
        labels[e] = (y.mean(), y.std()) if len(y) else (0.0, 1.0)
    return NormTerms(mean, std, labels)


def main(argv=None):
    args = parse_args(argv)
    require_corpus(args)
    df = read_label_table(args.label_csv)
    terms = compute_terms(df, args.feat_dir, args.label_csv)
    if all(os.path.isfile(os.path.join(args.norm_dir, f + '.mat')) for f in NORM_FILES):
        old = NormTerms.load(args.norm_dir)
        same = old.feat_dim == terms.feat_dim and all(
            np.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(old.arrays().values(), terms.arrays().values()))
        if same:
            print(f'{args.norm_dir}: terms unchanged ({terms.fingerprint()})')
            return 0
        if not args.force:
            raise UserError(f'{args.norm_dir}: holds different z-norm terms; pass --force to overwrite them')
    terms.save(args.norm_dir)
    print(f'wrote 8 z-norm terms to {args.norm_dir} (fingerprint {terms.fingerprint()}, {terms.feat_dim} features)')
    return 0


if __name__ == '__main__':
    run_cli(main)
