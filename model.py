"""The chunk-level network: one LSTM chunk encoder, four aggregation heads, checkpoint I/O.

Input (B*C', m, F) chunks, C' = n*C consecutive chunks per utterance -> output (B,).
State-dict keys are the reference's (lstm.*, bn.*, attn.*, fc1.*, fc2.*), so the released
v1.6 checkpoints load with strict=True and our checkpoints load in the reference code.
"""
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils import DEFAULT_C, DEFAULT_M, DEFAULT_N, UserError, chunk_batch, read_json


# ----------------------------------------------------------------------------------
# aggregation heads: (B, C', H) chunk vectors -> (B, H) utterance vector, (B, C') chunk weights

class MeanHead(nn.Module):
    """NonAtten: the plain mean over chunks; no parameters."""

    def __init__(self, hidden):
        super().__init__()

    def forward(self, h):  # h: (B, C', H)
        w = torch.full(h.shape[:2], 1.0 / h.shape[1], dtype=h.dtype, device=h.device)
        return h.mean(1), w


class GatedHead(nn.Sequential):
    """GatedVec: a sigmoid gate per chunk; the output is the *mean* of the gated chunks (not a weighted sum)."""

    def __init__(self, hidden):
        super().__init__(nn.Linear(hidden, 1), nn.Sigmoid())  # keys attn.0.weight, attn.0.bias

    def forward(self, h):  # h: (B, C', H)
        w = super().forward(h)  # (B, C', 1)
        return (h * w).mean(1), w.squeeze(-1)


class RnnAttenHead(nn.Module):
    """RnnAttenVec: a tanh RNN over the chunk sequence; score_c = (W e_c) . h_T; softmax; context;
    tanh(W_out [context; h_T])."""

    def __init__(self, hidden):
        super().__init__()
        self.attn_rnn = nn.RNN(hidden, hidden, batch_first=True)
        self.attn_dnn_score = nn.Linear(hidden, hidden, bias=False)
        self.attn_dnn_out = nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, h):  # h: (B, C', H)
        e, _ = self.attn_rnn(h)  # (B, C', H) states e_1..e_C'
        h_last = e[:, -1]  # (B, H)
        score = torch.einsum('bch,bh->bc', self.attn_dnn_score(e), h_last)  # (B, C')
        w = torch.softmax(score, dim=1)
        context = torch.einsum('bc,bch->bh', w, e)  # (B, H)
        return torch.tanh(self.attn_dnn_out(torch.cat([context, h_last], dim=1))), w


class SelfAttenHead(nn.TransformerEncoderLayer):
    """SelfAttenVec with the reference's quirk: each chunk is a sequence of length one, so it attends only
    to itself and the chunks never interact (SPEC). We feed all B*C' chunks as one (1, B*C', H)
    sequence-first input, which is the same per-chunk computation, dropouts included, then average."""

    def __init__(self, hidden):
        super().__init__(d_model=hidden, nhead=2)  # PyTorch defaults: ff 2048, dropout 0.1, relu, post-norm

    def forward(self, h):  # h: (B, C', H)
        B, C, H = h.shape
        z = super().forward(h.reshape(1, B * C, H)).reshape(B, C, H)
        w = torch.full((B, C), 1.0 / C, dtype=h.dtype, device=h.device)  # uniform: chunks never interact
        return z.mean(1), w


HEADS = {'NonAtten': MeanHead, 'GatedVec': GatedHead, 'RnnAttenVec': RnnAttenHead, 'SelfAttenVec': SelfAttenHead}


# ----------------------------------------------------------------------------------
# the network

class ChunkLevelSER(nn.Module):
    def __init__(self, atten='SelfAttenVec', feat_dim=130, hidden_dim=130, num_layers=2, chunks=DEFAULT_C * DEFAULT_N):
        super().__init__()
        if atten not in HEADS:
            raise UserError(f'unknown attention head {atten!r} (expected one of {", ".join(HEADS)})')
        self.atten, self.chunks = atten, chunks  # chunks = C' = n*C per utterance
        self.lstm = nn.LSTM(feat_dim, hidden_dim, num_layers=num_layers, batch_first=True, dropout=0.5)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 1)
        self.attn = HEADS[atten](hidden_dim)  # defined last: the reference's state-dict key order
        self.streams = None  # a CpuStreams to run the LSTM on CPU cores in parallel (use_cpu_streams); not saved

    def encode(self, x):  # x: (B*C', m, F) -> (B*C', H): last time step of each chunk's top layer
        if self.streams is not None and self.streams.applies(x):
            return torch.cat(self.streams.forward(self.lstm, x))
        out, _ = self.lstm(x)  # (B*C', m, H)
        return out[:, -1]

    def head(self, e, return_weights=False):  # e: (B*C', H) encoded chunks -> (B,) [, (B, C') weights]
        h = self.bn(e).reshape(-1, self.chunks, e.shape[-1])  # (B, C', H)
        u, w = self.attn(h)  # (B, H), (B, C')
        y = self.fc2(F.relu(self.fc1(u))).squeeze(-1)  # (B,)
        return (y, w) if return_weights else y

    def forward(self, x, return_weights=False):  # x: (B*C', m, F)
        return self.head(self.encode(x), return_weights)


# ----------------------------------------------------------------------------------
# the LSTM on CPU cores as parallel streams

class CpuStreams:
    """Runs the model's nn.LSTM (batch_first) on pieces of the batch, k at a time, one single-threaded stream per
    core. One call's per-timestep products (a few hundred chunks x 4H gates) split poorly over OpenMP threads,
    and pieces of ~128 chunks stay in cache: on 2 cores inference is 1.5-1.8x and a training step up to 1.25x
    faster than one 2-thread call. The numbers are those of one call: rows are independent, and in training the
    dropout masks between layers are drawn up front, from the global generator, in the order, shape and
    memory layout the fused call draws them."""

    min_rows = 32  # chunks per stream below which one call is as fast
    # Single-threaded calls on 88-256 chunks are faster per chunk than on 704 or more (activations stay in
    # cache): measured here about 10 % for forward + backward, 30 % for inference. So each stream's part is cut
    # into pieces of at most this many chunks, run one after another.
    piece_rows = 128

    def __init__(self, k):
        self.k = k
        self.pool = ThreadPoolExecutor(k, thread_name_prefix='lstm-stream')
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

    def applies(self, x):
        return x.device.type == 'cpu' and self.parts(x) >= 2

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

    def forward(self, lstm, x):
        """x: (N, m, F) -> parts(x) tensors (n_i, H), the last step of the top layer per piece, graphs kept;
        the pool's k threads take the pieces in turn."""
        pieces = self.parts(x)
        masks = [torch.tensor_split(mk, pieces) if mk is not None else [None] * pieces
                 for mk in self.masks(lstm, x.shape[0], x.shape[1])]  # [layer][piece]
        jobs = [self.pool.submit(_in_stream, torch.is_grad_enabled(), _lstm_layers, lstm, xp, [mk[i] for mk in masks])
                for i, xp in enumerate(torch.tensor_split(x, pieces))]
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
        return lstm(x)[0]
    for l in range(lstm.num_layers):
        x = _layer(lstm, l, x)
        if l < lstm.num_layers - 1 and masks[l] is not None:
            x = x * masks[l]
    return x


def use_cpu_streams(model, device, streams=0):
    """Give the model CPU streams: streams=0 picks one per torch thread (with one thread, a single stream still
    cuts the batch into pieces); 1, or a non-CPU device, means none: one multi-threaded call, as the reference."""
    if streams < 0:
        raise UserError(f'--cpu-streams must be 0 (one per torch thread) or more, not {streams}')
    k = torch.get_num_threads() if streams == 0 else streams
    model.streams = CpuStreams(k) if torch.device(device).type == 'cpu' and (streams == 0 or k > 1) else None
    return model


# The reference's class names, with its constructor and its fixed 11 chunks per utterance.
def _alias(atten):
    class Alias(ChunkLevelSER):
        def __init__(self, input_dim, hidden_dim, output_dim=1, num_layers=2):
            super().__init__(atten, input_dim, hidden_dim, num_layers, chunks=11)
    Alias.__name__ = Alias.__qualname__ = {'NonAtten': 'LSTMnet_MeanAtten', 'GatedVec': 'LSTMnet_GateAtten',
                                           'RnnAttenVec': 'LSTMnet_RnnAtten', 'SelfAttenVec': 'LSTMnet_SelfAtten'}[atten]
    return Alias


LSTMnet_MeanAtten = _alias('NonAtten')
LSTMnet_GateAtten = _alias('GatedVec')
LSTMnet_RnnAtten = _alias('RnnAttenVec')
LSTMnet_SelfAtten = _alias('SelfAttenVec')


# ----------------------------------------------------------------------------------
# configs and checkpoints

def default_config(atten, feat_dim=130):
    """The config of a checkpoint without JSON (the released v1.6 files)."""
    return {'atten': atten, 'feat_dim': feat_dim, 'hidden_dim': 130, 'num_layers': 2,
            'chunk_frames': DEFAULT_M, 'chunks': DEFAULT_C, 'scale': DEFAULT_N}


def build_model(cfg):
    return ChunkLevelSER(cfg['atten'], cfg['feat_dim'], cfg.get('hidden_dim', 130), cfg.get('num_layers', 2),
                         chunks=cfg['chunks'] * cfg['scale'])


def checkpoint_name(iterations, batch_size, atten, emo):
    return f'LSTM_iter{iterations}_batch{batch_size}_ChunkSeq2One_{atten}_{emo}.pth.tar'


def config_path(ckpt_path):
    """The JSON config beside a checkpoint: X.pth.tar -> X.json."""
    base = ckpt_path[:-len('.pth.tar')] if ckpt_path.endswith('.pth.tar') else os.path.splitext(ckpt_path)[0]
    return base + '.json'


def find_checkpoint(name, model_dir=None):
    """--model-dir if given, else ./Models, else ./trained_model_v1.6; None when not found."""
    dirs = [model_dir] if model_dir else ['./Models', './trained_model_v1.6']
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    return None


def read_config(ckpt_path, atten, feat_dim=130):
    """The JSON beside a checkpoint, or the defaults for files that have none."""
    cp = config_path(ckpt_path)
    if os.path.isfile(cp):
        cfg = read_json(cp)
        if cfg.get('atten', atten) != atten:
            raise UserError(f'{cp}: this checkpoint has head {cfg["atten"]}, not -atten {atten}')
        return cfg
    return default_config(atten, feat_dim)


def check_norm(cfg, norm, norm_dir, ckpt, force=False):
    """A checkpoint used with other z-norm terms than it was trained on gives wrong numbers silently:
    refuse unless forced. Checkpoints without JSON (the released ones) carry no fingerprint."""
    want = cfg.get('norm_fingerprint')
    if want and want != norm.fingerprint() and not force:
        raise UserError(f'{ckpt}: trained with NormTerm {cfg.get("norm_dir")} (fingerprint {want}), but {norm_dir} '
                        f'holds other terms ({norm.fingerprint()}); pass the right --norm-dir or --force')


def load_state_dict(path):
    """A plain state_dict, loaded without running any code (weights_only=True)."""
    try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise UserError(f'{path}: checkpoint not found')
    except pickle.UnpicklingError as e:
        msg = str(e)
        if 'GLOBAL' not in msg:  # not a refused import: the bytes are simply not a pickle
            raise UserError(f'{path}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)')
        what = next((ln.strip() for ln in msg.splitlines() if 'GLOBAL' in ln), '')
        raise UserError(f'{path}: refused: the file needs to run code to load, only plain tensors are accepted ({what})')
    except Exception as e:
        raise UserError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})')
    if isinstance(sd, dict) and 'state_dict' in sd and isinstance(sd['state_dict'], dict):
        sd = sd['state_dict']
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f'{path}: expected a plain state_dict of tensors')
    return sd


def load_model(path, cfg, device='cpu'):
    """Build the model of `cfg` and load `path` into it with strict=True; mismatches in one line."""
    model = build_model(cfg)
    sd = load_state_dict(path)
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing or extra:
        guess = _guess_head(sd)
        hint = f' (it looks like a {guess} checkpoint)' if guess and guess != cfg['atten'] else ''
        raise UserError(f'{path}: not a {cfg["atten"]} checkpoint{hint}: '
                        f'{len(missing)} keys missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})')
    for k, v in want.items():
        if sd[k].shape != v.shape:
            raise UserError(f'{path}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)} '
                            f'(feature width {cfg["feat_dim"]}, hidden {cfg.get("hidden_dim", 130)})')
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()


def _guess_head(sd):
    if any(k.startswith('attn.self_attn') for k in sd):
        return 'SelfAttenVec'
    if any(k.startswith('attn.attn_rnn') for k in sd):
        return 'RnnAttenVec'
    if 'attn.0.weight' in sd:
        return 'GatedVec'
    if not any(k.startswith('attn.') for k in sd):
        return 'NonAtten'
    return None


# ----------------------------------------------------------------------------------
# batched scoring

@torch.no_grad()
def predict_utterances(model, utterances, cfg, device='cpu', batch_size=64, return_weights=False, progress=False):
    """A sequence of normalised (T, F) float32 utterances (a list, MatFeatures or a FeatureStore) -> raw outputs (N,) [and chunk weights (N, C')], and the seconds
    spent in the model. Eval-mode batch norm uses running statistics, so batching changes no number."""
    model.eval()
    m, C, n = cfg['chunk_frames'], cfg['chunks'], cfg['scale']
    preds, weights, seconds = [], [], 0.0
    # a bar on stderr, and only on a terminal (tqdm's disable=None)
    bar = tqdm(total=len(utterances), desc='scoring', unit='utt', disable=None if progress else True, leave=False)
    for i in range(0, len(utterances), batch_size):
        idx = np.arange(i, min(i + batch_size, len(utterances)))  # read lazily, batch by batch
        x = torch.from_numpy(chunk_batch(utterances, idx, m, C, n)).to(device)  # (b*C', m, F)
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
