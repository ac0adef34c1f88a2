"""Batched scoring of utterances with a model (testing.py, predict.py, the benchmark): a torch model, or an exported
one (onnx_model.OnnxNet, scored without torch)."""
import time

import numpy as np
from tqdm import tqdm

from .onnx_model import OnnxNet, predict_onnx
from .utils import UserError, evaluation_metrics, model_batch


def predict_utterances(model, utterances, device='cpu', batch_size=64, return_chunks=False, progress=False):
    """A sequence of normalised (T, F) float32 utterances (a list, MatFeatures or a FeatureStore) -> raw outputs
    (N,) [, chunk weights (N, C') and chunk values (N, C'), None for models without], and the seconds spent in
    the model. Eval-mode batch norm uses running statistics, so batching changes no number."""
    if isinstance(model, OnnxNet):
        return predict_onnx(model, utterances, batch_size, return_chunks)
    import torch  # here: scoring an exported model needs no torch
    with torch.no_grad():
        return _predict_torch(model, utterances, device, batch_size, return_chunks, progress)


def _predict_torch(model, utterances, device, batch_size, return_chunks, progress):
    import torch
    model.eval()
    s = model.spec
    preds, weights, values, seconds = [], [], [], 0.0
    # a bar on stderr, and only on a terminal (tqdm's disable=None)
    bar = tqdm(total=len(utterances), desc='scoring', unit='utt', disable=None if progress else True, leave=False)
    for i in range(0, len(utterances), batch_size):
        idx = np.arange(i, min(i + batch_size, len(utterances)))  # read lazily, batch by batch
        x = torch.from_numpy(model_batch(utterances, idx, s)).to(device)  # (b*C', m, F), or frames (b, T, F)
        t0 = time.perf_counter()
        y, w, v = model(x, return_chunks=True)
        if x.device.type == 'cuda':
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        preds.append(y.float().cpu().numpy())
        weights.append(w.float().cpu().numpy())
        values.append(None if v is None else v.float().cpu().numpy())
        bar.update(len(idx))
    bar.close()
    preds = np.concatenate(preds) if preds else np.zeros(0, np.float32)
    if return_chunks:
        values = None if not values or values[0] is None else np.concatenate(values)
        return preds, np.concatenate(weights), values, seconds
    return preds, seconds


def predict_one_by_one(model, utterances, device='cpu', progress=False):
    """Each utterance scored alone, as the Keras original's testing loop: raw outputs (N,) and the seconds of
    each model call alone (N,) (chunking and transfer not counted)."""
    if isinstance(model, OnnxNet):
        runs = [predict_onnx(model, [utterances[i]], 1)
                for i in range(len(utterances))]
        return np.array([float(p[0]) for p, _ in runs], np.float32), np.array([t for _, t in runs])
    import torch
    with torch.no_grad():
        return _one_by_one_torch(model, utterances, device, progress)


def _one_by_one_torch(model, utterances, device, progress):
    import torch
    model.eval()
    s = model.spec
    preds, seconds = np.zeros(len(utterances), np.float32), np.zeros(len(utterances))
    for i in tqdm(range(len(utterances)), desc='scoring', unit='utt', disable=None if progress else True, leave=False):
        x = torch.from_numpy(model_batch(utterances, [i], s)).to(device)  # (C', m, F), or frames (1, T, F)
        t0 = time.perf_counter()
        y = model(x)
        if x.device.type == 'cuda':
            torch.cuda.synchronize()
        seconds[i] = time.perf_counter() - t0
        preds[i] = y.float().item()
    return preds, seconds


def keras_subsets(n, count=15, seed=99):
    """The Keras original's test subsets: arange(n) shuffled by NumPy's legacy generator seeded `seed` (what
    np.random.seed(99); np.random.shuffle does, without touching the global state), cut at
    arange(0, n, int(round(n / count))): consecutive subsets, the last one running to the end."""
    step = int(round(n / count))
    if step < 1:
        raise UserError(f'--subsets {count}: {n} utterances cannot be cut into {count} subsets')
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    cuts = list(np.arange(0, n, step)) + [n]
    subsets = [idx[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    small = [len(s) for s in subsets if len(s) < 2]
    if small:
        raise UserError(f'--subsets {count}: {n} utterances give a subset of {small[0]} utterance '
                        f'(subsets of {step}, the last of {len(subsets[-1])}): its CCC is undefined; use fewer subsets')
    return subsets


def subset_protocol(y_true, pred, seconds, count=15, seed=99):
    """The Keras evaluation protocol (docs/keras.md): CCC of each subset, mean and population std over subsets;
    the same for each subset's mean per-utterance time (ms). -> dict."""
    y_true, pred, ms = np.asarray(y_true), np.asarray(pred), 1000 * np.asarray(seconds)
    subsets = keras_subsets(len(y_true), count, seed)
    ccc = np.array([evaluation_metrics(y_true[s], pred[s]) for s in subsets])
    times = np.array([ms[s].mean() for s in subsets])
    return {'subsets': len(subsets), 'ccc': ccc, 'ccc_mean': float(ccc.mean()), 'ccc_std': float(ccc.std()),
            'ms_mean': float(times.mean()), 'ms_std': float(times.std())}
