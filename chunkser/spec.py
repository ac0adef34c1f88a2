"""The model description: ModelSpec names a network of model.py's ENCODERS x HEADS x TASKS and its sizes, is what a
checkpoint's JSON stores, and says how to feed it. This module imports no torch, so that scoring an exported ONNX
model (onnx_model.py) needs none; model.py builds the networks it describes.
"""
import dataclasses
import math
import numbers
import sys
from dataclasses import dataclass

from .features.frontend import frame_count, receptive_field
from .objectives import CSV_ORDER, check_targets, objective_of
from .utils import DEFAULT_C, DEFAULT_M, DEFAULT_N, FEAT_DIM, HOP, SAMPLE_RATE, UserError

# The names of model.py's tables (it checks they agree): the chunk encoders and the aggregation heads
ENCODER_NAMES = ('LSTM', 'KerasLSTM', 'CNN')
HEAD_NAMES = ('NonAtten', 'GatedVec', 'RnnAttenVec', 'SelfAttenVec', 'MultiHeadAttenVec', 'AttnStatsPool')
FRAME_HEADS = ('AttnStatsPool',)  # heads of the utterance's frames: the network has no chunk encoder
DEFAULT_HEAD = 'SelfAttenVec'  # the reference's head: every command's -atten default


def registered(table):
    """The names of model.py's ENCODERS or HEADS: its tables where it is loaded (an entry added at run time counts),
    else the names above (model.py imports torch; scoring an exported model needs none)."""
    model = sys.modules.get(f'{__package__}.model')
    if model is not None:
        return tuple(getattr(model, table))
    return {'ENCODERS': ENCODER_NAMES, 'HEADS': HEAD_NAMES}[table]


# ----------------------------------------------------------------------------------
# the model description

@dataclass
class ModelSpec:
    """Everything that rebuilds a network and says how to feed it; a checkpoint's JSON holds these fields
    (and, beside them, how it was trained)."""
    encoder: str = 'LSTM'          # ENCODERS: the network that turns one chunk (m, F) into a vector (H,)
    head: str = DEFAULT_HEAD       # HEADS: how the C' chunk vectors become one utterance vector; None for
                                   # the per-chunk tasks
    task: str = 'utterance'        # TASKS: 'utterance' | 'chunk' (seq2seq: one value per chunk) | 'ranker'
    emo: str = 'Act'               # its targets (objectives.py): an attribute, several joined ('ActValDom'), 'Class'
    classes: list = None           # emo Class: the class letters, in the order of the outputs
    feat_dim: int = FEAT_DIM       # F, features per frame
    hidden_dim: int = FEAT_DIM     # H, chunk vector size
    num_layers: int = 2            # recurrent layers of an LSTM encoder
    chunk_frames: int = DEFAULT_M  # m, frames per chunk
    chunks: int = DEFAULT_C        # C, chunks per utterance before scaling
    scale: int = DEFAULT_N         # n: the utterance is cut into n*C chunks
    bn_momentum: float = 0.1       # every batch norm's, PyTorch's convention (Keras's 0.99 is 0.01)
    norm_fingerprint: str = None   # NormTerm the model was trained with (normterm.NormTerms.fingerprint), if known
    norm_dir: str = None           # where that NormTerm was
    frontend: dict = None          # the features' front end (frontend.py's record, F/frontend.json); None: IS13 LLDs
                                   # (an audio network: the record of the model its backbone started from)
    backbone: dict = None          # an audio network's self-supervised model (backbone.py): it reads 16 kHz audio
    labels: dict = None            # an audio network's label terms, {attribute: [Train mean, Train std]} (no NormTerm)

    @property
    def chunks_per_utterance(self):  # C' = n*C
        return self.chunks * self.scale

    @property
    def reads_frames(self):
        """The network reads the utterance's frames (B, T, F), not its chunks: an utterance-level head."""
        return self.head in FRAME_HEADS

    @property
    def reads_audio(self):
        """The network reads 16 kHz waveforms (B, N, 1), its backbone inside (an audio network)."""
        return self.backbone is not None

    @property
    def input_hop(self):
        """Seconds per row of the network's input: a sample of audio, else a feature frame."""
        return 1.0 / SAMPLE_RATE if self.reads_audio else (HOP if self.frontend is None else float(self.frontend["hop"]))

    def frames_of(self, rows):
        """The feature frames the chunks are cut from, for `rows` rows of input (an audio network: its backbone's
        frames of that many samples)."""
        if not self.reads_audio:
            return rows
        cfg = self.backbone['config']
        return frame_count(max(rows, receptive_field(cfg['conv_kernel'], cfg['conv_stride'])), cfg['conv_kernel'],
                           cfg['conv_stride'])

    @property
    def outputs(self):  # width of fc2: the task's, else one per attribute or class
        return TASKS[self.task].outputs or objective_of(self).outputs

    def check(self):
        check_field_types(self)
        for field, table in (('encoder', registered('ENCODERS')), ('task', TASKS)):
            if getattr(self, field) not in table:
                raise UserError(f'unknown {field} {getattr(self, field)!r} (expected one of {", ".join(table)})')
        if TASKS[self.task].per_chunk:
            if self.head is not None:
                raise UserError(f'head {self.head!r} for task {self.task!r}: its chunks have no head (head None)')
        elif self.head not in registered('HEADS'):
            raise UserError(f'unknown head {self.head!r} for task {self.task!r} (expected one of '
                            f'{", ".join(registered("HEADS"))})')
        if self.task != 'utterance' and self.emo not in CSV_ORDER:
            raise UserError(f'emo {self.emo!r} for task {self.task!r}: its models predict one attribute')
        check_targets(self.emo, self.classes)
        if self.head == 'SelfAttenVec' and self.hidden_dim % 2:  # its two attention heads split H
            raise UserError(f'hidden size {self.hidden_dim}: SelfAttenVec needs an even one (two heads)')
        if self.classes is not None:
            self.classes = list(self.classes)
        if self.backbone is not None:
            check_backbone(self.backbone)
            if self.feat_dim != self.backbone['config']['hidden_size']:
                raise UserError(f'feat_dim {self.feat_dim}: an audio network\'s is its backbone\'s hidden_size '
                                f'{self.backbone["config"]["hidden_size"]}')
        check_labels(self.labels)
        return self

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d, path='model description'):
        """The fields of a checkpoint's JSON; other keys (how it was trained) are ignored. JSON written before
        ModelSpec existed names the head 'atten' and has no encoder or task: LSTM, utterance; a head 'None' is None."""
        if not isinstance(d, dict):
            raise UserError(f'{path}: expected a JSON object of the model\'s fields, found a {type(d).__name__}')
        d = dict(d)
        if 'atten' in d and 'head' not in d:
            d['head'] = d['atten']
        if d.get('head') == 'None':  # JSON written before the per-chunk tasks' head was null
            d['head'] = None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names}).check()
        except UserError as e:
            raise UserError(f'{path}: {e}')


# What each size may be: whole numbers in these ranges, far beyond any model of the papers or of the front ends,
# and far below what would allocate more memory than a machine has before a single weight is checked.
INT_RANGES = {'feat_dim': (1, 1 << 16), 'hidden_dim': (1, 1 << 16), 'num_layers': (1, 64),
              'chunk_frames': (1, 10000), 'chunks': (1, 1000), 'scale': (1, 100)}
OPTIONAL_TEXT = ('head', 'norm_fingerprint', 'norm_dir')  # a string or None


def check_field_types(spec):
    """Every field of a ModelSpec of the type and in the range it must have (a checkpoint's JSON may say
    anything): one line naming the field, the value and what was expected."""
    def bad(field, expected):
        raise UserError(f'{field} {getattr(spec, field)!r}: expected {expected}')
    for field, (lo, hi) in INT_RANGES.items():
        v = getattr(spec, field)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
            bad(field, f'a whole number from {lo} to {hi}')
        setattr(spec, field, int(v))
    m = spec.bn_momentum
    if isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0 < m <= 1:
        bad('bn_momentum', 'a number in (0, 1]')
    for field in ('encoder', 'task', 'emo'):
        if not isinstance(getattr(spec, field), str):
            bad(field, 'a name (text)')
    for field in OPTIONAL_TEXT:
        if getattr(spec, field) is not None and not isinstance(getattr(spec, field), str):
            bad(field, 'a name (text) or null')
    if spec.classes is not None and (not isinstance(spec.classes, (list, tuple)) or
                                     not all(isinstance(c, str) for c in spec.classes)):
        bad('classes', 'a list of class letters or null')
    f = spec.frontend
    if f is not None:
        hop = f.get('hop') if isinstance(f, dict) else None
        if isinstance(hop, bool) or not isinstance(hop, numbers.Real) or not 0 < hop < 10 or \
                not all(isinstance(f.get(k), str) for k in ('frontend', 'weights_sha256', 'config_sha256')):
            bad('frontend', "null or a front end's record (frontend.json: its name, sums and hop in seconds)")


# ----------------------------------------------------------------------------------
# audio networks: the backbone's description and the label terms

BACKBONE_TYPES = ('wavlm', 'wav2vec2', 'hubert')  # speech models transformers builds itself, with a conv encoder
BACKBONE_SIZES = ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size',
                  'num_conv_pos_embeddings', 'num_conv_pos_embedding_groups')
SIZE_LIMIT = 1 << 16  # far beyond any published model, far below what would exhaust memory when built


def _whole(v, lo=1, hi=SIZE_LIMIT):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and lo <= v <= hi


def check_backbone(d):
    """A spec's backbone (a checkpoint's JSON may say anything): every field typed and ranged before transformers
    sees it; one line naming what is wrong."""
    if not isinstance(d, dict) or not isinstance(d.get('config'), dict):
        raise UserError('backbone: expected an object with the model\'s config')
    cfg = d['config']
    if cfg.get('model_type') not in BACKBONE_TYPES or 'auto_map' in cfg:
        raise UserError(f'backbone model_type {cfg.get("model_type")!r}: expected one of {", ".join(BACKBONE_TYPES)} '
                        '(and no auto_map: no model code is run)')
    for k in BACKBONE_SIZES:
        if not _whole(cfg.get(k)):
            raise UserError(f'backbone config {k} {cfg.get(k)!r}: expected a whole number from 1 to {SIZE_LIMIT}')
    for k in ('conv_dim', 'conv_kernel', 'conv_stride'):
        v = cfg.get(k)
        if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 32 or not all(_whole(i) for i in v):
            raise UserError(f'backbone config {k} {v!r}: expected a list of whole numbers')
    layers = d.get('layers')
    if layers != 'all' and not _whole(layers, 0, cfg['num_hidden_layers']):
        raise UserError(f'backbone layers {layers!r}: expected "all" or 0 to {cfg["num_hidden_layers"]}')
    for k in ('finetune', 'normalize'):
        if not isinstance(d.get(k), bool):
            raise UserError(f'backbone {k} {d.get(k)!r}: expected true or false')
    return d


def check_labels(labels):
    """The label terms: null, or {attribute: [mean, std]} with finite numbers and std > 0."""
    if labels is None:
        return
    ok = isinstance(labels, dict) and all(
        k in CSV_ORDER and isinstance(v, (list, tuple)) and len(v) == 2 and
        all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in v) and v[1] > 0
        for k, v in labels.items())
    if not ok:
        raise UserError(f'labels {labels!r}: expected null or {{attribute: [Train mean, Train std > 0]}}')


# ----------------------------------------------------------------------------------
# tasks: what the network predicts

@dataclass(frozen=True)
class Task:
    outputs: int     # width of fc2 (0: the objective's, objectives.py)
    per_chunk: bool  # fc1 -> ReLU -> fc2 on every chunk vector (no batch norm, no head), not on the head's output
    doc: str
    sentence: bool = True  # has a value per utterance (per-chunk tasks: the mean of the chunk values)

    @property
    def curve(self):
        """A value per chunk that is the emotion curve of the utterance (the seq2seq model's)."""
        return self.per_chunk and self.sentence


TASKS = {
    'utterance': Task(0, False, 'one value per utterance: encoder, batch norm, head, fc1 -> ReLU -> fc2'),
    # Lin & Busso TASLP 2023 (docs/retrieval.md): the utterance value is the mean of the chunk values
    'chunk': Task(1, True, "seq2seq: a value per chunk, fc1 -> ReLU -> fc2 (H -> 1); the utterance's is their mean"),
    # the emotion ranker: f(chunk) = fc1 -> ReLU -> fc2 (H -> 2); a pair (a, b) scores f(a) - f(b)
    'ranker': Task(2, True, 'chunk ranker: 2 logits per chunk; a pair (a, b) gives f(a) - f(b)', sentence=False),
}
SENTENCE_TASKS = tuple(t for t, v in TASKS.items() if v.sentence)  # what testing and predict score


# what predict.py's plots say a head's chunk weights are
HEAD_WEIGHTS = {
    'SelfAttenVec': "each chunk attends only to itself (the chunks never interact), so every weight is 1/C'",
    'NonAtten': "the plain mean over chunks, so every weight is 1/C'",
    'GatedVec': 'a sigmoid gate per chunk (0..1), averaged over the chunks',
    'RnnAttenVec': 'softmax attention over the chunk sequence (weights sum to 1)',
    'MultiHeadAttenVec': 'the attention each chunk receives, averaged over the 3 heads and the query chunks (sum 1)',
    'AttnStatsPool': "no chunks: the attention of the frames in each chunk's span, summed, over all chunks' sum (sum 1)",
}
EQUAL_WEIGHT_HEADS = ('SelfAttenVec', 'NonAtten')  # heads whose chunk weights are all 1/C'
