"""What the trainer trains: one class per task, holding everything that differs between them, so a new task is one
class here (and its network in model.TASKS, its objective in objectives.py).

  utterance  the sequence-to-one model: the label table's targets of Train and the validation split
  ranker     the retrieval follow-up's emotion ranker: preference_labels.py's Train and Validation pairs, chunk k of
             one sentence against chunk k of the other, each epoch a fresh sample of --pairs-per-epoch pairs
  chunk      its seq2seq model: a value per chunk, trained on the raters' mean and the emotion curve of the Train
             ranks (retrieval.py's rank file); validated against the consensus labels

Each task gives its defaults (scale n, learning rate, head), checks its options, loads its data (TrainingData) and
says what the checkpoint's JSON and the resume state record of its inputs. The sequence-to-one model also trains
from audio (--wav-dir): the waveforms instead of features, the Train label terms instead of a NormTerm, and the
self-supervised model its network starts from (train/audio.py adds what the loop needs of it).
"""
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .audio_store import open_audio, require_audio_files
from .corpus import ATTRIBUTES, check_features, read_label_table, require_feature_files, resolve_split, split_rows
from .features.frontend import SSLFrontEnd, default_chunk_frames
from .files import file_sha256
from .model import DEFAULT_HEAD
from .normterm import LabelTerms, NormTerms
from .objectives import CLASS, Curves, RankerObjective, training_objective
from .retrieval.preferences import PAIR_SPLITS, pair_file
from .retrieval.ranks import rank_file, read_provenance, read_ranks
from .retrieval.raters import rater_values, read_raters
from .store import open_features
from .utils import DEFAULT_N, UserError, chunk_batch


@dataclass
class TrainingData:
    """A task's data: features and targets of Train and of the validation split, and what the JSON records of the
    task's own inputs (the ranker's pair files, the seq2seq model's ranks and raters' labels)."""
    norm: object          # NormTerms
    objective: object     # objectives.py: the loss and the validation figure
    train: tuple          # (features, targets (N,) or (N, k))
    val: tuple            # (features, targets)
    inputs: dict = field(default_factory=dict)
    backbone: object = None  # an audio network's pretrained model (frontend.SSLFrontEnd), copied into the network


class UtteranceTask:
    """The sequence-to-one model: one value (or class) per utterance, through the aggregation head."""
    name = 'utterance'
    defaults = dict(scale=DEFAULT_N, lr=1e-4, atten=DEFAULT_HEAD)  # the reference's

    def check(self, args):
        """Options that do not fit the task (after the defaults are filled in)."""

    def load(self, args, d, say):
        return load_corpus(args, d, say)

    def epoch_sample(self, args):
        """Items drawn per epoch (None: every Train item once)."""
        return None

    def settings(self, args, data):
        """What a resumed run must share with the run it continues, of this task's own inputs."""
        return dict(pairs_per_epoch=self.epoch_sample(args), prefs=data.inputs.get('prefs'),
                    curves=data.inputs.get('curves'))

    def provenance(self, args, data):
        """What the checkpoint's JSON records of this task's own inputs."""
        return dict(data.inputs)


class PerChunkTask(UtteranceTask):
    """The retrieval follow-up's per-chunk networks: one attribute, no aggregation head, n = 2 (22 chunks)."""
    what = ''

    def check(self, args):
        if args.emo not in ATTRIBUTES:
            raise UserError(f'--task {self.name} -emo {args.emo}: {self.what} learns one attribute (Act, Val or Dom)')
        if args.atten is not None:
            raise UserError(f'--task {self.name} -atten {args.atten}: {self.what} has no aggregation head (-atten is '
                            'for the sequence-to-one model)')


class RankerTask(PerChunkTask):
    name, what = 'ranker', 'a ranker'
    defaults = dict(scale=2, lr=1e-4)

    def check(self, args):
        super().check(args)
        if args.prefs_dir is None:
            raise UserError('--task ranker needs --prefs-dir (the folder preference_labels.py wrote)')
        if args.pairs_per_epoch < 1:
            raise UserError('--pairs-per-epoch must be at least 1')

    def load(self, args, d, say):
        return load_pair_corpus(args, d, say)

    def epoch_sample(self, args):
        return args.pairs_per_epoch

    def provenance(self, args, data):
        return dict(pairs_per_epoch=args.pairs_per_epoch, **data.inputs)


class ChunkTask(PerChunkTask):
    name, what = 'chunk', 'a seq2seq model'
    defaults = dict(scale=2, lr=1e-3)

    def check(self, args):
        super().check(args)
        if args.detailed is None:
            raise UserError('--task chunk needs --detailed FILE (the raters\' labels: labels_detailed.json or .csv)')

    def load(self, args, d, say):
        return load_curve_corpus(args, d, say)


TRAINING_TASKS = {t.name: t for t in (UtteranceTask(), RankerTask(), ChunkTask())}


# ----------------------------------------------------------------------------------
# the sequence-to-one model's data: the label table

def open_inputs(args, fnames, split, norm, progress=True):
    """What the network reads of a split's files: their waveforms (--wav-dir: an audio store) or their features."""
    if args.wav_dir:
        require_audio_files(args.wav_dir, fnames, split)
        return open_audio(args.store, args.wav_dir, fnames, progress=progress, dtype=args.store_dtype)
    require_feature_files(args.feat_dir, fnames, split)
    # building a store reads every file, so a corrupt one is named here and not at iteration 4000
    return open_features(args.store, args.feat_dir, fnames, norm, progress=progress, dtype=args.store_dtype)


def load_split(df, split, objective, args, norm, say, progress=True):
    """(features, targets (N,) or (N, k), split name) of one split: the rows the objective takes, as its targets."""
    rows = split_rows(df, split)
    if len(rows) == 0:
        raise UserError(f'{args.label_csv}: split {split!r} is empty')
    kept = objective.select(rows, args.label_csv, split)
    if len(kept) < len(rows):
        say(f'{split}: {len(rows) - len(kept)} rows of other classes left out '
            f'({", ".join(f"{c} {n}" for c, n in rows.loc[~rows.index.isin(kept.index), "EmoClass"].astype(str).value_counts().items())})')
    fnames = [str(f) for f in kept['FileName']]
    return open_inputs(args, fnames, split, norm, progress), objective.targets(kept, norm), split


def load_corpus(args, d, say):
    """NormTerm, the objective, then (features, targets) of Train and of the validation split, every file read once.
    From audio (--wav-dir): the label terms of the Train rows instead of a NormTerm, the waveforms, and the
    self-supervised model the network starts from."""
    df = read_label_table(args.label_csv)
    backbone = load_backbone(args, say) if args.wav_dir else None
    norm = LabelTerms.from_rows(split_rows(df, resolve_split(df, 'train', args.label_csv))) if args.wav_dir else \
        NormTerms.load(args.norm_dir)
    t0 = time.perf_counter()
    objective = training_objective(args.emo, split_rows(df, resolve_split(df, 'train', args.label_csv)), args.label_csv,
                                   args.classes, args.class_weights == 'inverse', args.ccc_variance == 'population')
    if args.emo == CLASS:
        say(f'classes: {" ".join(objective.classes)}' + (' (weights ' + ' '.join(
            f'{w:.3g}' for w in objective.class_weights) + ')' if objective.class_weights else ''))
    train, val = (load_split(df, resolve_split(df, which, args.label_csv), objective, args, norm, say, d.main)
                  for which in ('train', 'validation'))
    for feats, labels, split in (train, val):
        if len(labels) < 2:
            raise UserError(f'{args.label_csv}: the {split} split needs at least 2 utterances')
    if d.main and args.store is None and not args.wav_dir:  # read every file once now, so a corrupt one fails here
        check_features(args.feat_dir, train[0].fnames + val[0].fnames, norm.feat_dim)
    say(f'corpus: {len(train[1])} train, {len(val[1])} {val[2].lower()} utterances (checked in '
        f'{time.perf_counter() - t0:.1f} s)')
    return TrainingData(norm, objective, train[:2], val[:2], backbone=backbone)


def load_backbone(args, say):
    """--frontend's model, which an audio network starts from (refused when its hop gives chunks of under two
    frames: the chunk rule needs m = int(1 s / hop) frames of ~1 s)."""
    front = SSLFrontEnd(args.frontend, None if args.layers in (None, 'all') else args.layers, args.normalize)
    if args.chunk_frames is None:  # ~1 s at the model's hop
        args.chunk_frames = default_chunk_frames(front.record)
    if default_chunk_frames(front.record) < 2:
        raise UserError(f'{args.frontend}: a hop of {front.hop:g} s gives {default_chunk_frames(front.record)} frame(s) '
                        'per ~1 s chunk; the chunk rule needs at least 2 (a model with a hop under 0.5 s)')
    say(f'backbone: {front.record["model_type"]} from {front.name} ({sum(p.numel() for p in front.model.parameters())} '
        f'parameters, hop {front.hop:g} s, {"fine-tuned" if args.finetune else "frozen"}, layers {args.layers or front.layer})')
    return front


# ----------------------------------------------------------------------------------
# the ranker's data: preference pairs

class PairFeatures:
    """A batch of preference pairs read as the chunks of their first sentences, then of their second ones:
    pair indices -> (2*b*C', m, F), what a ranker's forward takes (model.py)."""

    def __init__(self, feats, pairs):
        self.feats, self.pairs, self.fnames = feats, pairs, feats.fnames  # pairs: (P, 2) sentence indices

    def gather(self, idx, m, C, n):
        return chunk_batch(self.feats, np.concatenate([self.pairs[idx, 0], self.pairs[idx, 1]]), m, C, n)


def read_pairs(path, emo):
    """preference_labels.py's CSV -> ((P, 2) sentence indices into `names`, (P,) int64 labels, names in order of
    first appearance)."""
    import pandas as pd
    try:
        t = pd.read_csv(path, dtype={'Sentence1': str, 'Sentence2': str})
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable preference-pair CSV ({type(e).__name__})')
    if list(t.columns) != ['Sentence1', 'Sentence2', 'PreferLabel'] or len(t) == 0:
        raise UserError(f'{path}: expected the columns Sentence1,Sentence2,PreferLabel and at least one pair')
    codes, names = pd.factorize(pd.concat([t['Sentence1'], t['Sentence2']]))  # (2P,)
    return codes.reshape(2, -1).T.astype(np.int64), t['PreferLabel'].to_numpy(np.int64), list(names)


def prefs_paths(prefs_dir, emo):
    """The Train and Validation pair files of -emo in --prefs-dir; a folder of another attribute is refused."""
    paths = [pair_file(prefs_dir, split, emo) for split in PAIR_SPLITS]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        other = sorted(f for f in (os.listdir(prefs_dir) if os.path.isdir(prefs_dir) else [])
                       if f.endswith('.csv') and '_pairs_' in f)
        if other:
            raise UserError(f'{prefs_dir}: a prefs folder of another attribute ({", ".join(other)}; -emo {emo} needs '
                            f'{os.path.basename(missing[0])})')
        raise UserError(f'{missing[0]}: not found (write it with preference_labels.py -emo {emo})')
    return paths


def prefs_inputs(prefs_dir, emo):
    """What the JSON records of a ranker's inputs: the prefs folder and the sums of its two pair files."""
    return {'prefs_dir': os.path.abspath(prefs_dir),
            **{os.path.basename(p): file_sha256(p) for p in prefs_paths(prefs_dir, emo)}}


def load_pair_corpus(args, d, say):
    """NormTerm, the ranker objective, then (pair features, (P,) labels) of the Train and Validation pairs: the
    features of the sentences that appear in them, each file read once."""
    norm = NormTerms.load(args.norm_dir)
    t0 = time.perf_counter()
    out = []
    for split, path in zip(PAIR_SPLITS, prefs_paths(args.prefs_dir, args.emo)):
        pairs, labels, names = read_pairs(path, args.emo)
        require_feature_files(args.feat_dir, names, split)
        out.append((PairFeatures(open_features(args.store, args.feat_dir, names, norm, progress=d.main, dtype=args.store_dtype), pairs), labels))
    say(f'pairs: {len(out[0][1])} train, {len(out[1][1])} validation (read in {time.perf_counter() - t0:.1f} s)')
    return TrainingData(norm, RankerObjective(args.emo), out[0], out[1],
                        dict(prefs=prefs_inputs(args.prefs_dir, args.emo)))


# ----------------------------------------------------------------------------------
# the seq2seq model's data: the Train ranks' curves and the raters' labels

def curve_inputs(args, ranks_path, n):
    """What the JSON records of a seq2seq model's inputs: the Train rank file, its sha256 and its ranker's; the
    details file and its sha256."""
    return {'ranks': os.path.abspath(ranks_path), 'ranks_sha256': file_sha256(ranks_path),
            'ranker_sha256': read_provenance(ranks_path).get('ranker_sha256'),
            'detailed': os.path.abspath(args.detailed), 'detailed_sha256': file_sha256(args.detailed), 'train_files': n}


def load_curve_corpus(args, d, say):
    """NormTerm, the curve objective, then Train (features, (N, 1 + C') targets: the raters' mean and the curve of
    the ranks) and the validation split (features, (N,) consensus targets)."""
    norm = NormTerms.load(args.norm_dir)
    df = read_label_table(args.label_csv)
    objective = Curves((args.emo,), args.ccc_variance == 'population')
    t0 = time.perf_counter()
    train_split = resolve_split(df, 'train', args.label_csv)
    fnames = [str(f) for f in split_rows(df, train_split)['FileName']]
    path, k = rank_file(args.ranks_dir, 'Train', args.emo), args.chunks * args.scale
    ranks = read_ranks(path, fnames, k, args.emo)  # (N, C')
    values = rater_values(read_raters(args.detailed), fnames, f'Emo{args.emo}', args.detailed)
    inputs = dict(curves=curve_inputs(args, path, len(fnames)))
    require_feature_files(args.feat_dir, fnames, train_split)
    train = open_features(args.store, args.feat_dir, fnames, norm, progress=d.main, dtype=args.store_dtype), \
        objective.curve_targets(values, ranks, norm)
    val = load_split(df, resolve_split(df, 'validation', args.label_csv), objective, args, norm, say, d.main)
    if len(fnames) < 2 or len(val[1]) < 2:
        raise UserError(f'{args.label_csv}: the Train and validation splits need at least 2 utterances each')
    if d.main and args.store is None:  # every file read once now, so a corrupt one fails here
        check_features(args.feat_dir, train[0].fnames + val[0].fnames, norm.feat_dim)
    say(f'corpus: {len(fnames)} train utterances with {k} chunk ranks each ({path}), {len(val[1])} '
        f'{val[2].lower()} utterances (checked in {time.perf_counter() - t0:.1f} s)')
    return TrainingData(norm, objective, train, val[:2], inputs)
