"""The challenge's submission file (predict.py --submission FILE): one row per input file, for a folder of audio
without labels (the Odyssey 2024 challenge's Test3).

  a categorical model (-emo Class)   FileName,EmoClass          the class letter
  attribute models (Act, Val, Dom)   FileName,EmoAct,EmoVal,EmoDom   on the 1..7 scale

FileName is the input's file name without its folder. A recording cut into several rows (windows or speech
segments, predict.py --window) becomes one: attributes are the duration-weighted mean of its rows' values; the
class is the most probable one under the duration-weighted mean of its rows' class probabilities (the first in
the model's class order on a tie).
"""
import os

import numpy as np

from .objectives import CLASS, CSV_ORDER, objective_of
from .utils import UserError

CLASS_HEADER = ['FileName', 'EmoClass']
ATTRIBUTE_HEADER = ['FileName', *(f'Emo{a}' for a in CSV_ORDER)]
PROBABILITY = 'p_'  # prefix of a class's probability column (objectives.py's predict columns)


def submission_header(models):
    """The submission's header for these checkpoints (inference.Models); a mix of class and attribute models, or
    attribute models without all three of Act, Val and Dom, is refused before any file is scored."""
    columns = {c for _, spec, _ in models.nets.values() for c in objective_of(spec).predict_columns()}
    attrs = [a for a in CSV_ORDER if a in columns]
    if CLASS in columns:
        if attrs:
            raise UserError(f'--submission: one format at a time: a Class model, or Act, Val and Dom models (given '
                            f'both Class and {", ".join(attrs)})')
        return CLASS_HEADER
    missing = [a for a in CSV_ORDER if a not in columns]
    if missing:
        raise UserError(f'--submission: the attribute format needs Act, Val and Dom (no checkpoint gives '
                        f'{", ".join(missing)})')
    return ATTRIBUTE_HEADER


def submission_row(it, header):
    """One scored item of inference.scored_items -> its submission row (strings)."""
    values = {c: np.asarray(v) for r in it['res'].values() for c, v in r['values'].items()}  # column -> (k,)
    seconds = (it['bounds'][:, 1] - it['bounds'][:, 0]).astype(np.float64)  # (k,) frames, proportional to seconds
    if len(seconds) == 0:
        raise UserError(f'{it["path"]}: no speech segment, so no row; the submission needs one per file '
                        '(pass --segments fixed)')
    name = os.path.basename(it['path'])
    if header == CLASS_HEADER:
        probs = {c[len(PROBABILITY):]: np.average(v.astype(np.float64), weights=seconds)
                 for c, v in values.items() if c.startswith(PROBABILITY)}
        return [name, max(probs, key=probs.get)]  # the first of equal maxima, in the model's class order
    return [name] + [f'{np.average(values[a].astype(np.float64), weights=seconds):.6f}' for a in CSV_ORDER]


def check_unique(rows):
    """Two inputs of one file name (in different folders) would give two rows of one FileName: refused."""
    names = [r[0] for r in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f'--submission: two inputs named {twice[0]}: the challenge\'s FileName must be unique')
