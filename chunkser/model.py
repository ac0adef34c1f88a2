"""The chunk-level network, described by one ModelSpec: a chunk encoder, an aggregation head, a task.

Input (B*C', m, F) chunks, C' = n*C consecutive chunks per utterance -> output (B,).
A network is an entry of ENCODERS x HEADS x TASKS; ModelSpec (spec.py) names the entries and the sizes, is what a
checkpoint's JSON stores, and rebuilds the model (build_model). For encoder LSTM the state-dict keys are
the PyTorch reference's (lstm.*, bn.*, attn.*, fc1.*, fc2.*), so the released v1.6 checkpoints load with
strict=True and our checkpoints load in the reference code. Encoders CNN and KerasLSTM and head MultiHeadAttenVec
are the Keras original's networks (docs/keras.md); keras_convert.py turns its released weights into checkpoints.
The per-chunk tasks of the retrieval follow-up (Lin & Busso, TASLP 2023: the seq2seq model 'chunk' and the
emotion ranker 'ranker') have no head (None) and the keys lstm.*, fc1.*, fc2.* of its released files.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .spec import (DEFAULT_HEAD, ENCODER_NAMES, EQUAL_WEIGHT_HEADS, FRAME_HEADS, HEAD_NAMES, HEAD_WEIGHTS,  # noqa: F401
                   INT_RANGES, OPTIONAL_TEXT, SENTENCE_TASKS, TASKS, ModelSpec, Task, check_field_types)
# (the description, re-exported: `from chunkser.model import ModelSpec` keeps working)
from .backbone import Backbone, chunks_of, frames_of
from .utils import UserError, chunk_spans


# ----------------------------------------------------------------------------------
# chunk encoders: (N, m, F) chunks -> (N, H) chunk vectors
# Each entry: (attribute name in the model, so state-dict keys stay the reference's; builder; batch norm epsilon
# after the encoder, or None for none).

class LastStepLSTM(nn.LSTM):
    """The PyTorch reference's encoder: nn.LSTM, last time step of the top layer. Keys lstm.* as nn.LSTM's."""

    def __init__(self, spec):
        super().__init__(spec.feat_dim, spec.hidden_dim, num_layers=spec.num_layers, batch_first=True, dropout=0.5)

    def forward(self, x):  # x: (N, m, F) -> (N, H)
        return super().forward(x)[0][:, -1]

    @staticmethod
    def flops(spec):  # per chunk: every layer's 4 gates, input and recurrent products, at each of the m steps
        H = spec.hidden_dim
        return 2 * spec.chunk_frames * sum(4 * H * ((spec.feat_dim if l == 0 else H) + H) for l in range(spec.num_layers))


def hard_sigmoid(x):
    """Keras 2.2.4's default recurrent activation: clip(0.2 x + 0.5, 0, 1)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


class KerasLSTM(nn.Module):
    """The Keras original's encoder: LSTM layers with the hard-sigmoid gates (docs/keras.md), weights in Keras's
    layout (kernel (in, 4H), recurrent_kernel (H, 4H), one bias (4H,), gates i, f, c, o), last step of the top
    layer. Each layer's input products for all m steps are one matmul; only the recurrence loops over time."""

    def __init__(self, spec):
        super().__init__()
        H = self.hidden_size = spec.hidden_dim
        self.num_layers, self.dropout = spec.num_layers, 0.5
        for l in range(spec.num_layers):
            F_in = spec.feat_dim if l == 0 else H
            self.register_parameter(f'kernel_l{l}', nn.Parameter(torch.empty(F_in, 4 * H)))
            self.register_parameter(f'recurrent_kernel_l{l}', nn.Parameter(torch.empty(H, 4 * H)))
            self.register_parameter(f'bias_l{l}', nn.Parameter(torch.zeros(4 * H)))
            nn.init.xavier_uniform_(getattr(self, f'kernel_l{l}'))  # Keras's glorot_uniform / orthogonal / zeros
            nn.init.orthogonal_(getattr(self, f'recurrent_kernel_l{l}'))
            with torch.no_grad():
                getattr(self, f'bias_l{l}')[H:2 * H] = 1.0  # Keras's unit_forget_bias

    def input_products(self, l, x):  # x: (m, N, in) time-major -> (m, N, 4H) = x K + b for every step at once
        K, b = getattr(self, f'kernel_l{l}'), getattr(self, f'bias_l{l}')
        m, N, F_in = x.shape
        if not (self.training and self.dropout > 0):
            return torch.addmm(b, x.reshape(m * N, F_in), K).view(m, N, -1)
        # Keras (implementation 1): one input dropout mask per sequence and per gate, the same at every step
        H = self.hidden_size
        keep = torch.empty(4, 1, N, F_in, device=x.device, dtype=x.dtype).bernoulli_(1 - self.dropout) / (1 - self.dropout)
        z = torch.einsum('gmnf,gfh->mngh', x.unsqueeze(0) * keep, K.view(F_in, 4, H).permute(1, 0, 2))  # (m, N, 4, H)
        return z.reshape(m, N, 4 * H) + b

    def forward(self, x):  # x: (N, m, F) -> (N, H)
        H = self.hidden_size
        x = x.transpose(0, 1)  # (m, N, F): each step's rows contiguous
        for l in range(self.num_layers):
            z_in = self.input_products(l, x)  # (m, N, 4H)
            R = getattr(self, f'recurrent_kernel_l{l}')  # (H, 4H)
            h = c = x.new_zeros(x.shape[1], H)
            outs = []
            # unbind, not z_in[t]: the backward of an index allocates a zeroed (m, N, 4H) gradient at every step
            for z_t in z_in.unbind(0):
                z = torch.addmm(z_t, h, R)  # (N, 4H): gates i, f, c, o
                g = hard_sigmoid(z)  # the i, f and o slices are used
                c = torch.addcmul(g[:, H:2 * H] * c, g[:, :H], torch.tanh(z[:, 2 * H:3 * H]))
                h = g[:, 3 * H:] * torch.tanh(c)
                outs.append(h)
            x = torch.stack(outs)  # (m, N, H): the next layer's input
        return h  # the top layer's last step

    flops = staticmethod(LastStepLSTM.flops)


def cnn_lengths(m):
    """Time length after each of the CNN's five valid-padding blocks (kernel 3; strides 1, 1, 1, 1, 2):
    m = 62 -> 60, 58, 56, 54, 26."""
    out = []
    for stride in CNN1D.STRIDES:
        m = (m - 3) // stride + 1
        out.append(m)
    return out


class CNN1D(nn.Module):
    """The Keras original's CNN-1D encoder: five blocks Conv1D (valid) -> batch norm -> ReLU over the chunk's
    time axis (the F features are the channels), flatten channel-major, Dense -> ReLU (docs/keras.md).
    Quirk kept: Keras's BatchNormalization(axis=-1) on the channels-first output normalises over *time*, so
    each block's batch norm has one gamma/beta/mean/var per time position, shared by all channels."""
    CHANNELS = (128, 128, 64, 64, 32)
    STRIDES = (1, 1, 1, 1, 2)
    EPS = 1e-3

    def __init__(self, spec):
        super().__init__()
        ins = (spec.feat_dim,) + self.CHANNELS[:-1]
        self.conv = nn.ModuleList(nn.Conv1d(i, o, 3, stride=s) for i, o, s in zip(ins, self.CHANNELS, self.STRIDES))
        self.bn = nn.ModuleList(nn.BatchNorm1d(L, eps=self.EPS, momentum=spec.bn_momentum)
                                for L in cnn_lengths(spec.chunk_frames))
        self.dense = nn.Linear(self.CHANNELS[-1] * cnn_lengths(spec.chunk_frames)[-1], spec.hidden_dim)

    def forward(self, x):  # x: (N, m, F) -> (N, H)
        # activations stay time-major, (N, L, C) in memory: a channels-last (N, C, 1, L) view for the convolutions
        # (oneDNN's fast layout here) and an (N, L, C) view for the batch norm over time, neither copied
        h = x.transpose(1, 2).unsqueeze(2)  # (N, F, 1, m)
        for conv, bn in zip(self.conv, self.bn):
            y = F.conv2d(h, conv.weight.unsqueeze(2), conv.bias, stride=(1, conv.stride[0]))  # (N, c, 1, L)
            z = F.relu(bn(y.squeeze(2).transpose(1, 2)))  # (N, L, c): one batch-norm entry per time step
            h = z.transpose(1, 2).unsqueeze(2)  # (N, c, 1, L)
        return F.relu(self.dense(h.squeeze(2).flatten(1)))  # (N, c*L) channel-major -> (N, H)

    @staticmethod
    def flops(spec):  # per chunk: each convolution's (out, in*3) product at every output step, the dense layer
        ins = (spec.feat_dim,) + CNN1D.CHANNELS[:-1]
        L = cnn_lengths(spec.chunk_frames)
        conv = sum(2 * o * i * 3 * l for i, o, l in zip(ins, CNN1D.CHANNELS, L))
        return conv + 2 * CNN1D.CHANNELS[-1] * L[-1] * spec.hidden_dim


ENCODERS = {
    'LSTM': ('lstm', LastStepLSTM, 1e-5),
    'KerasLSTM': ('lstm', KerasLSTM, 1e-3),  # Keras BatchNormalization: epsilon 1e-3
    'CNN': ('cnn', CNN1D, None),             # no batch norm after the CNN's dense layer
}


# ----------------------------------------------------------------------------------
# aggregation heads: (B, C', H) chunk vectors -> (B, H) utterance vector, (B, C') chunk weights

class MeanHead(nn.Module):
    """NonAtten: the plain mean over chunks; no parameters."""

    def __init__(self, hidden):
        super().__init__()

    def forward(self, h):  # h: (B, C', H)
        w = torch.full(h.shape[:2], 1.0 / h.shape[1], dtype=h.dtype, device=h.device)
        return h.mean(1), w

    @staticmethod
    def flops(H, C):  # per utterance
        return 0


class GatedHead(nn.Sequential):
    """GatedVec: a sigmoid gate per chunk; the output is the *mean* of the gated chunks (not a weighted sum)."""

    def __init__(self, hidden):
        super().__init__(nn.Linear(hidden, 1), nn.Sigmoid())  # keys attn.0.weight, attn.0.bias

    def forward(self, h):  # h: (B, C', H)
        w = super().forward(h)  # (B, C', 1)
        return (h * w).mean(1), w.squeeze(-1)

    @staticmethod
    def flops(H, C):
        return C * 2 * H


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

    @staticmethod
    def flops(H, C):  # RNN input + recurrent products, scores, context; output product
        return C * (2 * H * 2 * H + 2 * H * H + 2 * H) + 2 * 2 * H * H


class SelfAttenHead(nn.TransformerEncoderLayer):
    """SelfAttenVec with the reference's quirk: each chunk is a sequence of length one, so it attends only
    to itself and the chunks never interact (the reference's quirk, docs/differences.md). We feed all B*C' chunks as one (1, B*C', H)
    sequence-first input, which is the same per-chunk computation, dropouts included, then average."""

    def __init__(self, hidden):
        super().__init__(d_model=hidden, nhead=2)  # PyTorch defaults: ff 2048, dropout 0.1, relu, post-norm

    def forward(self, h):  # h: (B, C', H)
        B, C, H = h.shape
        z = super().forward(h.reshape(1, B * C, H)).reshape(B, C, H)
        w = torch.full((B, C), 1.0 / C, dtype=h.dtype, device=h.device)  # uniform: chunks never interact
        return z.mean(1), w

    @staticmethod
    def flops(H, C):  # in_proj (q, k, v), out_proj, the 2048-wide feed-forward block
        return C * 2 * H * (3 * H + H + 2 * 2048)


class MultiHeadAttenVec(nn.Module):
    """The Keras original's SelfAttenVec: true self-attention across the chunks (docs/keras.md). Three heads of 50:
    Q, K, V = E K_j[0..2] (no bias), softmax(Q K^T / sqrt(50)) V; the heads concatenated -> Dense(150 -> H) ->
    ReLU -> + E (residual) -> layer norm (population std, eps added to the std) -> mean over chunks. No
    positional encoding, so the output does not depend on the chunks' order.
    Chunk weights: the attention each chunk receives, averaged over the heads and the query chunks (sum 1)."""
    HEADS, DIM, EPS = 3, 50, 1e-6

    def __init__(self, hidden):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(self.HEADS, 3, hidden, self.DIM))  # [head, q/k/v, in, out]
        nn.init.xavier_uniform_(self.kernel)
        self.dense = nn.Linear(self.HEADS * self.DIM, hidden)
        self.gamma = nn.Parameter(torch.ones(hidden))
        self.beta = nn.Parameter(torch.zeros(hidden))

    def forward(self, h):  # h: (B, C', H)
        B, C, H = h.shape
        q, k, v = torch.einsum('bch,jshd->sbjcd', h, self.kernel)  # each (B, heads, C', 50)
        a = torch.softmax(q @ k.transpose(-1, -2) / self.DIM ** 0.5, dim=-1)  # (B, heads, C' queries, C' keys)
        z = (a @ v).transpose(1, 2).reshape(B, C, self.HEADS * self.DIM)  # (B, C', 150): head 1, 2, 3
        y = F.relu(self.dense(z)) + h  # (B, C', H)
        mu = y.mean(-1, keepdim=True)
        std = (y - mu).pow(2).mean(-1, keepdim=True).sqrt()  # population std; eps is added to it, not to the var
        y = self.gamma * (y - mu) / (std + self.EPS) + self.beta
        return y.mean(1), a.mean(dim=(1, 2))  # (B, H), (B, C') attention received

    @staticmethod
    def flops(H, C):  # Q, K, V; scores and their products with V; the dense layer
        hd = MultiHeadAttenVec.HEADS * MultiHeadAttenVec.DIM
        return C * 2 * H * 3 * hd + 2 * (2 * C * C * hd) + C * 2 * hd * H


# ----------------------------------------------------------------------------------
# utterance-level heads: (B, T, F) frames, NaN after each utterance's end -> (B, 2F) statistics, (B, T) frame weights

class AttnStatsPool(nn.Module):
    """The Odyssey 2024 challenge baseline's pooling (attentive statistics pooling, Okabe et al. 2018), on every
    valid frame of the utterance, no chunks: score_t = v . tanh(W x_t + b), softmax over the valid frames, then the
    weighted mean and the weighted standard deviation of the frames, concatenated. The variance is the weighted
    mean of (x - mu)^2, floored at 1e-5 as the baseline's (it writes E[x^2] - mu^2, the same number in exact
    arithmetic, which cancels in float32 for features far from zero). Padding frames (NaN) get weight 0 and
    never reach an arithmetic operation, so an utterance scored in any batch gives the same numbers."""
    VAR_FLOOR = 1e-5

    def __init__(self, feat_dim):
        super().__init__()
        self.sap_linear = nn.Linear(feat_dim, feat_dim)
        self.attention = nn.Parameter(torch.empty(feat_dim))
        nn.init.normal_(self.attention, mean=0.0, std=1.0)  # the baseline's initialisation

    def forward(self, x):  # x: (B, T, F), NaN rows after each utterance's end
        valid = ~torch.isnan(x[..., 0])  # (B, T)
        x = torch.where(valid.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))  # padding -> 0
        score = torch.tanh(self.sap_linear(x)) @ self.attention  # (B, T)
        w = torch.softmax(score.masked_fill(~valid, float('-inf')), dim=1)  # (B, T), 0 at padding
        mu = torch.einsum('bt,btf->bf', w, x)  # (B, F)
        var = torch.einsum('bt,btf->bf', w, (x - mu.unsqueeze(1)) ** 2)  # (B, F)
        return torch.cat([mu, var.clamp(min=self.VAR_FLOOR).sqrt()], dim=1), w  # (B, 2F), (B, T)

    @staticmethod
    def flops(F, T):  # per utterance of T frames: the projection, the scores, the two weighted sums
        return T * (2 * F * F + 2 * F + 2 * 2 * F)


HEADS = {'NonAtten': MeanHead, 'GatedVec': GatedHead, 'RnnAttenVec': RnnAttenHead, 'SelfAttenVec': SelfAttenHead,
         'MultiHeadAttenVec': MultiHeadAttenVec, 'AttnStatsPool': AttnStatsPool}
assert (tuple(ENCODERS), tuple(HEADS)) == (ENCODER_NAMES, HEAD_NAMES), 'spec.py names the entries of these tables'





# ----------------------------------------------------------------------------------
# the network

class ChunkLevelSER(nn.Module):
    def __init__(self, spec=None):
        super().__init__()
        self.spec = spec = (spec or ModelSpec()).check()
        self.task = task = TASKS[spec.task]
        self.streams = None  # streams.CpuStreams running the LSTM on CPU cores in parallel; not saved
        if spec.reads_frames:
            self.build_frame_network(spec)
        else:
            self.build_chunk_network(spec, task)
        # an audio network's self-supervised model, which makes its input (keys backbone.*; backbone.py)
        self.backbone = Backbone(spec.backbone) if spec.reads_audio else None

    def build_chunk_network(self, spec, task):
        """The chunk-level network: encoder, batch norm, head, fc1, fc2 (the per-chunk tasks: no batch norm, no head)."""
        key, build, bn_eps = ENCODERS[spec.encoder]
        self.encoder_key = key  # the state-dict prefix: lstm.* for both LSTMs (the released files' keys), cnn.*
        self.add_module(key, build(spec))  # first: the reference's state-dict key order
        H = spec.hidden_dim
        # the per-chunk tasks have neither batch norm nor head: keys lstm.*, fc1.*, fc2.* as the released files
        self.bn = nn.BatchNorm1d(H, eps=bn_eps, momentum=spec.bn_momentum) if bn_eps is not None and not task.per_chunk \
            else None
        self.fc1 = nn.Linear(H, H)
        self.fc2 = nn.Linear(H, spec.outputs)
        # the aggregation head (none for per-chunk tasks); defined last: the reference's state-dict key order
        self.attn = None if task.per_chunk else HEADS[spec.head](H)

    def build_frame_network(self, spec):
        """An utterance-level head's network, the challenge baseline's: no chunk encoder (-model only names the
        file), the head on the frames (B, T, F) -> (B, 2F), then its regression MLP: dropout, fc1 (2F -> H), layer
        norm, ReLU, dropout, fc2 (H -> outputs)."""
        self.encoder_key, self.bn = None, None
        self.attn = HEADS[spec.head](spec.feat_dim)
        self.drop = nn.Dropout(0.5)  # the baseline's p for both dropouts
        self.fc1 = nn.Linear(2 * spec.feat_dim, spec.hidden_dim)
        self.norm = nn.LayerNorm(spec.hidden_dim)
        self.fc2 = nn.Linear(spec.hidden_dim, spec.outputs)

    @property
    def encoder(self):  # None for an utterance-level head's network
        return getattr(self, self.encoder_key) if self.encoder_key else None

    def encode(self, x):  # x: (B*C', m, F) -> (B*C', H)
        if self.streams is not None and self.streams.applies(x, self.encoder):
            return torch.cat(self.streams.forward(self.encoder, x))
        return self.encoder(x)

    def chunk_values(self, e):  # e: (N, H) encoded chunks -> (N, outputs): the per-chunk tasks' f(chunk)
        return self.fc2(F.relu(self.fc1(e)))

    def chunk_scores(self, x):  # x: (N, m, F) chunks -> (N, outputs); a ranker's pair (a, b) is f(a) - f(b)
        return self.chunk_values(self.encode(x))

    def from_chunks(self, e, return_chunks=False):
        """e: (B*C', H) encoded chunks -> (B,) utterance values; return_chunks=True adds (B, C') chunk weights (how
        much each chunk counts in the utterance's value) and (B, C') chunk values (task 'chunk'; None otherwise).
        A ranker takes pairs: e (2*B*C', H) the chunks of B first sentences, then of their B partners ->
        (B, C', 2) logits f(a_k) - f(b_k)."""
        if not self.task.sentence:  # a ranker: e holds the chunks of B first sentences, then of their B partners
            if return_chunks:
                raise UserError(f'a {self.spec.task} scores chunk pairs, not utterances: use chunk_scores (retrieval.py)')
            f = self.chunk_values(e).reshape(2, -1, self.spec.chunks_per_utterance, self.spec.outputs)  # (2, B, C', 2)
            return f[0] - f[1]  # (B, C', 2): chunk k of the first sentence against chunk k of the second
        if self.task.per_chunk:
            c = self.chunk_values(e).reshape(-1, self.spec.chunks_per_utterance)  # (B, C')
            y = c.mean(1)  # (B,) the utterance value: the mean of its chunk values, so each weighs 1/C'
            return (y, torch.full_like(c, 1.0 / c.shape[1]), c) if return_chunks else y
        if self.bn is not None:
            e = self.bn(e)
        h = e.reshape(-1, self.spec.chunks_per_utterance, e.shape[-1])  # (B, C', H)
        u, w = self.attn(h)  # (B, H), (B, C')
        y = self.fc2(F.relu(self.fc1(u))).squeeze(-1)  # (B,)
        return (y, w, None) if return_chunks else y

    def from_frames(self, x, return_chunks=False):
        """x: (B, T, F) frames, NaN after each utterance's end -> (B,) utterance values; return_chunks=True adds
        (B, C') chunk weights (the frame weights gathered by chunk_weights, for the plots) and None."""
        u, w = self.attn(x)  # (B, 2F), (B, T)
        y = self.fc2(self.drop(F.relu(self.norm(self.fc1(self.drop(u)))))).squeeze(-1)  # (B,)
        if not return_chunks:
            return y
        return y, self.chunk_weights(w, (~torch.isnan(x[..., 0])).sum(1).tolist()), None

    def chunk_weights(self, w, lengths):
        """(B, T) frame weights, 0 at padding, and the B utterances' frame counts -> (B, C'): the weight of the
        frames in each chunk's span (the spans the chunk-level models read, utils.chunk_spans), over the sum of all
        chunks' (chunks overlap or leave gaps between them, so that sum is not 1 before)."""
        s = self.spec
        spans = torch.from_numpy(np.stack([chunk_spans(T, s.chunk_frames, s.chunks, s.scale) for T in lengths]))
        cum = F.pad(torch.cumsum(w, dim=1), (1, 0))  # (B, T + 1): weight of the frames before t
        mass = cum.gather(1, spans[..., 1].to(w.device)) - cum.gather(1, spans[..., 0].to(w.device))  # (B, C')
        return mass / mass.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)  # all in gaps: 0, not NaN

    def forward(self, x, return_chunks=False):
        """x: (B*C', m, F) chunks; or (B, T, F) frames, NaN after each end (spec.reads_frames); or an audio network's
        (B, N, 1) waveforms, NaN after each end, made the one or the other by its backbone."""
        if self.backbone is not None:
            h, frames = self.backbone(x)  # (B, T, F), (B,)
            x = frames_of(h, frames) if self.spec.reads_frames else \
                chunks_of(h, frames, self.spec.chunk_frames, self.spec.chunks_per_utterance)
        if self.spec.reads_frames:
            return self.from_frames(x, return_chunks)
        return self.from_chunks(self.encode(x), return_chunks)

    def estimate_flops(self, utterances, train=False):
        """FLOPs (multiply-add = 2) of the matrix products for `utterances` utterances, counted from the shapes;
        train=True: forward + backward, about 3x the forward (as nanoGPT's estimate_mfu)."""
        s, H, C = self.spec, self.spec.hidden_dim, self.spec.chunks_per_utterance
        if s.reads_frames:  # counted for utterances of C chunk lengths (about 11 s)
            per_utt = self.attn.flops(s.feat_dim, s.chunk_frames * s.chunks) + 2 * 2 * s.feat_dim * H + 2 * H * s.outputs
            return utterances * per_utt * (3 if train else 1)
        fc = 2 * H * H + 2 * H * s.outputs  # fc1, fc2: once per utterance, or per chunk
        per_utt = C * type(self.encoder).flops(s) + (C * fc if self.task.per_chunk else self.attn.flops(H, C) + fc)
        return utterances * per_utt * (3 if train else 1)


def build_model(spec):
    return ChunkLevelSER(spec)


# The reference's class names, with its constructor and its fixed 11 chunks per utterance.
REFERENCE_CLASSES = {'NonAtten': 'LSTMnet_MeanAtten', 'GatedVec': 'LSTMnet_GateAtten',
                     'RnnAttenVec': 'LSTMnet_RnnAtten', 'SelfAttenVec': 'LSTMnet_SelfAtten'}


def _reference_class(head):
    class Reference(ChunkLevelSER):
        def __init__(self, input_dim, hidden_dim, output_dim=1, num_layers=2):
            super().__init__(ModelSpec(head=head, feat_dim=input_dim, hidden_dim=hidden_dim, num_layers=num_layers,
                                       chunks=11, scale=1))
    Reference.__name__ = Reference.__qualname__ = REFERENCE_CLASSES[head]
    return Reference


LSTMnet_MeanAtten = _reference_class('NonAtten')
LSTMnet_GateAtten = _reference_class('GatedVec')
LSTMnet_RnnAtten = _reference_class('RnnAttenVec')
LSTMnet_SelfAtten = _reference_class('SelfAttenVec')
