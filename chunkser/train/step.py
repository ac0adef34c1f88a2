"""One training step and one validation: batches read from the features (ahead of the GPU on CUDA), the forward
and backward of the objective's loss, the objective's validation figure over a split."""
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..corpus import iter_batches
from ..objectives import Regression
from ..utils import model_batch


def make_batch(feats, labels, idx, spec, device):
    """Utterance indices -> chunks (b*C', m, F) (or an utterance-level head's frames (b, T, F)) float32 and targets
    (b,) or (b, k) on the device."""
    x = torch.from_numpy(model_batch(feats, idx, spec))
    y = torch.from_numpy(labels[idx])
    if device.type == 'cuda':  # page-locked, so the copy runs asynchronously beside the compute
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class InlineExecutor:
    """ThreadPoolExecutor's submit/shutdown, run at once in the calling thread."""

    def submit(self, fn, *args):
        f = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self, **kwargs):
        pass


class BatchReader:
    """The epochs' batches, each epoch a fresh random order from `gen`; the order and position live in the
    training state, so a resumed run reads the same batches. On CUDA a thread reads the next batch while the GPU
    computes this one; on the CPU that thread would only compete with torch's threads, so batches are read inline."""

    def __init__(self, st, n, batch_size, min_last, gen, fetch, device, sample=None):
        self.st, self.n, self.batch_size, self.min_last, self.gen, self.fetch = st, n, batch_size, min_last, gen, fetch
        self.sample = sample  # items per epoch: the first `sample` of a fresh permutation (all n when None)
        self.pool = ThreadPoolExecutor(1) if device.type == 'cuda' else InlineExecutor()
        self.pending = None

    def next(self):
        st = self.st
        if st.pos == len(st.batches):  # a new epoch
            order = torch.randperm(self.n, generator=self.gen).numpy()[:self.sample]
            st.batches, st.pos, self.pending = iter_batches(order, self.batch_size, self.min_last), 0, None
        current = self.pending or self.pool.submit(self.fetch, st.batches[st.pos])
        st.pos += 1
        self.pending = self.pool.submit(self.fetch, st.batches[st.pos]) if st.pos < len(st.batches) else None
        return current.result()

    def close(self):
        self.pool.shutdown(cancel_futures=True)


def forward_backward(net, x, y, objective=None, d=None, sizes=None, amp=None, scaler=None):
    """One step's loss (of the global batch under torchrun: d, sizes), its gradients accumulated; the objective's,
    or with None the reference's 1 - CCC of one attribute. With CPU
    streams (streams.py) the LSTM's backward runs in the streams too: the backward of the layers after the encoder stops at the chunk
    encodings, detached, and the streams carry their gradient back through their pieces of the LSTM at once."""
    objective = objective or Regression(('Act',))
    streams = getattr(net, 'streams', None)  # None under DDP (net is the wrapper) and off CPU
    if streams is not None and amp is None and net.encoder is not None and net.backbone is None and \
            streams.applies(x, net.encoder):
        parts = streams.forward(net.encoder, x)  # pieces x (n_i, H)
        e = torch.cat([p.detach() for p in parts]).requires_grad_()  # (B*C', H)
        loss = objective.loss(outputs(objective, net.from_chunks, e), y)
        loss.backward()
        streams.backward(net.encoder, parts, e.grad)
        return loss
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        pred = outputs(objective, net, x)
    gather = d.gather if d is not None else (lambda t, _: t)
    loss = objective.loss(gather(pred.float(), sizes), gather(y, sizes))
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss


def outputs(objective, f, x):
    """The network f's outputs that the objective's loss takes: a seq2seq model's (B, C') chunk values, else f(x)."""
    return f(x, return_chunks=True)[2] if objective.per_chunk else f(x)


@torch.no_grad()
def validate(model, feats, labels, objective, d, batch_size, order=None):
    """The objective's validation figure over the validation split, scored in fixed batches (the reference's:
    the unweighted mean of the per-batch losses; Class: the macro-F1 of the whole split). Batches are shared out
    over the ranks and the objective's sums reduced, so every rank takes the same checkpoint decision.
    `model` is the bare module, not the DDP wrapper: a rank may have no batch, and DDP's forward syncs.
    order: the items to score (default all; a ranker's: the epoch's sample of the validation pairs)."""
    model.eval()
    sums = None
    order = np.arange(len(labels)) if order is None else order
    for b in iter_batches(order, batch_size)[d.rank::d.world]:
        x, y = make_batch(feats, labels, b, model.spec, d.device)
        s = objective.validation_sums(model(x).float(), y)
        sums = s if sums is None else [a + c for a, c in zip(sums, s)]
    sums = sums or [0.0] * objective.sums_size  # a rank without a batch adds nothing
    model.train()
    return objective.validation_value(d.all_reduce(sums))
