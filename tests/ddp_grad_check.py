"""Run under torchrun by tests/test_reliability.py: one training step's gradients on a fixed global batch,
with dropout off, written by rank 0 to the file named in argv[1]."""
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


def step_grads(atten, d=None):
    torch.manual_seed(0)
    model = no_dropout(build_model(ModelSpec(head=atten)))
    x, y = global_batch()
    if d is None:  # one process, the whole batch
        loss = cc_coef(model(x), y)
    else:
        net = distrib.wrap_model(model, d)
        local, sizes = d.shard(np.arange(len(y)))
        xl = x.reshape(len(y), 11, 62, 130)[local].reshape(-1, 62, 130)
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
