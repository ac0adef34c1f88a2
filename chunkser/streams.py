"""The chunk encoder on CPU cores as parallel streams (training.py, testing.py, predict.py: --cpu-streams).

The encoder runs on pieces of the batch, one single-threaded stream per core: the reference's nn.LSTM in
training and inference, the other encoders in inference. Predictions and losses are those of one call up
to fp32 rounding; training gradients differ only in the rounding of their sum.
"""
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn

from .model import LastStepLSTM
from .utils import UserError


class CpuStreams:
    """Runs the model's encoder on pieces of the batch, k at a time, one single-threaded stream per core. One
    call's per-timestep products (a few hundred chunks x 4H gates) split poorly over OpenMP threads, and pieces
    of ~128 chunks stay in cache (BENCHMARKS.md has the figures). Rows are independent, so the numbers are one
    call's up to fp32 rounding (oneDNN picks other kernels for other row counts on some CPUs). For nn.LSTM also
    in training: the dropout masks between layers are drawn up front, from the global generator, in the order,
    shape and memory layout the fused call draws them."""

    min_rows = 32  # chunks per stream below which one call is as fast
    # a single-threaded call is fastest per chunk while its activations stay in cache, so each stream's part
    # is cut into pieces of at most this many chunks, run one after another
    piece_rows = 128

    def __init__(self, k):
        self.k = k
        self.pool = ThreadPoolExecutor(k, thread_name_prefix='encoder-stream')
        self._time_major = None

    def __reduce__(self):  # copy.deepcopy or pickle of a model: a fresh pool (threads cannot be copied)
        return CpuStreams, (self.k,)

    def parts(self, x):
        """How many pieces a batch of len(x) chunks is cut into: up to k streams of at least min_rows chunks,
        each stream's share in pieces of at most piece_rows (a multiple of the streams, for balance)."""
        k = min(self.k, len(x) // self.min_rows)
        if k < 1:
            return 1
        return k * -(-len(x) // (k * self.piece_rows))  # k * ceil(n / (k * piece_rows))

    def applies(self, x, encoder):
        """The streams run nn.LSTM's forward and backward; another encoder (CNN, KerasLSTM) only in inference, where
        its rows are independent (batch norm on running statistics, no dropout)."""
        pure = isinstance(encoder, LastStepLSTM) or not (torch.is_grad_enabled() or encoder.training)
        return x.device.type == 'cpu' and pure and self.parts(x) >= 2

    def masks(self, lstm, n, m):
        """The dropout masks (n, m, H) between layers, scaled by 1/(1-p), as the fused call would draw them."""
        p, H = lstm.dropout, lstm.hidden_size
        if not (lstm.training and p > 0 and lstm.num_layers > 1):
            return [None] * (lstm.num_layers - 1)
        if self._time_major is None:  # the layout of a layer's output, on which the fused call draws its mask
            with torch.no_grad():
                probe = _layer(lstm, 0, torch.zeros(2, 3, lstm.input_size))
            self._time_major = probe.stride(0) < probe.stride(1)
        out = []
        for _ in range(lstm.num_layers - 1):
            mk = torch.empty((m, n, H) if self._time_major else (n, m, H)).bernoulli_(1 - p).div_(1 - p)
            out.append(mk.transpose(0, 1) if self._time_major else mk)  # (n, m, H)
        return out

    def forward(self, encoder, x):
        """x: (N, m, F) -> parts(x) tensors (n_i, H), the encoder's output per piece, graphs kept; the pool's k
        threads take the pieces in turn."""
        pieces = torch.tensor_split(x, self.parts(x))
        if not isinstance(encoder, LastStepLSTM):  # inference (applies): the pieces through the encoder as it is
            return [j.result() for j in [self.pool.submit(_in_stream, False, encoder, xp) for xp in pieces]]
        masks = [torch.tensor_split(mk, len(pieces)) if mk is not None else [None] * len(pieces)
                 for mk in self.masks(encoder, x.shape[0], x.shape[1])]  # [layer][piece]
        jobs = [self.pool.submit(_in_stream, torch.is_grad_enabled(), _lstm_layers, encoder, xp, [mk[i] for mk in masks])
                for i, xp in enumerate(pieces)]
        return [j.result()[:, -1] for j in jobs]

    def backward(self, lstm, outs, grad):
        """Backward of forward's pieces in parallel; grad (N, H) is the gradient of their concatenation. Each
        piece's parameter gradients come back from its stream and are summed here in piece order, so the
        result does not depend on which stream finishes first."""
        params = list(lstm.parameters())
        jobs = [self.pool.submit(_in_stream, True, torch.autograd.grad, o, params, g)
                for o, g in zip(outs, torch.split(grad, [len(o) for o in outs]))]
        grads = [j.result() for j in jobs]  # pieces x [gradient of each parameter]
        for i, p in enumerate(params):
            g = grads[0][i]
            for piece in grads[1:]:
                g = g + piece[i]
            p.grad = g if p.grad is None else p.grad + g


def _in_stream(grad_enabled, fn, *args):
    torch.set_num_threads(1)  # per thread: this stream keeps to one core
    with torch.set_grad_enabled(grad_enabled):  # grad mode is per thread too
        return fn(*args)


def _layer(lstm, l, x):
    """Layer l of the LSTM alone (torch.lstm with that layer's weights): (n, m, in) -> (n, m, H)."""
    w = [getattr(lstm, f'{k}_l{l}') for k in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')]
    h0 = x.new_zeros(1, x.shape[0], lstm.hidden_size)
    return torch.lstm(x, (h0, h0), w, True, 1, 0.0, lstm.training, False, True)[0]


def _lstm_layers(lstm, x, masks):
    """All layers, each mask (n, m, H) or None applied between two: (n, m, F) -> (n, m, H)."""
    if all(mk is None for mk in masks):  # no dropout (eval): the fused call
        return nn.LSTM.forward(lstm, x)[0]  # the whole sequence (the model's LastStepLSTM keeps the last step)
    for l in range(lstm.num_layers):
        x = _layer(lstm, l, x)
        if l < lstm.num_layers - 1 and masks[l] is not None:
            x = x * masks[l]
    return x


def use_cpu_streams(model, device, streams=0):
    """Give the model CPU streams: streams=0 picks one per torch thread (with one thread, a single stream still
    cuts the batch into pieces); 1 or a non-CPU device means none: one multi-threaded call, as the reference."""
    if streams < 0:
        raise UserError(f'--cpu-streams must be 0 (one per torch thread) or more, not {streams}')
    k = torch.get_num_threads() if streams == 0 else streams
    model.streams = CpuStreams(k) if torch.device(device).type == 'cpu' and (streams == 0 or k > 1) else None
    return model
