"""The z-norm terms of a NormTerm folder (what norm_para.py writes and every other script reads)."""
import hashlib
import os

import numpy as np
import scipy.io

from .corpus import ATTRIBUTES, LABEL_COLUMN, load_mat
from .utils import UserError, z_normalize

NORM_FILES = ['feat_norm_means', 'feat_norm_stds'] + \
    [f'{e.lower()}_norm_{s}' for e in ATTRIBUTES for s in ('means', 'stds')]


class NormTerms:
    """The eight z-norm terms of a NormTerm folder: feature mean/std (F,), label mean/std per attribute."""

    def __init__(self, feat_mean, feat_std, labels):
        self.feat_mean = np.asarray(feat_mean, dtype=np.float64).reshape(-1)
        self.feat_std = np.asarray(feat_std, dtype=np.float64).reshape(-1)
        self.labels = {e: (float(m), float(s)) for e, (m, s) in labels.items()}  # emo -> (mean, std)

    @classmethod
    def load(cls, norm_dir):
        if not os.path.isdir(norm_dir):
            raise UserError(f'{norm_dir}: NormTerm folder not found (run norm_para.py, or pass --norm-dir)')
        t = {}
        for name in NORM_FILES:
            path = os.path.join(norm_dir, name + '.mat')
            if not os.path.isfile(path):
                raise UserError(f'{path}: missing z-norm term (expected the eight files norm_para.py writes)')
            t[name] = np.asarray(load_mat(path, 'normal_para'), dtype=np.float64)
        labels = {e: (t[f'{e.lower()}_norm_means'].item(), t[f'{e.lower()}_norm_stds'].item()) for e in ATTRIBUTES}
        return cls(t['feat_norm_means'], t['feat_norm_stds'], labels)

    def save(self, norm_dir):
        os.makedirs(norm_dir, exist_ok=True)
        for name, value in self.arrays().items():
            scipy.io.savemat(os.path.join(norm_dir, name + '.mat'), {'normal_para': value})

    def arrays(self):
        """name -> the array as stored: (1, F) for features, (1, 1) for labels."""
        out = {'feat_norm_means': self.feat_mean[None, :], 'feat_norm_stds': self.feat_std[None, :]}
        for e, (m, s) in self.labels.items():
            out[f'{e.lower()}_norm_means'] = np.array([[m]])
            out[f'{e.lower()}_norm_stds'] = np.array([[s]])
        return out

    def fingerprint(self):
        """A short hash of the terms' values (not of the files' bytes, whose headers hold dates)."""
        h = hashlib.sha256()
        for name, value in sorted(self.arrays().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    @property
    def feat_dim(self):
        return self.feat_mean.shape[0]

    def normalize(self, x):
        """(T, F) raw features -> z-normalised, NaN -> 0, clipped to [-3, 3] (float64, as the reference)."""
        if x.shape[1] != self.feat_dim:
            raise UserError(f'features have {x.shape[1]} columns but the NormTerm has {self.feat_dim}')
        return z_normalize(x, self.feat_mean, self.feat_std)

    def norm_label(self, y, emo):
        m, s = self.labels[emo]
        return (np.asarray(y, dtype=np.float64) - m) / s

    def denorm_label(self, y, emo):
        m, s = self.labels[emo]
        return np.asarray(y, dtype=np.float64) * s + m


class LabelTerms(NormTerms):
    """An audio network's z-norm terms: the labels' alone, mean and population std per attribute over the Train rows
    with a label (as norm_para.py takes them), kept in the checkpoint's JSON (spec.labels), not in a NormTerm
    folder. The network reads the waveform as it is, so normalize leaves it unchanged."""

    def __init__(self, labels):
        super().__init__(np.zeros(1), np.ones(1), labels)

    @classmethod
    def from_rows(cls, rows):
        labels = {}
        for e in ATTRIBUTES:
            y = rows[LABEL_COLUMN[e]].to_numpy(dtype=np.float64) if LABEL_COLUMN[e] in rows.columns else np.zeros(0)
            y = y[np.isfinite(y)]
            if len(y) > 1 and y.std() > 0:
                labels[e] = (float(y.mean()), float(y.std()))
        return cls(labels)

    @classmethod
    def from_spec(cls, spec, path):
        if spec.labels is None:
            raise UserError(f'{path}: an audio network without its label terms (labels) in its JSON')
        return cls({e: tuple(v) for e, v in spec.labels.items()})

    def to_json(self):
        return {e: [m, s] for e, (m, s) in sorted(self.labels.items())}

    def arrays(self):
        return {f'{e.lower()}_norm_{k}': np.array([[v]]) for e, (m, s) in self.labels.items()
                for k, v in (('means', m), ('stds', s))}

    def normalize(self, x):
        return np.asarray(x, dtype=np.float64)

    def norm_label(self, y, emo):
        if emo not in self.labels:
            raise UserError(f'no label terms of {emo}: the Train split has no {LABEL_COLUMN[emo]} labels to take them from')
        return super().norm_label(y, emo)
