"""Self-supervised front ends (WavLM, wav2vec 2.0, HuBERT) through `transformers`: audio -> frame features.

A front end is a model folder (`save_pretrained`'s: config.json, the weights, preprocessor_config.json) or a hub
name, one hidden layer of it, and whether the waveform is normalised. Its record (`record`, written as
F/frontend.json beside the features and into every checkpoint's ModelSpec) names it, the sha256 of its config and of
its weights, the layer, the hop and the width; `identity` is what must match for features to be interchangeable.
Features of a feature folder without frontend.json are the IS13 LLDs (hop utils.HOP).

The waveform is 16 kHz mono (lld.load_audio), zero mean and unit variance over the whole recording exactly when the
preprocessor config says do_normalize (or --normalize), then padded to one receptive field if shorter. Recordings
longer than WINDOW_S go through in windows of WINDOW_S that overlap by OVERLAP_S, the cut between two windows in
the middle of their overlap; windows start on the hop grid, so every window's frames are frames of the whole
recording. Base-sized models (group norm in the first convolution, no attention mask) see padding and the
window's own statistics, so only windows of equal length are batched and nothing is padded but the too-short.
"""
import glob
import hashlib
import json
import math
import os

import numpy as np

from ..files import file_sha256, read_json
from ..utils import HOP, SAMPLE_RATE, UserError

WINDOW_S, OVERLAP_S = 20.0, 4.0   # long recordings: windows of 20 s, 4 s shared by neighbours (docs/frontends.md)
WINDOW_BATCH = 4                  # equal-length windows per forward pass
RECORD_FILE = 'frontend.json'
IDENTITY = ('config_sha256', 'weights_sha256', 'layer', 'normalize')  # what makes two front ends the same
WEIGHT_PATTERNS = ('*.safetensors', '*.bin')  # in the order AutoModel prefers them


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError('--frontend needs the transformers package: pip install -r requirements.txt')
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def resolve_folder(name):
    """NAME_OR_PATH -> a local model folder: the folder itself, else the hub repository's files (downloaded once
    into the hub's cache; only config, preprocessor config and weights)."""
    if os.path.isdir(name):
        return name
    if os.path.exists(name) or name.startswith(('.', '/', '~')) or name.count('/') > 1:
        raise UserError(f'{name}: front end not found (expected a folder written by save_pretrained, or a hub name)')
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(name, allow_patterns=['config.json', 'preprocessor_config.json', '*.safetensors',
                                                         '*.safetensors.index.json'])
        if not weight_files(folder):
            folder = snapshot_download(name, allow_patterns=['config.json', 'preprocessor_config.json', '*.bin',
                                                             '*.bin.index.json'])
    except Exception as e:
        why = ' '.join(str(e).split())  # the hub's messages span lines: one line
        raise UserError(f'{name}: not a local folder, and the hub did not give it ({type(e).__name__}: {why}'[:300]
                        + '); give a model folder (HF_HUB_OFFLINE=1 keeps the hub offline)')
    return folder


def refuse_code(folder):
    """A model folder is data: one that brings Python code (a config's auto_map, a .py file) or names a model type
    transformers does not know (which only code could build) is refused before transformers reads it, so its code
    never runs and no prompt asks whether to run it."""
    path = os.path.join(folder, 'config.json')
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise UserError(f'{path}: expected a JSON object (a model config)')
    code = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, '*.py')))
    if 'auto_map' in cfg or code:
        what = f'Python files ({", ".join(code[:3])})' if code else 'auto_map in config.json'
        raise UserError(f'{folder}: the model folder brings its own code ({what}); refused: only models that '
                        'transformers builds itself are loaded (WavLM, wav2vec 2.0, HuBERT)')
    from transformers import CONFIG_MAPPING
    if cfg.get('model_type') not in CONFIG_MAPPING:
        raise UserError(f'{path}: model_type {cfg.get("model_type")!r} is not one transformers knows (expected a '
                        'speech model: wavlm, wav2vec2, hubert)')


def weight_files(folder):
    for pattern in WEIGHT_PATTERNS:
        found = sorted(glob.glob(os.path.join(folder, pattern)))
        if found:
            return found
    return []


def weights_sha256(folder):
    """The sha256 of the weights file (a sharded model: of its shards' names and sums)."""
    files = weight_files(folder)
    if not files:
        raise UserError(f'{folder}: no model weights (*.safetensors or *.bin) in the front-end folder')
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256(''.join(f'{os.path.basename(f)} {file_sha256(f)}\n' for f in files).encode()).hexdigest()


def read_do_normalize(folder, name, normalize):
    """The preprocessor config's do_normalize; `normalize` ('yes' / 'no' / True / False) overrides it, and is
    required where the folder has no preprocessor_config.json."""
    if normalize is not None:
        return normalize if isinstance(normalize, bool) else normalize == 'yes'
    path = os.path.join(folder, 'preprocessor_config.json')
    if not os.path.isfile(path):
        raise UserError(f'{name}: no preprocessor_config.json, so whether the model expects a normalised waveform '
                        'is unknown: pass --normalize yes or --normalize no')
    cfg = read_json(path)
    if 'do_normalize' not in cfg:
        raise UserError(f'{path}: expected a do_normalize entry (or pass --normalize yes|no)')
    return bool(cfg['do_normalize'])


def frame_count(n, kernels, strides):
    """Frames the convolutional encoder gives for n samples: each layer (L - k) // s + 1 (n >= receptive field)."""
    for k, s in zip(kernels, strides):
        n = (n - k) // s + 1
    return n


def receptive_field(kernels, strides):
    """The fewest samples that give one frame (the receptive field: 400 for the usual encoder)."""
    n, jump = 1, 1
    for k, s in zip(kernels, strides):
        n += (k - 1) * jump
        jump *= s
    return n


class SSLFrontEnd:
    """One hidden layer of a self-supervised speech model, loaded once; features(x) for every file."""

    def __init__(self, name, layer=None, normalize=None, device='cpu'):
        import torch
        tf = _transformers()
        self.name, self.folder = str(name), resolve_folder(str(name))
        if not os.path.isfile(os.path.join(self.folder, 'config.json')):
            raise UserError(f'{self.folder}: no config.json (expected a folder written by save_pretrained)')
        refuse_code(self.folder)
        self.normalize = read_do_normalize(self.folder, self.name, normalize)
        try:  # trust_remote_code=False: never run a folder's code, never ask (refuse_code refused it already)
            self.model = tf.AutoModel.from_pretrained(self.folder, trust_remote_code=False).eval().to(device)
        except Exception as e:
            raise UserError(f'{self.folder}: transformers cannot load this model ({type(e).__name__}: {e})'[:400])
        cfg = self.model.config
        if not hasattr(cfg, 'conv_stride'):
            raise UserError(f'{self.folder}: a {cfg.model_type} model, expected a speech model with a convolutional '
                            'waveform encoder (WavLM, wav2vec 2.0, HuBERT)')
        self.kernels, self.strides = list(cfg.conv_kernel), list(cfg.conv_stride)
        self.hop_samples = math.prod(self.strides)       # 320 samples = 0.02 s
        self.receptive = receptive_field(self.kernels, self.strides)  # 400 samples: one frame
        self.layers = cfg.num_hidden_layers
        self.layer = self.layers if layer is None else int(layer)
        if not 0 <= self.layer <= self.layers:
            raise UserError(f'--layer {layer}: expected 0 (the first transformer layer\'s input) to {self.layers}')
        self.width, self.device, self.torch = cfg.hidden_size, torch.device(device), torch
        self.record = {
            'frontend': self.name, 'folder': os.path.abspath(self.folder), 'model_type': cfg.model_type,
            'config_sha256': file_sha256(os.path.join(self.folder, 'config.json')),
            'weights_sha256': weights_sha256(self.folder), 'layer': self.layer, 'layers': self.layers,
            'hop': self.hop_samples / SAMPLE_RATE, 'sample_rate': SAMPLE_RATE, 'width': self.width,
            'normalize': self.normalize, 'window_s': WINDOW_S, 'overlap_s': OVERLAP_S,
            'transformers': tf.__version__}

    @property
    def hop(self):
        return self.hop_samples / SAMPLE_RATE

    def frames(self, n):
        return frame_count(max(n, self.receptive), self.kernels, self.strides)

    def hidden(self, x):
        """(B, n) float32 waveforms of one length -> (B, T, D) float32 numpy: hidden_states[layer]."""
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(x).to(self.device), output_hidden_states=True)
            return out.hidden_states[self.layer].float().cpu().numpy()

    def features(self, x, window_s=WINDOW_S, overlap_s=OVERLAP_S):
        """(N,) 16 kHz mono samples -> (T, D) float32 features, T = frames(N)."""
        x = np.asarray(x, dtype=np.float64)
        if self.normalize:  # the feature extractor's zero_mean_unit_var_norm, over the whole recording
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        if len(x) < self.receptive:  # one frame of zeros after the end
            x = np.concatenate([x, np.zeros(self.receptive - len(x))])
        x = x.astype(np.float32)
        spans = window_spans(len(x), self.hop_samples, round(window_s * SAMPLE_RATE / self.hop_samples),
                             round(overlap_s * SAMPLE_RATE / self.hop_samples))  # (k, 4) samples and kept frames
        out = np.empty((self.frames(len(x)), self.width), dtype=np.float32)
        by_length = {}
        for s, e, keep0, keep1 in spans:
            by_length.setdefault(e - s, []).append((s, keep0, keep1))
        for n, group in by_length.items():
            for g in range(0, len(group), WINDOW_BATCH):
                part = group[g:g + WINDOW_BATCH]
                h = self.hidden(np.stack([x[s:s + n] for s, _, _ in part]))  # (b, frames(n), D)
                for (s, keep0, keep1), hb in zip(part, h):
                    f0 = s // self.hop_samples  # the window's first frame in the recording
                    out[keep0:keep1] = hb[keep0 - f0:keep1 - f0]
        return out

    def features_with_time(self, x):
        """(N,) samples -> (T, 1 + D) float32 Audio_data: the frame time (index x hop), then the features."""
        f = self.features(x)
        t = (np.arange(len(f), dtype=np.float64) * self.hop).astype(np.float32)[:, None]  # (T, 1)
        return np.concatenate([t, f], axis=1)


def window_spans(n, hop, win_frames, overlap_frames):
    """Windows over n samples: (k, 4) int64 rows (first sample, end sample, first kept frame, end kept frame).
    Windows are win_frames hops long, each starting overlap_frames hops before the previous one's end, the last
    reaching n; each window keeps its frames up to the middle of its overlap with the next. One window when it
    fits."""
    win, stride = win_frames * hop, (win_frames - overlap_frames) * hop
    last = np.iinfo(np.int64).max
    if n <= win:
        return np.array([[0, n, 0, last]], dtype=np.int64)
    k = -(-(n - win) // stride) + 1  # windows until one reaches n
    starts = np.arange(k, dtype=np.int64) * stride  # (k,) on the hop grid
    ends = np.minimum(starts + win, n)
    cuts = starts[1:] // hop + overlap_frames // 2  # (k-1,) the first frame taken from the next window
    return np.stack([starts, ends, np.concatenate([[0], cuts]), np.concatenate([cuts, [last]])], axis=1)


# ----------------------------------------------------------------------------------
# records: the front end of a feature folder, a checkpoint, and whether two are the same

def read_record(feat_dir):
    """F/frontend.json of a feature folder, or None (IS13 LLDs)."""
    path = os.path.join(feat_dir, RECORD_FILE)
    return read_json(path) if os.path.isfile(path) else None


def identity(record):
    return None if record is None else {k: record.get(k) for k in IDENTITY}


def describe(record):
    if record is None:
        return 'the IS13 LLDs (openSMILE)'
    return (f'{record["frontend"]} layer {record["layer"]} (weights sha256 {record["weights_sha256"][:12]}, '
            f'normalize {record["normalize"]})')


def hop_of(record):
    """Seconds per feature frame of a front end's features (None: the IS13 LLDs' 0.016 s)."""
    return HOP if record is None else float(record['hop'])


def default_chunk_frames(record):
    """m, the frames of a ~1 s chunk: int(1 s / hop): 62 at the LLDs' 0.016 s (the reference's), 50 at 0.02 s."""
    return int(1.0 / hop_of(record) + 1e-9)


def check_same(want, have, what, where):
    """Features of another front end than a model was trained on give wrong numbers silently: one line naming both."""
    if identity(want) != identity(have):
        raise UserError(f'{where}: trained on features of {describe(want)}, but {what} are of {describe(have)}')


def check_origin(rec, name, where):
    """An audio network carries its fine-tuned model; a --frontend given beside it must be the model it started
    from (the sums of its config and weights; nothing is loaded): else one line naming both."""
    folder = resolve_folder(str(name))
    config = os.path.join(folder, 'config.json')
    if not os.path.isfile(config):
        raise UserError(f'{folder}: no config.json (expected a folder written by save_pretrained)')
    have = {'config_sha256': file_sha256(config), 'weights_sha256': weights_sha256(folder)}
    if any(rec.get(k) != v for k, v in have.items()):
        raise UserError(f'{name}: another model (weights sha256 {have["weights_sha256"][:12]}) than {where} was trained '
                        f'from ({rec.get("frontend")}, weights sha256 {str(rec.get("weights_sha256"))[:12]}); the '
                        'checkpoint carries its own backbone: leave --frontend out')


def record_json(record):
    return json.dumps(record, indent=2, sort_keys=True) + '\n'


# ----------------------------------------------------------------------------------
# a folder of audio -> .mat features and F/frontend.json

def extract_folder(wav_dir, out_dir, front, verbose=True):
    """lld.extract_folder with this front end: F/frontend.json first (so every .mat of F is of one front end),
    then one .mat per audio file, existing ones skipped. A folder of other features is refused before anything
    is written. Returns [(path, error)] of the failures."""
    from . import lld
    from ..files import atomic_write_bytes, ensure_writable_dir
    if not os.path.isdir(wav_dir):
        raise UserError(f'{wav_dir}: audio folder not found')
    if not lld.find_audio(wav_dir):
        raise UserError(f'{wav_dir}: no {" or ".join(lld.AUDIO_EXTENSIONS)} files found (searched recursively)')
    ensure_writable_dir(out_dir)
    have = read_record(out_dir)
    if have is None and glob.glob(os.path.join(out_dir, '*.mat')):
        raise UserError(f'{out_dir}: holds .mat features without {RECORD_FILE} (IS13 LLDs?): extract into another '
                        'folder')
    if have is not None and identity(have) != identity(front.record):
        raise UserError(f'{os.path.join(out_dir, RECORD_FILE)}: features of {describe(have)}, not of '
                        f'{describe(front.record)}: extract into another folder')
    if have != front.record:
        atomic_write_bytes(os.path.join(out_dir, RECORD_FILE), record_json(front.record).encode())
    return lld.extract_folder(wav_dir, out_dir, 1, verbose, features=lambda p: front.features_with_time(lld.load_audio(p)))
