"""Batched scoring of utterances with a model (testing.py, predict.py, the benchmark)."""
import time

import numpy as np
import torch
from tqdm import tqdm

from utils import chunk_batch


@torch.no_grad()
def predict_utterances(model, utterances, device='cpu', batch_size=64, return_weights=False, progress=False):
    """A sequence of normalised (T, F) float32 utterances (a list, MatFeatures or a FeatureStore) -> raw outputs
    (N,) [and chunk weights (N, C')], and the seconds spent in the model. Eval-mode batch norm uses running
    statistics, so batching changes no number."""
    model.eval()
    s = model.spec
    preds, weights, seconds = [], [], 0.0
    # a bar on stderr, and only on a terminal (tqdm's disable=None)
    bar = tqdm(total=len(utterances), desc='scoring', unit='utt', disable=None if progress else True, leave=False)
    for i in range(0, len(utterances), batch_size):
        idx = np.arange(i, min(i + batch_size, len(utterances)))  # read lazily, batch by batch
        x = torch.from_numpy(chunk_batch(utterances, idx, s.chunk_frames, s.chunks, s.scale)).to(device)  # (b*C', m, F)
        t0 = time.perf_counter()
        y, w = model(x, return_weights=True)
        if x.device.type == 'cuda':
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        preds.append(y.float().cpu().numpy())
        weights.append(w.float().cpu().numpy())
        bar.update(len(idx))
    bar.close()
    preds = np.concatenate(preds) if preds else np.zeros(0, np.float32)
    if return_weights:
        return preds, np.concatenate(weights), seconds
    return preds, seconds
