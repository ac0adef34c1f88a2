"""Score a split with a trained checkpoint and print the reference's seven result lines.

    python testing.py -iter 5000 -batch 128 -emo Dom -atten SelfAttenVec [-model LSTM|CNN|KerasLSTM] [-ep E] \\
        [--feat-dir DIR --label-csv FILE --norm-dir DIR --model-dir DIR --split NAME --out CSV]
    python testing.py --checkpoint FILE.pth.tar [--subsets 15] [--feat-dir DIR --label-csv FILE ...]

The checkpoint is {model}_iter{iter}_batch{batch}_ChunkSeq2One_{atten}_{emo}.pth.tar (epoch{E} with -ep), looked
for in --model-dir if given, else ./Models, else ./trained_model_v1.6, else ./trained_model_keras_v1.6, then the
same in $CHUNKSER_HOME (default ~/.cache/chunkser; its NormTerm too, when ./NormTerm is not there); or exactly
--checkpoint FILE (ours or one keras_convert.py wrote), whose JSON says the network and its targets. Predictions
are de-normalised and not clipped, as the reference's. A model of several attributes (-emo Act Val Dom) prints one
{emo}-CCC line per attribute; a categorical one (-emo Class) Class-F1, Class-UAR and Class-Accuracy after the
time, and --out writes file,true,pred,p_<class>... with <out>.confusion.csv and .png beside it. --subsets K adds the Keras original's protocol (scoring.subset_protocol):
utterances scored one at a time, CCC and time per utterance as mean and population std over K shuffled subsets.
A seq2seq model (task 'chunk', Lin & Busso TASLP 2023) prints the retrieval reference's lines instead:
EmoRankerSeq_Info, Epochs, Batch_Size, Model_Type, {emo}-CCC. An emotion ranker (task 'ranker') runs the
reference's testing_ranker.py (SPEC-retrieval.md section 3): 10 draws of 10% of the split's sentences, each ranked
by its chunk pairs' votes against the others, Spearman's rho and Kendall's tau-b against the consensus ranking.
"""
import os
import sys

import numpy as np
import torch

from ..checkpoint import (check_norm, checkpoint_name, load_model, locate_checkpoint, read_description, read_spec,
                        require_task)
from ..cli import (add_corpus_args, add_reference_args, add_system_args, reference_run, require_audio_corpus,
                   require_corpus)
from ..corpus import read_label_table, resolve_split, split_rows
from ..device import select_device
from ..features.frontend import check_origin, check_same, describe, read_record
from ..files import write_csv
from ..home import install_hint, norm_dir_or_home
from ..model import DEFAULT_HEAD, TASKS, ModelSpec
from ..normterm import LabelTerms, NormTerms
from ..objectives import objective_of
from ..scoring import predict_one_by_one, predict_utterances, subset_protocol
from ..tasks import open_inputs
from ..streams import use_cpu_streams
from ..utils import FEAT_DIM, ArgParser, UserError, chunk_batch, run_cli

RANKER_SEED, RANKER_RATIO, RANKER_DRAWS = 31, 0.1, 10  # testing_ranker.py's


def parse_args(argv):
    p = ArgParser(prog='testing.py', description=__doc__.split('\n')[0])
    add_reference_args(p)
    add_corpus_args(p)
    g = p.add_argument_group('testing')
    g.add_argument('--model-dir', default=None, help='checkpoint folder (default ./Models, then ./trained_model_v1.6, '
                   './trained_model_keras_v1.6, then the same in $CHUNKSER_HOME, default ~/.cache/chunkser)')
    g.add_argument('--split', default=None, help='split to score (default Test, else Test1)')
    g.add_argument('--out', default=None, help='write file,true,pred rows to this CSV (see above for other targets)')
    g.add_argument('--score-batch', type=int, default=64, help='utterances scored per model call (default 64)')
    g.add_argument('--force', action='store_true', help='score even if the checkpoint was trained with other NormTerm terms')
    g.add_argument('--checkpoint', metavar='FILE', help='score exactly this checkpoint; its JSON (or reference-style '
                   'name) gives the network and attribute, instead of -iter/-batch/-atten/-emo and the search')
    g.add_argument('--wav-dir', default=None, help='an audio network (trained with --wav-dir): the split\'s audio '
                   'files, instead of --feat-dir')
    g.add_argument('--frontend', metavar='NAME_OR_PATH', default=None, help='with --wav-dir: check that the '
                   'checkpoint was trained from this model (it carries its own; not needed)')
    g.add_argument('--subsets', type=int, metavar='K', help="also the Keras original's protocol: mean and population "
                   'std of the CCC and of the time per utterance over K shuffled subsets (the paper: 15)')
    add_system_args(p)
    p.set_defaults(emo=None, atten=None)  # None: not given (Act, SelfAttenVec; or the --checkpoint's own)
    args = reference_run(p.parse_args(argv))
    if args.subsets is not None and args.subsets < 1:
        raise UserError(f'--subsets {args.subsets}: expected a positive number of subsets')
    return args


def describe_checkpoint(args, ckpt, feat_dim):
    """(ModelSpec, iterations text, batch size) of the checkpoint to score. --checkpoint: its JSON says the
    network and its targets (fills -emo/-atten; a different -emo/-atten given is refused) and how it was trained."""
    run = read_description(ckpt)
    if not args.checkpoint:
        spec = read_spec(ckpt, args.atten, feat_dim)
        if spec.emo != args.emo:  # its JSON says what it predicts, whatever its name
            raise UserError(f'{ckpt}: this checkpoint predicts {spec.emo}, not -emo {args.emo}')
        return spec, args.iterations if args.epochs is None else f'{args.epochs} epochs', args.batch_size
    spec = read_spec(ckpt, args.atten, feat_dim)
    require_task(spec, ckpt, tuple(TASKS), 'testing.py')
    if args.emo and args.emo != spec.emo:
        raise UserError(f'{ckpt}: this checkpoint predicts {spec.emo}, not -emo {args.emo}')
    args.emo, args.atten = spec.emo, spec.head
    iterations = run.get('iterations', f'{run["epochs"]} epochs' if 'epochs' in run else args.iterations)
    return spec, iterations, run.get('batch_size', args.batch_size)


def find_model(args):
    """--checkpoint, else the reference's name of -model/-iter/-ep/-batch/-atten/-emo in the model folders."""
    if not args.checkpoint:
        args.emo, args.atten = args.emo or 'Act', args.atten or DEFAULT_HEAD
    emo = args.emo or 'Act'
    spec = ModelSpec(encoder=args.encoder, head=args.atten or DEFAULT_HEAD, emo=emo)  # what the name says
    name = checkpoint_name(spec, args.batch_size, iterations=args.iterations, epochs=args.epochs)
    return locate_checkpoint(args.checkpoint, name, args.model_dir,
                             hint='train one with training.py, or ' + install_hint(args.norm_dir))


def test_rows(df, split, objective, path):
    """The split's rows the objective scores (Class: those of its classes) and their file names."""
    rows = split_rows(df, split)
    if len(rows) == 0:
        raise UserError(f'{path}: no rows with Split_Set {split!r}')
    cols = [c for c in objective.columns if c in rows.columns]
    labelled = rows[cols].notna().any(axis=1) if cols else rows['FileName'].isna()
    if not labelled.any():
        raise UserError(f'{path}: split {split} has no {"/".join(objective.columns)} labels (MSP-Podcast\'s Test3 is '
                        'unlabelled): score its files with predict.py')
    kept = objective.select(rows, path, split)
    if len(kept) == 0:  # Class: every row of another class (O, X, one the model does not know)
        raise UserError(f'{path}: split {split} has no rows of the classes {" ".join(objective.classes)}')
    if len(kept) < len(rows):
        print(f'{split}: {len(rows) - len(kept)} rows of other classes left out', file=sys.stderr)
    return kept, [str(f) for f in kept['FileName']]


def load_terms(args, ckpt):
    """(spec, iterations, batch size, z-norm terms) of the checkpoint, checked against what it will read: an audio
    network (--wav-dir) its label terms; else the NormTerm and the features' front end."""
    if args.wav_dir:
        spec, iterations, batch_size = describe_checkpoint(args, ckpt, FEAT_DIM)
        if not spec.reads_audio:
            raise UserError(f'{ckpt}: a network of features ({describe(spec.frontend)}), not of audio: pass --feat-dir')
        if args.frontend:
            check_origin(spec.frontend, args.frontend, ckpt)
        return spec, iterations, batch_size, LabelTerms.from_spec(spec, ckpt)
    norm = NormTerms.load(args.norm_dir)
    spec, iterations, batch_size = describe_checkpoint(args, ckpt, norm.feat_dim)
    if spec.reads_audio:
        raise UserError(f'{ckpt}: an audio network (its {spec.frontend["model_type"]} inside): pass --wav-dir')
    check_norm(spec, norm, args.norm_dir, ckpt, args.force)
    check_same(spec.frontend, read_record(args.feat_dir), f'the features in {args.feat_dir}', ckpt)
    return spec, iterations, batch_size, norm


def main(argv=None):
    args = parse_args(argv)
    if args.frontend and not args.wav_dir:
        raise UserError('--frontend is for an audio network\'s --wav-dir')
    if args.wav_dir:
        require_audio_corpus(args)
    else:
        require_corpus(args)
    device = select_device(args.device)
    args.norm_dir = norm_dir_or_home(args.norm_dir)
    ckpt = find_model(args)
    spec, iterations, batch_size, norm = load_terms(args, ckpt)
    objective = objective_of(spec)
    if args.subsets and objective.attribute is None:
        raise UserError(f'--subsets: the Keras protocol scores one attribute, not {objective.name}')
    model = use_cpu_streams(load_model(ckpt, spec, device), device, args.cpu_streams)
    print(f'Loaded checkpoint: {ckpt}')

    df = read_label_table(args.label_csv)
    split = args.split or resolve_split(df, 'test', args.label_csv)
    rows, fnames = test_rows(df, split, objective, args.label_csv)
    truth = objective.truth(objective.select(rows, args.label_csv, split))
    feats = open_inputs(args, fnames, split, norm)
    if not TASKS[spec.task].sentence:  # the ranker: no value per sentence, its rankings are tested
        if args.subsets or args.out:
            raise UserError(f'{ckpt}: a ranker is tested by its rankings only (no --subsets, no --out)')
        n, rho, tau = ranker_test(model, feats, truth[spec.emo], device, args.score_batch, f'{args.label_csv} split {split}')
        print(f'Emotion: {spec.emo}', f'Random Ratio: {RANKER_RATIO}', f'Re-sample Times: {RANKER_DRAWS}',
              f'Number of Test Sentences: {n}', f'Spearman Corr.: {rho}', f'Kendall\u2019s tau: {tau}', sep='\n')
        return 0
    if args.subsets:  # the Keras protocol times each utterance's own model call
        raw, per_utt = predict_one_by_one(model, feats, device, progress=True)
        seconds = float(per_utt.sum())
    else:
        raw, seconds = predict_utterances(model, feats, device, args.score_batch, progress=True)
    results = objective.results(raw, norm)

    print_results(spec, ckpt, iterations, batch_size, objective, objective.scores(truth, results),
                  1000 * seconds / len(fnames))
    if args.subsets:
        r = subset_protocol(truth[objective.attribute], results[objective.attribute], per_utt, args.subsets)
        print(f'Avg. CCC testing performance: {r["ccc_mean"]!r}')
        print(f'Std. CCC testing performance: {r["ccc_std"]!r}')
        print(f'Avg. Prediction Time(ms/uttr): {r["ms_mean"]!r}')
        print(f'Std. Prediction Time(ms/uttr): {r["ms_std"]!r}')
    if args.out:
        write_predictions(args.out, *objective.csv_rows(fnames, truth, results))
        cm = objective.confusion(truth, results)  # (K, K) or None
        if cm is not None:
            write_confusion(os.path.splitext(args.out)[0], objective.classes, cm)
    return 0


@torch.no_grad()
def ranker_test(model, feats, truth, device, batch_size=64, where='the split'):
    """SPEC-retrieval.md section 3's ranker test: (draw size, mean Spearman rho, mean Kendall tau-b) over 10 draws
    of int(N * 0.1) sentences (NumPy's legacy generator, seeded 31 once). Each sentence's chunks are scored once; every
    ordered pair (s, t) of a draw compares chunk k of s with chunk k of t at once by broadcasting."""
    from scipy.stats import kendalltau, rankdata, spearmanr
    s = model.spec
    k = s.chunks_per_utterance
    np.random.seed(RANKER_SEED)
    n = int(len(truth) * RANKER_RATIO)
    if n < 2:
        raise UserError(f'{where}: the ranker test draws int({len(truth)} * {RANKER_RATIO}) = {n} sentences of it; '
                        f'it needs at least {int(2 / RANKER_RATIO)}')
    rhos, taus = [], []
    for _ in range(RANKER_DRAWS):
        idx = np.random.choice(len(truth), n, replace=False)  # (n,)
        f = torch.cat([model.chunk_scores(torch.from_numpy(chunk_batch(feats, idx[i:i + batch_size], s.chunk_frames,
                                                                       s.chunks, s.scale)).to(device)).float().cpu()
                       for i in range(0, n, batch_size)]).reshape(n, k, 2)  # (n, C', 2) f of every chunk
        p = torch.softmax(f[:, None] - f[None, :], dim=-1)  # (n, n, C', 2): chunk k of s against chunk k of t
        cls = p[..., 1] > p[..., 0]  # (n, n, C') argmax; an exact tie is class 0
        vote = 2 * cls.sum(-1) > k  # (n, n) the mode of the C' classes; a tie (11 against 11) goes to 0
        vote.fill_diagonal_(False)  # a sentence is not compared with itself
        score = vote.sum(1).numpy()  # (n,) preference score: votes won against the draw's others
        pred = rankdata(-score, method='min')  # pandas' rank(method='min', ascending=False)
        true = rankdata(-np.asarray(truth)[idx], method='min')
        rhos.append(spearmanr(pred, true)[0])
        taus.append(kendalltau(pred, true)[0])
    return n, float(np.mean(rhos)), float(np.mean(taus))


def print_results(spec, ckpt, iterations, batch_size, objective, scores, ms_per_utt):
    """The objective's lines: the PyTorch reference's seven (one CCC line per attribute; Class: its three figures
    after the time), or for a seq2seq model the retrieval reference's."""
    header = objective.header(spec, iterations, batch_size, read_description(ckpt).get('epochs'))
    print(*objective.report(header, f'Avg. Time Cost(ms/uttr): {ms_per_utt!r}', scores), sep='\n')


def write_predictions(path, header, rows):
    """The predictions, written whole or not at all (a full disk keeps the old file)."""
    write_csv(path, [header, *rows], 'the predictions')


def write_confusion(base, classes, cm):
    """--out of a categorical model: <base>.confusion.csv (rows: true class, columns: predicted) and .png."""
    from ..plots import plot_confusion  # matplotlib and the figures' imports: only this output pays for them
    write_csv(base + '.confusion.csv', [['true\\pred', *classes]] + [[c, *map(int, row)] for c, row in zip(classes, cm)],
              'the confusion matrix')
    plot_confusion(base + '.confusion.png', classes, cm)


if __name__ == '__main__':
    run_cli(main)
