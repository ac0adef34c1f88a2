"""The corpus on disk: the label table and its splits, the feature `.mat` files, utterance sets and batches."""
import os

import numpy as np
import scipy.io

from .utils import UserError

CSV_ORDER = ('Act', 'Val', 'Dom')  # the attributes, in the order of names and columns (arousal, valence, dominance)
ATTRIBUTES = tuple(sorted(CSV_ORDER))  # the reference's order (its -emo choices, its NormTerm files): alphabetical
LABEL_COLUMN = {a: f'Emo{a}' for a in ATTRIBUTES}  # the label table's column of each


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
    _refuse_repeated_files(df, path)
    for col in LABEL_COLUMN.values():  # a label like 'high' or 'inf' is named here, not met as a traceback later
        if col in df.columns:
            df[col] = _numeric_labels(df, col, path)
    return df


def _numeric_labels(df, col, path):
    """A label column as float64: empty cells stay NaN (refused where that attribute is used); text that is not
    a number and infinite values are refused in one line naming the file, line, utterance and value."""
    import pandas as pd
    values = pd.to_numeric(df[col], errors='coerce').astype(np.float64)  # (N,) unreadable -> NaN
    given = df[col].notna() & (df[col].astype(str).str.strip() != '')
    bad = (given & values.isna()) | np.isinf(values)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f'{path}: line {i + 2}: {col} {str(df[col].iloc[i])!r} of {df["FileName"].iloc[i]} is not a '
                        f'finite number (expected a rating, e.g. 1 to 7)')
    return values


def _refuse_repeated_files(df, path):
    """A file listed twice (in one split, or in Train and Validation) trains or validates on it twice, or
    validates on what it trained on: refused in one line naming the file and its two lines."""
    names = df['FileName'].astype(str)
    repeated = names.duplicated(keep=False).to_numpy()
    if repeated.any():
        first = names[repeated].iloc[0]
        lines = np.flatnonzero((names == first).to_numpy())[:2] + 2
        splits = df['Split_Set'].astype(str).to_numpy()[lines - 2]
        raise UserError(f'{path}: {first} is listed twice (line {lines[0]}, {splits[0]}; line {lines[1]}, '
                        f'{splits[1]}): expected each file once ({int(repeated.sum())} rows repeat a file)')


def require_rows(kept, path, split, what):
    """The rows an objective keeps of a split; none left is named here (label file, split and what was asked),
    not met later as an empty feature list."""
    if len(kept) == 0:
        raise UserError(f'{path}: split {split} has no rows {what}')
    return kept


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


def split_rows(df, split):
    """The rows of one split of the label table (Split_Set compared as text), in its order."""
    return df[df['Split_Set'].astype(str) == split]


def split_files(df, split):
    """The file names of one split of the label table, in its order."""
    return [str(f) for f in split_rows(df, split)['FileName']]


def split_items(df, split, emo, path='label table'):
    """File names and raw 1..7 labels of one split for one attribute."""
    col = LABEL_COLUMN[emo]
    if col not in df.columns:
        raise UserError(f'{path}: expected a column {col!r} for -emo {emo}')
    rows = split_rows(df, split)
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
# features

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


class MatFeatures:
    """Normalised float32 features of a list of utterances, read from their `.mat` files on demand."""

    def __init__(self, feat_dir, fnames, norm):
        self.feat_dir, self.fnames, self.norm = feat_dir, list(fnames), norm

    def __len__(self):
        return len(self.fnames)

    def __getitem__(self, i):
        x = load_features(feature_path(self.feat_dir, self.fnames[i]), self.norm.feat_dim)
        return self.norm.normalize(x).astype(np.float32)  # (T, F)


def check_features(feat_dir, fnames, feat_dim):
    """Read every feature file once, so a corrupt one is named before training starts."""
    from tqdm import tqdm
    for f in tqdm(fnames, desc='checking features', unit='file', disable=None, leave=False):
        load_features(feature_path(feat_dir, f), feat_dim)


def iter_batches(order, batch_size, min_last=2):
    """Consecutive batches of `order`; a last batch smaller than `min_last` joins the one before (the CCC of
    one utterance is NaN; under torchrun every process needs a share)."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_last:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches
