"""Speech segments of a recording, shaped like the corpus's turns, from a voice-activity detector.

The detector is Silero VAD (the `silero-vad` wheel, MIT): its packaged ONNX model, run here through onnxruntime
with numpy alone (no torch, nothing downloaded), gives a speech probability per 32 ms frame. The rest is ours:

    probabilities (M,) -> speech frames (hysteresis) -> speech runs (short gaps bridged, clicks dropped, padded)
    -> segments: every pause splits; a segment over MAX_SEGMENT is cut at its longest inner pause (else in
       equal parts); one under MIN_SEGMENT joins a neighbour across a pause under MERGE_GAP, or stays alone.

    from chunkser.segments import find_segments
    seg = find_segments(x)   # x: (N,) 16 kHz mono -> Segments: spans (k, 2) seconds, speech (k,) share, gaps

Times are seconds; a frame of the detector is FRAME seconds (512 samples at 16 kHz).
"""
import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np

from .utils import SAMPLE_RATE, UserError

FRAME_SAMPLES, CONTEXT_SAMPLES = 512, 64  # the model's frame and the previous frame's tail it sees first
FRAME = FRAME_SAMPLES / SAMPLE_RATE       # 0.032 s per probability
BLOCK_FRAMES = 512                        # frames per onnxruntime call (16.4 s); the LSTM state carries over
MODEL_FILE = 'silero_vad_16k_sequence.onnx'  # the wheel's batched export of the streaming model (same outputs)

# The detector's decision: Silero's own thresholds (speech from 0.5, until under 0.35) and shortest speech; lower
# thresholds covered no more of the demo corpus's aroused speech (docs/deploying.md). The pad is wider than
# Silero's 30 ms, to keep the onsets and decays of speech that its 32 ms frames cut short.
THRESHOLD = 0.5        # a frame starts speech at this probability ...
HYSTERESIS = 0.15      # ... and speech goes on until the probability falls under THRESHOLD - HYSTERESIS
MIN_SPEECH = 0.25      # seconds: a shorter burst (a click, a knock) is not speech
MIN_PAUSE = 0.3        # seconds: a shorter gap is inside a phrase (stops, breaths) and does not split
PAD = 0.1              # seconds added before and after each speech run

# Segments follow the corpus's turns: 2.75 s to 11 s.
MIN_SEGMENT = 2.75     # the corpus's shortest turn: a shorter segment joins a neighbour if it can
MAX_SEGMENT = 11.0     # the corpus's longest turn (the model's 11 chunks of 1 s)
MERGE_GAP = 1.0        # seconds: the longest pause a short segment is joined across (see docs/deploying.md)


@dataclass
class Segments:
    spans: np.ndarray    # (k, 2) seconds [start, end) of each segment, in order, apart
    speech: np.ndarray   # (k,) share of each segment's frames the detector calls speech
    gaps: np.ndarray     # (g, 2) seconds [start, end) of the stretches without a segment (silence, noise, music)
    mask: np.ndarray     # (M,) bool: the detector's speech frames, one per FRAME


def model_path():
    """The ONNX file inside the installed silero_vad package, found without importing it (its __init__ imports
    torch)."""
    spec = importlib.util.find_spec('silero_vad')
    path = spec and os.path.join(spec.submodule_search_locations[0], 'data', MODEL_FILE)
    if not path or not os.path.isfile(path):
        raise UserError(f'silero-vad (its {MODEL_FILE}) is not installed: pip install --no-deps silero-vad, '
                        'or pass --segments fixed')
    return path


@functools.lru_cache(maxsize=1)
def session():
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = opts.intra_op_num_threads = 1  # a tiny model: threads cost more than they give
    return ort.InferenceSession(model_path(), sess_options=opts, providers=['CPUExecutionProvider'])


def speech_probs(x):
    """(N,) 16 kHz samples in [-1, 1] -> (M,) float32 speech probability of each 512-sample frame, M = ceil(N/512);
    the last frame is padded with zeros. Bit-equal to Silero's streaming model fed frame by frame."""
    M = -(-len(x) // FRAME_SAMPLES)
    frames = np.zeros((M, FRAME_SAMPLES), np.float32)
    frames.reshape(-1)[:len(x)] = x
    context = np.zeros((M, CONTEXT_SAMPLES), np.float32)  # each frame sees the previous one's last 64 samples
    context[1:] = frames[:-1, -CONTEXT_SAMPLES:]
    inputs = np.concatenate([context, frames], axis=1)  # (M, 576)
    h = c = np.zeros((1, 1, 128), np.float32)
    probs = [np.zeros(0, np.float32)]
    for b in range(0, M, BLOCK_FRAMES):
        p, h, c = session().run(['speech_probs', 'hn', 'cn'], {'input': inputs[b:b + BLOCK_FRAMES], 'h': h, 'c': c})
        probs.append(p.reshape(-1))
    return np.concatenate(probs)


def speech_frames(probs, threshold=THRESHOLD):
    """(M,) probabilities -> (M,) bool: speech from a frame at `threshold` until one under threshold - HYSTERESIS."""
    neg_threshold = max(threshold - HYSTERESIS, 0.01)
    mask, on = np.zeros(len(probs), bool), False
    for i, p in enumerate(probs):
        on = p >= threshold or (on and p >= neg_threshold)
        mask[i] = on
    return mask


def runs(mask):
    """(M,) bool -> (n, 2) frames [start, end) of its runs of True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1)


def speech_runs(mask, duration, min_speech=MIN_SPEECH, min_pause=MIN_PAUSE, pad=PAD):
    """Speech frames -> (n, 2) seconds of speech runs: gaps under min_pause bridged, runs under min_speech dropped,
    each padded by `pad` (within 0..duration; runs the padding joins are one)."""
    r = runs(mask) * FRAME
    if len(r) == 0:
        return np.zeros((0, 2))
    keep = [list(r[0])]
    for s, e in r[1:]:
        if s - keep[-1][1] < min_pause:
            keep[-1][1] = e
        else:
            keep.append([s, e])
    out = []
    for s, e in keep:
        if e - s < min_speech:
            continue
        s, e = max(s - pad, 0.0), min(e + pad, duration)
        if out and s <= out[-1][1]:
            out[-1][1] = e
        else:
            out.append([s, e])
    return np.array(out).reshape(-1, 2)


def cut_long(span, mask, max_len=MAX_SEGMENT, min_len=MIN_SEGMENT):
    """One segment -> its parts of at most max_len seconds: cut at the longest inner pause (run of non-speech
    frames) that leaves both parts at least min_len long, recursively; without one, equal parts."""
    s, e = span
    if e - s <= max_len:
        return [(s, e)]
    a, b = int(round(s / FRAME)), int(round(e / FRAME))
    pauses = runs(~mask[a:b]) + a  # (p, 2) frames
    mids = pauses.mean(1) * FRAME  # (p,) seconds: cut in the middle of a pause
    ok = (mids - s >= min_len) & (e - mids >= min_len)
    if ok.any():
        j = np.flatnonzero(ok)[np.argmax((pauses[ok, 1] - pauses[ok, 0]))]
        return cut_long((s, mids[j]), mask, max_len, min_len) + cut_long((mids[j], e), mask, max_len, min_len)
    k = int(np.ceil((e - s) / max_len))
    edges = np.linspace(s, e, k + 1)
    return list(zip(edges[:-1], edges[1:]))


def merge_short(spans, min_len=MIN_SEGMENT, max_len=MAX_SEGMENT, merge_gap=MERGE_GAP):
    """Segments (in order) -> the same with each one under min_len joined to the neighbour across the shorter
    pause, when that pause is under merge_gap and the joined segment at most max_len; else it stays alone."""
    spans = [list(p) for p in spans]
    while True:
        best = None  # (pause, i, j): join segments i and j = i + 1
        for i, (s, e) in enumerate(spans):
            if e - s >= min_len:
                continue
            for j in (i - 1, i + 1):
                if 0 <= j < len(spans):
                    a, b = sorted((i, j))
                    pause = spans[b][0] - spans[a][1]
                    if pause < merge_gap and spans[b][1] - spans[a][0] <= max_len and (best is None or pause < best[0]):
                        best = (pause, a, b)
        if best is None:
            return spans
        _, a, b = best
        spans[a:b + 1] = [[spans[a][0], spans[b][1]]]


def find_segments(x, threshold=THRESHOLD, max_len=MAX_SEGMENT, min_len=MIN_SEGMENT, merge_gap=MERGE_GAP):
    """(N,) 16 kHz samples -> Segments (see the module docstring)."""
    duration = len(x) / SAMPLE_RATE
    mask = speech_frames(speech_probs(x), threshold)
    parts = [p for r in speech_runs(mask, duration) for p in cut_long(r, mask, max_len, min_len)]
    spans = np.array(merge_short(parts, min_len, max_len, merge_gap)).reshape(-1, 2)
    return Segments(spans, speech_share(mask, spans), gaps_of(spans, duration), mask)


def speech_share(mask, spans):
    """(k,) share of the detector's speech frames within each span (seconds) of `spans` (k, 2)."""
    cum = np.concatenate([[0], np.cumsum(mask)])  # (M+1,)
    a = np.clip(np.round(spans[:, 0] / FRAME).astype(int), 0, len(mask))
    b = np.clip(np.round(spans[:, 1] / FRAME).astype(int), 0, len(mask))
    return (cum[b] - cum[a]) / np.maximum(b - a, 1)


def gaps_of(spans, duration, min_gap=FRAME):
    """(g, 2) seconds of the stretches of 0..duration outside `spans`, those under min_gap left out."""
    edges = np.concatenate([[0.0], spans.reshape(-1), [duration]]).reshape(-1, 2)  # (k+1, 2) [gap start, gap end]
    return edges[edges[:, 1] - edges[:, 0] >= min_gap]
