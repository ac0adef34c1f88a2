"""torchrun support: N processes train the objective of one (training.py).

Dist knows this process's rank and world; GlobalBatchNorm1d takes its training statistics over the global
batch; wrap_model puts both around a model; end_distributed leaves the process group cleanly. With one
process (no torchrun) every piece here is a no-op.
"""
import gc
import inspect
import io
import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

# torch.distributed.nn.functional's collectives are the ones with autograd; their deprecation notice is noise here
warnings.filterwarnings('ignore', message='torch.distributed.nn.functional', category=FutureWarning)


class Dist:
    """Rank and world of this process; one process when not started by torchrun."""

    def __init__(self, device):
        self.world = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            if device.type == 'cuda':
                self.device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
                torch.cuda.set_device(self.device)
            dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')

    @property
    def main(self):
        return self.rank == 0

    def shard(self, idx):
        """This rank's part of a global batch, and the sizes of every rank's part."""
        parts = np.array_split(idx, self.world)
        return parts[self.rank], [len(p) for p in parts]

    def gather(self, t, sizes):
        """Concatenate every rank's (n_r, ...) tensor in rank order, keeping autograd (for a loss of the global batch:
        the CCC, the weighted cross-entropy's normaliser)."""
        if self.world == 1:
            return t
        pad = torch.zeros((max(sizes),) + t.shape[1:], dtype=t.dtype, device=t.device)
        pad = torch.cat([t, pad[len(t):]])  # all_gather wants equal shapes
        if t.requires_grad:
            from torch.distributed.nn.functional import all_gather
            parts = all_gather(pad)
        else:  # targets: no autograd (class indices are integers)
            parts = [torch.empty_like(pad) for _ in range(self.world)]
            dist.all_gather(parts, pad)
        return torch.cat([g[:n] for g, n in zip(parts, sizes)])

    def all_reduce(self, values, op='sum'):
        """A list of floats reduced over the ranks with op 'sum' or 'max' (no autograd)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t, op={'sum': dist.ReduceOp.SUM, 'max': dist.ReduceOp.MAX}[op])
        return t.tolist()

    def all_gather_state(self, obj):
        """Every rank's `obj` (tensors and plain values), in rank order; sent as torch.save bytes, since
        all_gather_object mangles tensors."""
        if self.world == 1:
            return [obj]
        buf = io.BytesIO()
        torch.save(obj, buf)
        blobs = [None] * self.world
        dist.all_gather_object(blobs, buf.getvalue())
        return [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are over the global batch of all ranks (nn.SyncBatchNorm is
    GPU-only). Two all-reduces with autograd keep the gradients those of one process on the whole batch.
    Input (N, C) or (N, C, L), as BatchNorm1d: statistics per C over every other dimension."""

    def forward(self, x):  # x: (N_local, C) or (N_local, C, L)
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        dims = [0] + list(range(2, x.dim()))  # every dimension but C
        shape = [1, -1] + [1] * (x.dim() - 2)  # (1, C[, 1]) for broadcasting
        n = all_reduce(torch.tensor([float(x.numel() // x.shape[1])], device=x.device))
        mean = all_reduce(x.sum(dims)) / n
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n  # biased, for normalising
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)  # unbiased, as BatchNorm1d
        return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps) * self.weight.view(shape) \
            + self.bias.view(shape)


def global_batch_norms(module, device):
    """Every nn.BatchNorm1d inside `module` replaced, in place, by a GlobalBatchNorm1d holding its state (the
    encoder's after the LSTM, the CNN's five over time)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            gbn = GlobalBatchNorm1d(child.num_features, eps=child.eps, momentum=child.momentum).to(device)
            gbn.load_state_dict(child.state_dict())
            setattr(module, name, gbn)
        else:
            global_batch_norms(child, device)


def wrap_model(model, d, unused=False):
    """Global batch norms and DDP when distributed; the model itself otherwise. unused: some parameters get no
    gradient in some steps (an audio network: a transformer held frozen for its first updates, a layer norm that
    no hidden state uses)."""
    if d.world == 1:
        return model
    global_batch_norms(model, d.device)
    # buffers need no sync in forward: the global batch norm gives every rank the same running statistics
    # (torch >= 2.13 renamed broadcast_buffers to forward_sync_buffers)
    new = 'forward_sync_buffers' in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    no_sync = {'forward_sync_buffers' if new else 'broadcast_buffers': False}
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == 'cuda' else None,
                                               find_unused_parameters=unused, **no_sync)


def end_distributed():
    """Leave the process group. Collect first: DDP's reference cycles would otherwise keep the gloo group alive
    until interpreter exit, where its threads are torn down unjoined (seen as an abort, 'terminate called')."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
