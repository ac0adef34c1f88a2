"""Train a chunk-level SER model (the reference's procedure, for every encoder, head and objective).

    python training.py -iter 5000 -batch 128 -emo Dom -atten SelfAttenVec \\
        [-model LSTM|CNN|KerasLSTM] [-ep E] [-emo Act Val Dom | -emo Class [--classes A S H N]]
        [--feat-dir DIR --label-csv FILE --norm-dir DIR --out-dir ./Models --device auto --seed S]
    torchrun --standalone --nproc_per_node=N training.py ...     (same arguments; -batch is the global batch)

Adam (lr 1e-4) over epochs of shuffled Train batches; every 50 iterations (and at the last one; with -ep at the
end of each epoch) the whole validation split is scored and the model is saved when the validation figure is
strictly better than the best so far: the mean 1 - CCC over validation batches (lower), or for -emo Class the
macro-F1 (higher). Writes, in --out-dir:
  {model}_iter{iter}_batch{batch}_ChunkSeq2One_{atten}_{emo}.pth.tar   the best model, a plain state_dict
  ... .json          its ModelSpec and how it was trained (NormTerm fingerprint, iteration, validation figure, seed)
  ... .history.csv   every validation;   ... .png   the curves
  ... .resume.pt     the full training state at the last validation or interruption (--resume continues)

    python training.py --task ranker -ep 20 -batch 128 -emo Act --prefs-dir ./prefs [--pairs-per-epoch 100000] ...
trains the retrieval follow-up's emotion ranker (SPEC-retrieval.md section 2) on preference_labels.py's pairs:
chunk k of one sentence against chunk k of the other with the pair's label, cross-entropy; each epoch a fresh
sample of --pairs-per-epoch Train pairs (in random order) and as many Validation pairs (all when fewer); saved when
the chunk pairs' validation macro-F1 is strictly higher. Writes {model}_epoch{E}_batch{B}_{emo}_ranker.pth.tar.

    python training.py --task chunk -ep 30 -batch 128 -emo Act --ranks-dir ./EmoChunkRankSeq --detailed FILE ...
trains its seq2seq model (section 5) on retrieval.py's Train ranks and the raters' labels: a value per chunk, the
utterance's their mean; targets the raters' mean and the emotion curve of the ranks (ranks.generate_chunk_EmoSeq);
loss 0.5 (1 - CCC) of the utterances + 0.5 (1 - CCC) of the chunks; Adam 1e-3; saved when the validation 1 - CCC
against the consensus labels is strictly lower. Writes {model}_epoch{E}_batch{B}_EmoRankerSeq_{emo}.pth.tar.
"""
import csv
import os
import random
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import checkpoint_name, save_checkpoint
from ..cli import add_corpus_args, add_reference_args, add_system_args, reference_run, require_corpus
from ..corpus import check_features, iter_batches, read_label_table, require_feature_files, resolve_split, split_rows
from ..device import select_device, set_seed
from ..distrib import Dist, end_distributed, wrap_model
from ..files import atomic_torch_save, ensure_writable_dir, file_sha256
from ..features.frontend import default_chunk_frames, read_record
from ..model import ModelSpec, build_model
from ..normterm import NormTerms
from ..objectives import CLASS, Curves, RankerObjective, Regression, training_objective
from ..retrieval.ranks import OUT_DIR, rank_file, read_provenance, read_ranks
from ..retrieval.raters import rater_values, read_raters
from ..store import open_features
from ..streams import use_cpu_streams
from ..utils import DEFAULT_C, DEFAULT_M, DEFAULT_N, FEAT_DIM, ArgParser, UserError, chunk_batch, run_cli

# settings a resumed run must share with the run it continues
RESUME_KEYS = ('encoder', 'atten', 'emo', 'classes', 'class_weights', 'iterations', 'epochs', 'batch_size',
               'chunk_frames', 'chunks', 'scale', 'lr', 'adam_eps', 'bn_momentum', 'ccc_variance', 'val_every',
               'feat_dir', 'label_csv', 'norm_fingerprint', 'world_size', 'amp', 'task', 'pairs_per_epoch', 'prefs',
               'curves', 'hidden_dim')
# what a state saved before a key existed ran with (a resume of such a run goes on)
EARLIER = dict(encoder='LSTM', classes=None, class_weights=None, epochs=None, adam_eps=1e-8, bn_momentum=0.1,
               ccc_variance='unbiased', task='utterance', pairs_per_epoch=None, prefs=None, curves=None,
               hidden_dim=FEAT_DIM)
# per task: the reference's scale n and learning rate (the retrieval follow-up's: n = 2, 22 chunks), and head
TASK_DEFAULTS = {'utterance': dict(scale=DEFAULT_N, lr=1e-4, atten='SelfAttenVec'), 'ranker': dict(scale=2, lr=1e-4),
                 'chunk': dict(scale=2, lr=1e-3)}
PAIR_FILES = (('Train', 'training'), ('Validation', 'validation'))  # preference_labels.py's file prefixes
# --recipe keras: the Keras original's choices (SPEC-keras.md), each also an option of its own
RECIPES = {'reference': dict(ccc_variance='unbiased', adam_eps=1e-8, bn_momentum=0.1),
           'keras': dict(ccc_variance='population', adam_eps=1e-7, bn_momentum=0.01)}


def parse_args(argv):
    p = ArgParser(prog='training.py', description=__doc__.split('\n')[0])
    add_reference_args(p)
    add_corpus_args(p)
    g = p.add_argument_group('model')
    g.add_argument('--chunk-frames', type=int, default=None, help=f'm, frames per chunk (default ≈ 1 s at the features\' '
                   f'hop: {DEFAULT_M} for the IS13 LLDs, 50 for a --frontend\'s 0.02 s)')
    g.add_argument('--hidden-dim', type=int, default=FEAT_DIM, help=f'H, the chunk encoder\'s size (default {FEAT_DIM})')
    g.add_argument('--chunks', type=int, default=DEFAULT_C, help=f'C, chunks per utterance (default {DEFAULT_C})')
    g.add_argument('--scale', type=int, default=None, help=f'n, chunk-count scale: n*C chunks (default {DEFAULT_N}; '
                   '--task ranker or chunk 2)')
    g.add_argument('--task', choices=list(TASK_DEFAULTS), default='utterance', help='utterance (default): the '
                   'sequence-to-one model; ranker: the retrieval follow-up\'s emotion ranker (--prefs-dir); chunk: '
                   'its seq2seq model (--ranks-dir, --detailed)')
    g.add_argument('--prefs-dir', default=None, help='--task ranker: preference_labels.py\'s folder of '
                   '{training,validation}_pairs_{emo}.csv')
    g.add_argument('--pairs-per-epoch', type=int, default=100_000,
                   help='--task ranker: Train pairs sampled per epoch, and as many Validation pairs (default 100000)')
    g.add_argument('--ranks-dir', default=OUT_DIR, help=f'--task chunk: retrieval.py\'s folder of rank files, '
                   f'training_{{emo}}.json for the Train split (default {OUT_DIR})')
    g.add_argument('--detailed', metavar='FILE', help='--task chunk: the raters\' labels (labels_detailed.json or '
                   '.csv of any MSP-Podcast release): the targets are their mean and std')
    g.add_argument('--bn-momentum', type=float, default=None, help='every batch norm\'s momentum, PyTorch\'s '
                   'convention: new = (1 - m) old + m batch (default 0.1; --recipe keras 0.01, Keras\'s 0.99)')
    g = p.add_argument_group('objective')
    g.add_argument('--classes', nargs='+', metavar='C', help='-emo Class: the classes to learn, in this order '
                   '(default: those of A S H U F D C N with Train rows); rows of other classes are left out')
    g.add_argument('--class-weights', choices=['inverse', 'none'], default='inverse',
                   help='-emo Class: cross-entropy weighted by inverse Train class frequency (default inverse)')
    g.add_argument('--ccc-variance', choices=['unbiased', 'population'], default=None,
                   help='variances in the CCC loss (default unbiased, the reference; --recipe keras population)')
    g = p.add_argument_group('training')
    g.add_argument('--recipe', choices=list(RECIPES), default='reference',
                   help='keras: the Keras original\'s CCC loss, Adam epsilon and batch-norm momentum at once '
                        '(each option given overrides it; default reference)')
    g.add_argument('--lr', type=float, default=None, help='Adam learning rate (default 1e-4; --task chunk 1e-3)')
    g.add_argument('--adam-eps', type=float, default=None, help='Adam epsilon (default 1e-8, PyTorch\'s; '
                   '--recipe keras 1e-7)')
    g.add_argument('--val-every', type=int, default=50, help='validate every N iterations (default 50)')
    g.add_argument('--seed', type=int, default=None, help='random seed (default: drawn and logged)')
    g.add_argument('--resume', action='store_true', help='continue the interrupted run of these settings')
    g.add_argument('--out-dir', default='./Models', help='where checkpoints go (default ./Models)')
    g.add_argument('--amp', choices=['bf16', 'fp16'], default=None, help='mixed precision, CUDA only (default off: fp32)')
    add_system_args(p)
    p.set_defaults(atten=None)  # None: not given (TASK_DEFAULTS; a ranker has no head)
    args = reference_run(p.parse_args(argv))
    flags = {'iterations': '-iter', 'epochs': '-ep', 'batch_size': '-batch', 'chunk_frames': '--chunk-frames',
             'chunks': '--chunks', 'scale': '--scale', 'val_every': '--val-every', 'hidden_dim': '--hidden-dim'}
    for name, flag in flags.items():
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f'{flag} must be at least 1')
    if args.batch_size < 2:
        raise UserError('-batch must be at least 2: the CCC loss of one utterance is undefined')
    if args.classes and args.emo != CLASS:
        raise UserError(f'--classes is for -emo Class, not -emo {args.emo}')
    for k, v in {**RECIPES[args.recipe], **TASK_DEFAULTS[args.task]}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    what = {'ranker': 'a ranker', 'chunk': 'a seq2seq model'}.get(args.task)
    if what:  # the retrieval follow-up's per-chunk networks: one attribute, no head
        if args.emo not in ('Act', 'Val', 'Dom'):
            raise UserError(f'--task {args.task} -emo {args.emo}: {what} learns one attribute (Act, Val or Dom)')
        if args.atten is not None:
            raise UserError(f'--task {args.task} -atten {args.atten}: {what} has no aggregation head (-atten is for '
                            'the sequence-to-one model)')
    if args.task == 'chunk' and args.detailed is None:
        raise UserError('--task chunk needs --detailed FILE (the raters\' labels: labels_detailed.json or .csv)')
    if args.task == 'ranker':
        if args.prefs_dir is None:
            raise UserError('--task ranker needs --prefs-dir (the folder preference_labels.py wrote)')
        if args.pairs_per_epoch < 1:
            raise UserError('--pairs-per-epoch must be at least 1')
    if not 0 < args.bn_momentum <= 1:
        raise UserError(f'--bn-momentum {args.bn_momentum}: expected a value in (0, 1]')
    return args


# ----------------------------------------------------------------------------------
# data

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
    require_feature_files(args.feat_dir, fnames, split)
    # building a store reads every file, so a corrupt one is named here and not at iteration 4000
    feats = open_features(args.store, args.feat_dir, fnames, norm, progress=progress, dtype=args.store_dtype)
    return feats, objective.targets(kept, norm), split


def load_corpus(args, d, say):
    """NormTerm, the objective, then (features, targets) of Train and of the validation split, every file read once."""
    norm = NormTerms.load(args.norm_dir)
    df = read_label_table(args.label_csv)
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
    if d.main and args.store is None:  # read every file once now, so a corrupt one fails here, not at iteration 4000
        check_features(args.feat_dir, train[0].fnames + val[0].fnames, norm.feat_dim)
    say(f'corpus: {len(train[1])} train, {len(val[1])} {val[2].lower()} utterances (checked in '
        f'{time.perf_counter() - t0:.1f} s)')
    return norm, objective, train[:2], val[:2]


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
    paths = [os.path.join(prefs_dir, f'{prefix}_pairs_{emo}.csv') for _, prefix in PAIR_FILES]
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
    for (split, _), path in zip(PAIR_FILES, prefs_paths(args.prefs_dir, args.emo)):
        pairs, labels, names = read_pairs(path, args.emo)
        require_feature_files(args.feat_dir, names, split)
        out.append((PairFeatures(open_features(args.store, args.feat_dir, names, norm, progress=d.main, dtype=args.store_dtype), pairs), labels))
    say(f'pairs: {len(out[0][1])} train, {len(out[1][1])} validation (read in {time.perf_counter() - t0:.1f} s)')
    return norm, RankerObjective(args.emo), out[0], out[1]


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
    args.curve_inputs = curve_inputs(args, path, len(fnames))
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
    return norm, objective, train, val[:2]


def make_batch(feats, labels, idx, spec, device):
    """Utterance indices -> chunks (b*C', m, F) float32 and targets (b,) or (b, k) on the device."""
    x = torch.from_numpy(chunk_batch(feats, idx, spec.chunk_frames, spec.chunks, spec.scale))
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
        self.sample = sample  # a ranker's epoch: the first `sample` of a fresh permutation (all n when None)
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


# ----------------------------------------------------------------------------------
# one step, validation

def forward_backward(net, x, y, objective=None, d=None, sizes=None, amp=None, scaler=None):
    """One step's loss (of the global batch under torchrun: d, sizes), its gradients accumulated; the objective's,
    or with None the reference's 1 - CCC of one attribute. With CPU
    streams (streams.py) the LSTM's backward runs in the streams too: the backward of the layers after the encoder stops at the chunk
    encodings, detached, and the streams carry their gradient back through their pieces of the LSTM at once."""
    objective = objective or Regression(('Act',))
    streams = getattr(net, 'streams', None)  # None under DDP (net is the wrapper) and off CPU
    if streams is not None and amp is None and streams.applies(x, net.encoder):
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


# ----------------------------------------------------------------------------------
# logs

LOSS_NAMES = {'loss': '1 - CCC', 'macro_f1': 'cross-entropy'}  # the training loss beside each validation metric


def plot_losses(path, history, metric):
    """The training loss and the validation figure over the iterations, or the epochs of an epoch run (a second
    axis when they differ), the best validation marked; titled with the run's name (its attribute)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    unit = 'epoch' if 'epoch' in history[0] else 'iter'
    x = [h[unit] for h in history]
    ax.plot(x, [h['train_loss'] for h in history], label='training (mean of the iterations before)')
    val = ax if metric == 'loss' else ax.twinx()
    v = [h[f'val_{metric}'] for h in history]
    val.plot(x, v, color='tab:orange', label=f'validation {metric}')
    best = max(range(len(v)), key=v.__getitem__) if metric != 'loss' else min(range(len(v)), key=v.__getitem__)
    val.plot(x[best], v[best], '*', color='tab:red', ms=12, label=f'best: {v[best]:.4f} at {unit} {x[best]}')
    ax.set_xlabel({'epoch': 'epoch', 'iter': 'iteration'}[unit])
    ax.set_ylabel(LOSS_NAMES[metric])
    ax.set_title(os.path.splitext(os.path.basename(path))[0], fontsize=9)
    if val is not ax:
        val.set_ylabel(f'validation {metric}')
    fig.legend(loc='upper right', bbox_to_anchor=(1, 1), bbox_transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_history(path, history):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


# ----------------------------------------------------------------------------------
# training state: everything that makes the rest of a resumed run the same as an uninterrupted one

@dataclass
class TrainState:
    it: int = 0                                   # iterations done
    best: float = float('inf')                    # best validation figure so far (-inf when higher is better)
    history: list = field(default_factory=list)   # one dict per validation
    recent: list = field(default_factory=list)    # training losses since the last validation
    batches: list = field(default_factory=list)   # this epoch's batches (utterance indices)
    pos: int = 0                                  # batches of this epoch done


def rng_state():
    np_state = np.random.get_state()
    return {'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]), 'python': random.getstate()}


def set_rng_state(s):
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])
    np.random.set_state((s['numpy'][0], s['numpy'][1].numpy(), *s['numpy'][2:]))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s['python']))


def save_resume(path, model, opt, gen, st, d, settings, seed, finished=False):
    """The whole state, every rank's RNGs included, written atomically by rank 0 (a collective: all ranks call)."""
    rngs = d.all_gather_state(rng_state())
    if d.main:
        s = asdict(st)
        s['order'] = torch.from_numpy(np.concatenate(st.batches)) if st.batches else torch.zeros(0, dtype=torch.long)
        del s['batches']
        atomic_torch_save({**s, 'iter': s.pop('it'), 'model': model.state_dict(), 'optimizer': opt.state_dict(),
                           'shuffle_rng': gen.get_state(), 'rng': rngs, 'seed': seed, 'settings': settings,
                           'finished': finished}, path)


def load_resume(path, settings, seed_arg):
    if not os.path.isfile(path):
        raise UserError(f'{path}: no training state to resume (a run saves it at its first validation)')
    try:
        st = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'{path}: not a readable training state ({type(e).__name__})')
    for k in RESUME_KEYS:
        was = st['settings'].get(k, EARLIER.get(k))
        if was != settings.get(k):
            raise UserError(f'{path}: saved with {k}={was!r}, this run has {settings.get(k)!r}; '
                            f'resume with the same settings')
    if seed_arg is not None and seed_arg != st['seed']:
        raise UserError(f'{path}: saved with --seed {st["seed"]}, this run has --seed {seed_arg}')
    return st


def restore(saved, model, opt, gen, d, batch_size):
    """A TrainState and the model, optimizer, shuffle and RNG states from load_resume's dict."""
    model.load_state_dict(saved['model'])
    opt.load_state_dict(saved['optimizer'])
    gen.set_state(saved['shuffle_rng'])
    set_rng_state(saved['rng'][d.rank])
    return TrainState(saved['iter'], saved['best'], saved['history'], saved['recent'],
                      iter_batches(saved['order'].numpy(), batch_size, min_last=2 * d.world), saved['pos'])


def record_validation(st, value, objective, t_start, t_last, d, save_best, base, epoch=None):
    """History, best checkpoint (save_best() when the figure strictly improved, in the objective's direction), CSV,
    plot and log line of one validation; returns the time, the start of the next interval."""
    improved = value > st.best if objective.higher_is_better else value < st.best
    st.best = value if improved else st.best
    now, metric = time.perf_counter(), objective.metric
    st.history.append({'iter': st.it, **({'epoch': epoch} if epoch is not None else {}),
                       'train_loss': float(np.mean(st.recent)), f'val_{metric}': value, f'best_val_{metric}': st.best,
                       'saved': int(improved), 'elapsed_s': round(now - t_start, 3)})
    if d.main:
        if improved:
            save_best()
        write_history(base + '.history.csv', st.history)
        plot_losses(base + '.png', st.history, metric)
        where = f'epoch {epoch} | iter {st.it}' if epoch is not None else f'iter {st.it}'
        name = metric.replace('_', '-')
        tqdm.write(f'{where} | train loss {np.mean(st.recent):.4f} | val {name} {value:.4f} | best {st.best:.4f}'
                   f'{" | saved" if improved else ""} | {(now - t_last) / len(st.recent):.3f} s/it')
    st.recent = []
    return now


class StopSignals:
    """Inside `with`: SIGINT and SIGTERM only set .signal, so the loop finishes its iteration, saves and exits."""

    def __enter__(self):
        self.signal = 0
        self.old = {s: signal.signal(s, self._set) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _set(self, num, frame):
        self.signal = num

    def agreed(self, d):
        """The signal any rank received, so every rank stops at the same iteration."""
        return int(d.all_reduce([self.signal], 'max')[0])

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------------

def describe_run(args, norm, objective, out_dir, world):
    """The model to train, its checkpoint path, and the settings a resumed run must share."""
    spec = ModelSpec(encoder=args.encoder, head=args.atten, task=args.task, emo=objective.name, classes=getattr(objective, 'classes', None),
                     feat_dim=norm.feat_dim, chunk_frames=args.chunk_frames, chunks=args.chunks, scale=args.scale,
                     bn_momentum=args.bn_momentum, norm_fingerprint=norm.fingerprint(),
                     norm_dir=os.path.abspath(args.norm_dir), hidden_dim=args.hidden_dim,
                     frontend=read_record(args.feat_dir)).check()
    ckpt = os.path.join(out_dir, checkpoint_name(spec, args.batch_size, iterations=args.iterations, epochs=args.epochs))
    settings = dict(encoder=args.encoder, atten=args.atten, emo=objective.name, classes=spec.classes,
                    class_weights=getattr(objective, 'class_weights', None), iterations=args.iterations,
                    epochs=args.epochs, batch_size=args.batch_size, chunk_frames=args.chunk_frames, chunks=args.chunks,
                    scale=args.scale, lr=args.lr, adam_eps=args.adam_eps, bn_momentum=args.bn_momentum,
                    ccc_variance=args.ccc_variance if objective.metric == 'loss' else None, val_every=args.val_every,
                    norm_fingerprint=spec.norm_fingerprint, world_size=world, amp=args.amp,
                    feat_dir=os.path.abspath(args.feat_dir), label_csv=os.path.abspath(args.label_csv),
                    task=args.task, pairs_per_epoch=args.pairs_per_epoch if args.task == 'ranker' else None,
                    prefs=prefs_inputs(args.prefs_dir, args.emo) if args.task == 'ranker' else None,
                    curves=getattr(args, 'curve_inputs', None), hidden_dim=args.hidden_dim)
    return spec, ckpt, settings


def fresh_state(objective, seed, d):
    """The state of a run that starts now; dropout masks differ between ranks."""
    torch.manual_seed(seed + d.rank)
    return TrainState(best=-float('inf') if objective.higher_is_better else float('inf'))


def describe_training(args, objective, settings, seed):
    """How the model was trained, for the JSON beside the checkpoint."""
    run = dict(epochs=args.epochs) if args.epochs else dict(iterations=args.iterations)
    loss = {'ccc_variance': args.ccc_variance} if objective.metric == 'loss' else {'class_weights': objective.class_weights}
    return dict(**run, batch_size=args.batch_size, lr=args.lr, adam_eps=args.adam_eps, recipe=args.recipe, seed=seed,
                corpus={k: settings[k] for k in ('feat_dir', 'label_csv')}, **loss,
                **({'pairs_per_epoch': args.pairs_per_epoch, 'prefs': settings['prefs']} if args.task == 'ranker' else {}),
                **({'curves': settings['curves']} if args.task == 'chunk' else {}))


def schedule(args, n_train, world):
    """(iterations, validate every): -iter as given; -ep E: E epochs of Train batches, validated after each (a
    ranker's epoch: its sample of --pairs-per-epoch pairs)."""
    if args.task == 'ranker':
        n_train = min(n_train, args.pairs_per_epoch)
    if args.epochs is None:
        return args.iterations, args.val_every
    per_epoch = len(iter_batches(np.arange(n_train), args.batch_size, 2 * world))
    return args.epochs * per_epoch, per_epoch


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    require_corpus(args)
    if args.chunk_frames is None:  # ~1 s at the hop of the features' front end
        args.chunk_frames = default_chunk_frames(read_record(args.feat_dir))
    d = Dist(select_device(args.device))
    if args.amp and d.device.type != 'cuda':
        raise UserError('--amp needs a CUDA device; the CPU path is fp32 only')
    say = print if d.main else (lambda *a, **k: None)
    load = {'ranker': load_pair_corpus, 'chunk': load_curve_corpus}.get(args.task, load_corpus)
    norm, objective, (train_x, train_y), (val_x, val_y) = load(args, d, say)
    out_dir = ensure_writable_dir(args.out_dir) if d.main else args.out_dir
    if args.batch_size < 2 * d.world:
        raise UserError(f'-batch {args.batch_size} is too small for {d.world} processes (at least {2 * d.world})')

    spec, ckpt, settings = describe_run(args, norm, objective, out_dir, d.world)
    iterations, val_every = schedule(args, len(train_y), d.world)
    base = ckpt[:-len('.pth.tar')]
    saved = load_resume(base + '.resume.pt', settings, args.seed) if args.resume else None
    if saved is not None and saved['finished']:
        say(f'{base}.resume.pt: this run finished at iteration {saved["iter"]}; nothing to resume')
        return 0
    seed = saved['seed'] if saved else args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    set_seed(seed)  # the same initial weights on every rank

    model = build_model(spec).to(d.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, eps=args.adam_eps)
    gen = torch.Generator().manual_seed(seed)  # the epochs' shuffles, the same on every rank
    st = restore(saved, model, opt, gen, d, args.batch_size) if saved else fresh_state(objective, seed, d)
    if d.world == 1:
        use_cpu_streams(model, d.device, args.cpu_streams)
    net = wrap_model(model, d).train()
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler('cuda', enabled=args.amp == 'fp16')
    provenance = describe_training(args, objective, settings, seed)
    length = f'{args.epochs} epochs ({iterations} iterations)' if args.epochs else f'{iterations} iterations'
    say(f'training {spec.encoder} {args.atten or spec.task} on {objective.name} for {length}, batch {args.batch_size}, device '
        f'{d.device}' + (f' x {d.world} processes' if d.world > 1 else '') + f', seed {seed} -> {ckpt}'
        + (f' (resumed at iteration {st.it}, batch {st.pos} of its epoch)' if saved else ''))

    def fetch(batch):  # this rank's share of a global batch, on the device
        local, sizes = d.shard(batch)
        return (sizes, *make_batch(train_x, train_y, local, spec, d.device))

    def save_state(finished=False):
        save_resume(base + '.resume.pt', model, opt, gen, st, d, settings, seed, finished)

    sample = args.pairs_per_epoch if args.task == 'ranker' else None
    reader = BatchReader(st, len(train_y), args.batch_size, 2 * d.world, gen, fetch, d.device, sample)
    bar = tqdm(total=iterations, initial=st.it, unit='it', disable=None if d.main else True, dynamic_ncols=True)
    t_last = time.perf_counter()
    with StopSignals() as stop:
        try:
            while st.it < iterations:
                sizes, x, y = reader.next()
                opt.zero_grad(set_to_none=True)
                loss = forward_backward(net, x, y, objective, d, sizes, amp, scaler)
                scaler.step(opt)
                scaler.update()
                st.it += 1
                st.recent.append(loss.item())
                bar.update(1)
                if st.it % val_every == 0 or st.it == iterations:
                    # a ranker validates a fresh sample of its pairs, drawn from `gen`: part of the resume state
                    order = None if sample is None else torch.randperm(len(val_y), generator=gen).numpy()[:sample]
                    value = validate(model, val_x, val_y, objective, d, args.batch_size, order)
                    t_last = record_validation(st, value, objective, t_start, t_last, d, lambda: save_checkpoint(
                        ckpt, model, spec, **provenance, iter_saved=st.it, **{f'val_{objective.metric}': value}), base,
                        epoch=st.it // val_every if args.epochs else None)
                    save_state(finished=st.it == iterations)
                signum = stop.agreed(d)
                if signum and st.it < iterations:
                    save_state()
                    say(f'interrupted at iteration {st.it}: state saved to {base}.resume.pt; continue with --resume')
                    return 128 + signum
        finally:
            reader.close()
            bar.close()
    say(f'best val {objective.metric.replace("_", "-")} {st.best:.4f} -> {ckpt}')
    return 0


if __name__ == '__main__':
    try:
        run_cli(main)
    finally:
        end_distributed()
