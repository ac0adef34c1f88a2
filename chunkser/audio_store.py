"""The audio store: a corpus split's 16 kHz mono waveforms in one memory-mapped file, for a network that reads samples.

Each utterance is its wav file (the label table's FileName joined to the wav folder, exactly) read by
features.lld.load_audio (channels averaged, resampled to 16 kHz, float64) and cast to float32: an (N, 1) array, one
"feature" per sample, the item contract of the feature store (len(store), store[i] -> (N_i, 1) float32,
store.fnames). The folder, keys, lock, build, rebuild and clean-up are store.py's; what differs is the source:

    <store>/<list key>-<state key>/
        samples.f32    (sum N_i, 1) float32 (samples.f16, float16, with --store-dtype float16: half the disk)
        index.npy      (N, 2) int64: offset_i, N_i
        meta.json      feat_dim 1, frames (= samples), file names, wav folder, sample_rate 16000, dtype, ...

The state key hashes a source tag ("audio"), the wav folder, the sample rate, each file's size and mtime_ns and
the dtype, so an audio store never shares a key with a feature store; its data file has its own name, so the
two kinds of store of one split live side by side in one folder. The items are read whole: an AudioStore has no
`gather` (chunk windows of features mean nothing for samples), so utils.frame_batch reads it through store[i].
"""
import os

import numpy as np

from .store import MappedStore, open_source_store
from .utils import SAMPLE_RATE, UserError

AUDIO_FILES = {'float32': 'samples.f32', 'float16': 'samples.f16'}  # stored dtype -> its data file


def audio_path(wav_dir, fname):
    return os.path.join(wav_dir, fname)


def require_audio_files(wav_dir, fnames, split):
    """Every row of a used split needs its wav file: name the first missing one and how many are missing."""
    missing = [f for f in fnames if not os.path.isfile(audio_path(wav_dir, f))]
    if missing:
        raise UserError(f'{audio_path(wav_dir, missing[0])}: audio file of a {split} row not found '
                        f'({len(missing)} missing)')


def load_samples(path):
    """An audio file -> (N, 1) float32 samples at 16 kHz, mono (lld.load_audio's numbers, cast)."""
    from .features.lld import load_audio  # here: lld imports openSMILE, which scoring from features needs not
    x = load_audio(path)  # (N,) float64
    if len(x) == 0:
        raise UserError(f'{path}: no audio samples; expected at least one')
    return x.astype(np.float32)[:, None]  # (N, 1)


class AudioStore(MappedStore):
    """The float32 waveforms of a list of utterances, memory-mapped: store[i] -> (N_i, 1) float32."""
    kind, files = 'audio', AUDIO_FILES


class AudioSource:
    """An audio store's source: each utterance's wav file, read by load_samples."""
    kind, files, feat_dim = 'audio', AUDIO_FILES, 1

    def __init__(self, wav_dir):
        self.folder = wav_dir

    def path(self, fname):
        return audio_path(self.folder, fname)

    def key(self):  # the tag keeps it apart from a feature store's key (a real path and a NormTerm fingerprint)
        return f'audio|{os.path.realpath(self.folder)}|{SAMPLE_RATE}'

    def meta(self):
        return {'wav_dir': os.path.realpath(self.folder), 'sample_rate': SAMPLE_RATE}

    def load(self, path):
        return load_samples(path)

    def open(self, path):
        return AudioStore(path)


class AudioFiles:
    """The waveforms of a list of utterances, read from their wav files on demand (--no-store); AudioStore's
    item contract."""

    def __init__(self, wav_dir, fnames):
        self.wav_dir, self.fnames = wav_dir, list(fnames)

    def __len__(self):
        return len(self.fnames)

    def __getitem__(self, i):
        return load_samples(audio_path(self.wav_dir, self.fnames[i]))  # (N, 1) float32


def open_audio_store(store_dir, wav_dir, fnames, workers=None, progress=True, dtype='float32'):
    """The current AudioStore of `fnames` under `store_dir`: reused when its keys match, else built (store.py's
    open_source_store)."""
    return open_source_store(store_dir, AudioSource(wav_dir), fnames, workers=workers, progress=progress, dtype=dtype)


def open_audio(store_dir, wav_dir, fnames, progress=True, dtype='float32'):
    """The waveforms a network reads: an AudioStore under `store_dir`, or, with None (--no-store), each wav file on
    demand. progress: a bar while a store is built. dtype: what the store keeps (float16 halves its disk; the
    items are float32 either way)."""
    if store_dir is None:
        return AudioFiles(wav_dir, fnames)
    return open_audio_store(store_dir, wav_dir, fnames, progress=progress, dtype=dtype)
