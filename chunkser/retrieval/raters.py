"""The raters of each file: MSP-Podcast's detailed labels, in any of the layouts its releases used, read into one
structure, file -> {rater: {attribute: value}} (raters in the file's order).

| release     | file                   | columns                                                                  |
| v1.6        | `labels_detailed.json` | `{file: {rater: {EmoAct, EmoVal, EmoDom, EmoClass}}}`                     |
| v1.6        | `labels_detailed.csv`  | FileName, Workers, EmoClass_Major, EmoClass_Second, EmoAct, EmoVal, EmoDom |
| v1.7-v1.12  | `labels_detailed.csv`  | FileName, EmoDetail = `WORKERnnnn; <major>; <secondaries>; A:x; V:x; D:x;` |
| v2.0        | `labels_detailed.csv`  | FileName, WorkerID, EmoClass_Major, EmoClass_Second, EmoAct, EmoVal, EmoDom |

The CSV layouts hold one row per (file, rater). A rater listed twice for a file: the last rating counts (a warning
names how many). The preference labels use the raters' values; the seq2seq training their mean and std.
"""
import json
import math
import sys

import numpy as np

from ..corpus import CSV_ORDER, LABEL_COLUMN
from ..utils import UserError

ATTRS = tuple(LABEL_COLUMN[a] for a in CSV_ORDER)
# the CSV layouts: rater column -> the release that named it so (value columns are the same in both)
RATER_COLUMN = {'Workers': 'v1.6', 'WorkerID': 'v2.0'}
DETAIL_KEY = {'A': 'EmoAct', 'V': 'EmoVal', 'D': 'EmoDom'}  # EmoDetail's "A:x; V:x; D:x;"


class BadRating(ValueError):
    """A rating that is there but is no finite number (text, true/false, Infinity, 1e999)."""


def _number(v):
    """A rating as float; None where there is none (missing, null, empty, NaN). A value that is given but is not a
    finite number (text, true/false, Infinity, 1e999) raises BadRating: the readers name the file, utterance and
    rater."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BadRating(repr(v))
    try:
        x = float(v)
    except ValueError:
        raise BadRating(repr(v))
    if math.isnan(x):
        return None
    if math.isinf(x):
        raise BadRating(repr(v))
    return x


def _rating(path, fname, rater, values):
    """{attribute: raw value} -> {attribute: float or None}; a bad value is one line naming where it is."""
    out = {}
    for a in ATTRS:
        try:
            out[a] = _number(values.get(a))
        except BadRating as e:
            raise UserError(f'{path}: {fname}: rater {rater}: {a} {e} is not a finite number (expected a rating, '
                            'e.g. 1 to 7, or nothing)')
    return out


class _Raters:
    """Collects ratings, the last of a duplicated (file, rater) winning, and counts the duplicates."""

    def __init__(self):
        self.files, self.dups = {}, 0

    def add(self, fname, rater, rating):
        raters = self.files.setdefault(fname, {})
        if rater in raters:
            self.dups += 1
            del raters[rater]  # the last rating counts, in the place it was given
        raters[rater] = rating

    def done(self, path):
        if self.dups:
            print(f'warning: {path}: {self.dups} rating(s) of a rater listed twice for a file: the last one counts',
                  file=sys.stderr)
        return self.files


def _is_obj(v):
    """A JSON object as object_pairs_hook=list reads it: a list of (key, value) tuples."""
    return isinstance(v, list) and all(isinstance(x, tuple) for x in v)


def _read_json(path):
    out = _Raters()

    try:  # objects as (key, value) lists: json.load would keep the last of a repeated rater silently; we warn
        with open(path, encoding='utf-8-sig') as f:
            doc = json.load(f, object_pairs_hook=list)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f'{path}: not a readable JSON labels_detailed file ({e})')
    if not _is_obj(doc) or not all(_is_obj(v) for _, v in doc):
        raise UserError(f'{path}: expected the v1.6 layout {{file: {{rater: {{EmoAct, EmoVal, EmoDom, EmoClass}}}}}}')
    for fname, raters in doc:
        for rater, rating in raters:
            if not _is_obj(rating):
                raise UserError(f'{path}: {fname}: rater {rater} is not an object of EmoAct, EmoVal, EmoDom')
            rating = dict(rating)
            out.add(fname, rater, {**_rating(path, fname, rater, rating), 'EmoClass': rating.get('EmoClass')})
    return out.done(path)


def parse_emo_detail(text):
    """'WORKER00001; N; H,S; A:3.0; V:4.0; D:5.0;' -> (rater, {EmoAct, EmoVal, EmoDom, EmoClass}); None if unreadable.
    A field A/V/D left out leaves that attribute None (refused later only where it is needed)."""
    if not isinstance(text, str):
        return None
    parts = [s.strip() for s in text.split(';')]
    parts = [s for s in parts if s]
    if len(parts) < 2 or ':' in parts[0]:
        return None
    rating = dict.fromkeys(ATTRS)
    names = []  # major, then secondaries: the fields before the first A:/V:/D:
    for s in parts[1:]:
        key, _, val = s.partition(':')
        if key.strip() in DETAIL_KEY and _:
            try:
                x = _number(val)
            except BadRating:
                return None
            if x is None:
                return None
            rating[DETAIL_KEY[key.strip()]] = x
        elif any(v is not None for v in rating.values()):
            return None  # text after the values: not the layout we know
        else:
            names.append(s)
    if not names or all(v is None for v in rating.values()):
        return None
    rating['EmoClass'] = names[0]
    return parts[0], rating


def _read_csv(path):
    import pandas as pd
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as e:
        raise UserError(f'{path}: not a readable CSV labels_detailed file ({type(e).__name__}: {e})')
    df.columns = [str(c).strip() for c in df.columns]
    cols = set(df.columns)
    out = _Raters()
    rater_col = next((c for c in RATER_COLUMN if c in cols), None)
    if 'FileName' in cols and 'EmoDetail' in cols:  # v1.7-v1.12
        for row, (fname, detail) in enumerate(zip(df['FileName'], df['EmoDetail']), start=2):
            got = parse_emo_detail(detail)
            if got is None:
                raise UserError(f'{path}: line {row}: {fname}: unreadable EmoDetail {detail!r} (expected '
                                f'"WORKERnnnn; <major>; <secondaries>; A:x; V:x; D:x;" with finite numbers)')
            out.add(fname, *got)
    elif 'FileName' in cols and rater_col and cols >= set(ATTRS):  # v1.6 CSV or v2.0
        major = df['EmoClass_Major'] if 'EmoClass_Major' in cols else [None] * len(df)
        for fname, rater, cls, *vals in zip(df['FileName'], df[rater_col], major, *(df[a] for a in ATTRS)):
            out.add(fname, rater, {**_rating(path, fname, rater, dict(zip(ATTRS, vals))), 'EmoClass': cls})
    else:
        raise UserError(f'{path}: not a labels_detailed layout we know (columns found: {", ".join(df.columns)}; '
                        f'expected FileName with EmoDetail, or FileName, Workers or WorkerID, EmoAct, EmoVal, EmoDom)')
    return out.done(path)


def read_raters(path):
    """Any of the four layouts -> {file: {rater: {EmoAct, EmoVal, EmoDom (float or None), EmoClass}}}."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4096).lstrip()
    except OSError as e:
        raise UserError(f'{path}: cannot read the detailed labels ({e.strerror})')
    if head.startswith(b'\xef\xbb\xbf'):
        head = head[3:].lstrip()
    return _read_json(path) if head.startswith(b'{') else _read_csv(path)


def rater_values(raters, fnames, col, path='detailed labels'):
    """Each file's raters' values of one attribute: a list of (R_i,) float64 arrays. Refuses a file with no raters
    and a rater without the attribute."""
    out = []
    for f in fnames:
        if f not in raters or not raters[f]:
            raise UserError(f'{path}: no raters for {f} (a file of the split; expected its ratings)')
        vals = []
        for r, rating in raters[f].items():
            if rating.get(col) is None:
                raise UserError(f'{path}: {f}: rater {r} has no {col} value (expected a number)')
            vals.append(rating[col])
        out.append(np.asarray(vals, dtype=np.float64))
    return out
