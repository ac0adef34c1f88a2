"""Run under torchrun by tests/test_objectives.py, dropout off: for each network of STEPS, one training step's
loss, gradients and batch-norm running statistics through training.forward_backward on a fixed global batch,
written by rank 0 to argv[1]; then
training.py once for each group of arguments after argv[1] (groups separated by '--next'). One process (no
torchrun) gives the same step with step_grads(name)."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chunkser import distrib  # noqa: E402
from chunkser.commands import training  # noqa: E402
from chunkser.train import loop as train_loop, step as train_step  # noqa: E402
from ddp_grad_check import no_dropout  # noqa: E402
from chunkser.model import ModelSpec, build_model  # noqa: E402
from chunkser.objectives import Classification, Regression, inverse_frequency_weights  # noqa: E402
from train_no_dropout import build_model_without_dropout  # noqa: E402

SMALL = dict(chunk_frames=20, chunks=4, scale=1)
STEPS = {  # the CNN's five batch norms over time; the LSTM's one after the encoder; both with the weighted loss
    'CNN-Act': ModelSpec(encoder='CNN', head='GatedVec', emo='Act', **SMALL),
    'CNN-Class': ModelSpec(encoder='CNN', head='GatedVec', emo='Class', classes=list('ASHN'), **SMALL),
    'LSTM-Class': ModelSpec(encoder='LSTM', head='NonAtten', emo='Class', classes=list('ASHN'), **SMALL),
}
# 13 utterances, split 7 | 6 over 2 ranks; the classes' shares differ between the two halves, so a normaliser of
# the local batch (its sum of weights) differs from the global one
CLASSES = np.array([0, 0, 0, 0, 0, 1, 2, 0, 1, 1, 2, 3, 3])


def global_batch(spec):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(CLASSES) * spec.chunks_per_utterance, spec.chunk_frames, spec.feat_dim, generator=g)
    if spec.emo == 'Class':
        y = torch.from_numpy(CLASSES)
        objective = Classification(spec.classes, inverse_frequency_weights(CLASSES, len(spec.classes)))
    else:
        y = torch.randn(len(CLASSES), generator=g)
        objective = Regression((spec.emo,))
    return x, y, objective


def step_grads(name, d=None):
    """(gradients, loss, batch-norm running statistics after it) of one step of STEPS[name]: on one process the
    whole batch; under torchrun this rank's part."""
    spec = STEPS[name]
    torch.manual_seed(0)
    model = no_dropout(build_model(spec)).train()
    x, y, objective = global_batch(spec)
    if d is None:
        loss = train_step.forward_backward(model, x, y, objective)
    else:
        net = distrib.wrap_model(model, d)
        local, sizes = d.shard(np.arange(len(y)))
        C = spec.chunks_per_utterance
        xl = x.reshape(len(y), C, *x.shape[1:])[local].reshape(-1, *x.shape[1:])
        loss = train_step.forward_backward(net, xl, y[local], objective, d, sizes)
    stats = {n: b.clone() for n, b in model.named_buffers() if 'running' in n}
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, loss.item(), stats


if __name__ == '__main__':
    d = distrib.Dist(torch.device('cpu'))
    out = {name: step_grads(name, d) for name in STEPS}
    if d.rank == 0:
        torch.save(out, sys.argv[1])
    train_loop.build_model = build_model_without_dropout
    train_loop.plot_losses = lambda *a: None  # the curves are not compared; matplotlib would cost each rank seconds
    groups = [[]]
    for a in sys.argv[2:]:
        if a == '--next':
            groups.append([])
        else:
            groups[-1].append(a)
    try:
        for argv in groups:
            if argv:
                assert training.main(argv) == 0
    finally:
        distrib.end_distributed()
