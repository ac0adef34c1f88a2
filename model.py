"""The chunk-level network, described by one ModelSpec: a chunk encoder, an aggregation head, a task.

Input (B*C', m, F) chunks, C' = n*C consecutive chunks per utterance -> output (B,).
A network is an entry of ENCODERS x HEADS x TASKS; ModelSpec names the entries and the sizes, is what a
checkpoint's JSON stores, and rebuilds the model (build_model). For encoder LSTM the state-dict keys are
the PyTorch reference's (lstm.*, bn.*, attn.*, fc1.*, fc2.*), so the released v1.6 checkpoints load with
strict=True and our checkpoints load in the reference code. The per-chunk tasks of the retrieval follow-up
(Lin & Busso, TASLP 2023: the seq2seq model 'chunk' and the emotion ranker 'ranker') have head NO_HEAD and
the keys lstm.*, fc1.*, fc2.* of its released files.
"""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import DEFAULT_C, DEFAULT_M, DEFAULT_N, FEAT_DIM, UserError


# ----------------------------------------------------------------------------------
# the model description

@dataclass
class ModelSpec:
    """Everything that rebuilds a network and says how to feed it; a checkpoint's JSON holds these fields
    (and, beside them, how it was trained)."""
    encoder: str = 'LSTM'          # ENCODERS: the network that turns one chunk (m, F) into a vector (H,)
    head: str = 'SelfAttenVec'     # HEADS: how the C' chunk vectors become one utterance vector; NO_HEAD for
                                   # the per-chunk tasks
    task: str = 'utterance'        # TASKS: 'utterance' | 'chunk' (seq2seq: one value per chunk) | 'ranker'
    emo: str = 'Act'               # the attribute it predicts
    feat_dim: int = FEAT_DIM       # F, features per frame
    hidden_dim: int = FEAT_DIM     # H, chunk vector size
    num_layers: int = 2            # recurrent layers of an LSTM encoder
    chunk_frames: int = DEFAULT_M  # m, frames per chunk
    chunks: int = DEFAULT_C        # C, chunks per utterance before scaling
    scale: int = DEFAULT_N         # n: the utterance is cut into n*C chunks
    norm_fingerprint: str = None   # NormTerm the model was trained with (utils.NormTerms.fingerprint), if known
    norm_dir: str = None           # where that NormTerm was

    @property
    def chunks_per_utterance(self):  # C' = n*C
        return self.chunks * self.scale

    def check(self):
        heads = [NO_HEAD] if self.task in TASKS and TASKS[self.task].per_chunk else HEADS
        for field, table in (('encoder', ENCODERS), ('task', TASKS), ('head', heads)):
            if getattr(self, field) not in table:
                what = f' for task {self.task!r}' if field == 'head' else ''
                raise UserError(f'unknown {field} {getattr(self, field)!r}{what} '
                                f'(expected one of {", ".join(table)})')
        return self

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d, path='model description'):
        """The fields of a checkpoint's JSON; other keys (how it was trained) are ignored. JSON written before
        ModelSpec existed names the head 'atten' and has no encoder or task: LSTM, utterance."""
        d = dict(d)
        if 'atten' in d and 'head' not in d:
            d['head'] = d['atten']
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names}).check()
        except UserError as e:
            raise UserError(f'{path}: {e}')


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


ENCODERS = {
    'LSTM': ('lstm', LastStepLSTM, 1e-5),
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
    to itself and the chunks never interact (SPEC). We feed all B*C' chunks as one (1, B*C', H)
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


HEADS = {'NonAtten': MeanHead, 'GatedVec': GatedHead, 'RnnAttenVec': RnnAttenHead, 'SelfAttenVec': SelfAttenHead}
# what predict.py's plots say a head's chunk weights are
HEAD_WEIGHTS = {
    'SelfAttenVec': "each chunk attends only to itself (the chunks never interact), so every weight is 1/C'",
    'NonAtten': "the plain mean over chunks, so every weight is 1/C'",
    'GatedVec': 'a sigmoid gate per chunk (0..1), averaged over the chunks',
    'RnnAttenVec': 'softmax attention over the chunk sequence (weights sum to 1)',
}



# ----------------------------------------------------------------------------------
# tasks: what the network predicts

@dataclass(frozen=True)
class Task:
    outputs: int     # width of fc2
    per_chunk: bool  # fc1 -> ReLU -> fc2 on every chunk vector (no batch norm, no head), not on the head's output
    doc: str


NO_HEAD = 'None'  # the head name of the per-chunk tasks (they have none)
TASKS = {
    'utterance': Task(1, False, 'one value per utterance: encoder, batch norm, head, fc1 -> ReLU -> fc2'),
    # Lin & Busso TASLP 2023 (SPEC-retrieval.md section 5): the utterance value is the mean of the chunk values
    'chunk': Task(1, True, "seq2seq: a value per chunk, fc1 -> ReLU -> fc2 (H -> 1); the utterance's is their mean"),
    # the emotion ranker (section 2): f(chunk) = fc1 -> ReLU -> fc2 (H -> 2); a pair (a, b) scores f(a) - f(b)
    'ranker': Task(2, True, 'chunk ranker: 2 logits per chunk; a pair (a, b) gives f(a) - f(b)'),
}


# ----------------------------------------------------------------------------------
# the network

class ChunkLevelSER(nn.Module):
    def __init__(self, spec=None):
        super().__init__()
        self.spec = spec = (spec or ModelSpec()).check()
        self.task = task = TASKS[spec.task]
        name, build, bn_eps = ENCODERS[spec.encoder]
        self.encoder_name = name
        self.add_module(name, build(spec))  # first: the reference's state-dict key order
        H = spec.hidden_dim
        # the per-chunk tasks have neither batch norm nor head: keys lstm.*, fc1.*, fc2.* as the released files
        self.bn = nn.BatchNorm1d(H, eps=bn_eps) if bn_eps is not None and not task.per_chunk else None
        self.fc1 = nn.Linear(H, H)
        self.fc2 = nn.Linear(H, task.outputs)
        self.attn = None if task.per_chunk else HEADS[spec.head](H)  # last: the reference's state-dict key order
        self.streams = None  # streams.CpuStreams running the LSTM on CPU cores in parallel; not saved

    @property
    def encoder(self):
        return getattr(self, self.encoder_name)

    def encode(self, x):  # x: (B*C', m, F) -> (B*C', H)
        if self.streams is not None and self.streams.applies(x):
            return torch.cat(self.streams.forward(self.encoder, x))
        return self.encoder(x)

    def chunk_values(self, e):  # e: (N, H) encoded chunks -> (N, outputs): the per-chunk tasks' f(chunk)
        return self.fc2(F.relu(self.fc1(e)))

    def chunk_scores(self, x):  # x: (N, m, F) chunks -> (N, outputs); a ranker's pair (a, b) is f(a) - f(b)
        return self.chunk_values(self.encode(x))

    def head(self, e, return_weights=False):
        """e: (B*C', H) encoded chunks -> (B,) [, (B, C') chunk weights, or for task 'chunk' the chunk values]."""
        if self.spec.task == 'chunk':
            c = self.chunk_values(e).reshape(-1, self.spec.chunks_per_utterance)  # (B, C')
            y = c.mean(1)  # (B,) the utterance value: the mean of its chunk values
            return (y, c) if return_weights else y
        if self.spec.task == 'ranker':
            raise UserError('a ranker scores chunk pairs, not utterances: use chunk_scores (retrieval.py)')
        if self.bn is not None:
            e = self.bn(e)
        h = e.reshape(-1, self.spec.chunks_per_utterance, e.shape[-1])  # (B, C', H)
        u, w = self.attn(h)  # (B, H), (B, C')
        y = self.fc2(F.relu(self.fc1(u))).squeeze(-1)  # (B,)
        return (y, w) if return_weights else y

    def forward(self, x, return_weights=False):  # x: (B*C', m, F)
        return self.head(self.encode(x), return_weights)

    def estimate_flops(self, utterances, train=False):
        """FLOPs (multiply-add = 2) of the matrix products for `utterances` utterances, counted from the shapes;
        train=True: forward + backward, about 3x the forward (as nanoGPT's estimate_mfu)."""
        s, H, C = self.spec, self.spec.hidden_dim, self.spec.chunks_per_utterance
        fc = 2 * H * H + 2 * H * self.task.outputs  # fc1, fc2: once per utterance, or per chunk
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
