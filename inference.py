"""Inference on files: the inputs a user points at (audio or feature files, folders of them), read into features."""
import os

import lld
from corpus import load_features
from utils import UserError

INPUT_EXTENSIONS = lld.AUDIO_EXTENSIONS + ('.mat',)


def collect_inputs(paths):
    """Command-line paths -> the files to score, folders expanded recursively in sorted order."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(INPUT_EXTENSIONS)]
            if not found:
                raise UserError(f'{p}: no .wav, .flac or .mat files in this folder')
            files += found
        elif os.path.isfile(p):
            if not p.lower().endswith(INPUT_EXTENSIONS):
                raise UserError(f'{p}: expected a .wav, .flac or .mat file, or a folder of them')
            files.append(p)
        else:
            raise UserError(f'{p}: file or folder not found')
    return files


def load_input(path, keep_audio=False):
    """-> raw features (T, F) float64 without the time column, and the 16 kHz samples (N,) if asked for."""
    if path.lower().endswith('.mat'):
        return load_features(path), None
    x = lld.load_audio(path)
    try:
        feats = lld.features_from_signal(x)
    except ValueError as e:
        raise UserError(f'{path}: {e}')
    return feats[:, 1:], (x if keep_audio else None)
