"""Run under torchrun by tests/test_reliability.py (heads) and tests/test_finetune.py (an audio network: `audio:CONFIG`,
a transformers config.json): one training step's gradients on a fixed global batch, with dropout off, written by
rank 0 to the file named in argv[1]."""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chunkser import distrib  # noqa: E402
from chunkser.model import ModelSpec, build_model  # noqa: E402
from chunkser.utils import cc_coef  # noqa: E402


def no_dropout(model):
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
        if isinstance(mod, (torch.nn.LSTM, torch.nn.MultiheadAttention)):
            mod.dropout = 0.0
    return model


def global_batch(B=13, C=11):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B * C, 62, 130, generator=g), torch.randn(B, generator=g)


def audio_batch(B=6):
    """(B, N, 1) waveforms of 1-3 s, NaN after each end, and (B,) targets."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(16000, 48000, (B,), generator=g)
    x = torch.full((B, int(lengths.max()), 1), float('nan'))
    for b, n in enumerate(lengths):
        x[b, :n] = 0.1 * torch.randn(int(n), 1, generator=g)
    return x, torch.randn(B, generator=g)


def step_grads(atten, d=None):
    torch.manual_seed(0)
    if atten.startswith('audio:'):  # a fine-tuned audio network: the backbone's gradients too
        cfg = json.load(open(atten[len('audio:'):]))
        spec = ModelSpec(head='RnnAttenVec', feat_dim=cfg['hidden_size'], hidden_dim=16, chunk_frames=50,
                         backbone=dict(config=cfg, layers='all', finetune=True, normalize=True))
        model, (x, y) = no_dropout(build_model(spec)), audio_batch()
    else:
        model, (x, y) = no_dropout(build_model(ModelSpec(head=atten))), global_batch()
    if d is None:  # one process, the whole batch
        loss = cc_coef(model(x), y)
    else:
        net = distrib.wrap_model(model, d, unused=model.backbone is not None)
        local, sizes = d.shard(np.arange(len(y)))
        xl = x[local] if model.backbone is not None else x.reshape(len(y), 11, 62, 130)[local].reshape(-1, 62, 130)
        loss = cc_coef(d.gather(net(xl), sizes), d.gather(y[local], sizes))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, loss.item()


if __name__ == '__main__':
    d = distrib.Dist(torch.device('cpu'))
    out = {}
    for atten in sys.argv[2:]:
        out[atten] = step_grads(atten, d)
    if d.rank == 0:
        torch.save(out, sys.argv[1])
    distrib.end_distributed()
