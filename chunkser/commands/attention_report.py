"""The method's claims measured on the demo corpus: does chunk attention weight the emotional sentence, do the
seq2seq curves follow it, does attention beat NonAtten? (docs/claims.md)

    python attention_report.py --out STUDY [--corpus DIR] [-model LSTM CNN] [-atten NonAtten GatedVec ...]
        [-emo Act Dom] [--seeds 0 1 2] [-iter 300] [-batch 32] [--lr LR] [--figure FILE]
        [--seq2seq [--seq2seq-emo Act] [--seq2seq-epochs 3] [--ranker-epochs 1] [--pairs-per-epoch 2000]]

About 22 % of the demo corpus's utterances carry their emotional prosody in one sentence of several (EmoStart/EmoEnd
in the label table). The study trains one network per -model x -atten x seed for all the -emo attributes (default
2 x 5 x 3 = 30 runs of training.py -emo Act Dom), with --seq2seq also the retrieval follow-up's seq2seq model per
attribute and seed (its pipeline: preference_labels.py, a ranker and retrieval.py once per attribute, then
training.py --task chunk), and measures, on those utterances of every split, claims.py's measures of each model's
chunk weights (the weight mass on the emotional chunks against uniform weights and against the model's own weights
shuffled within the utterance; Spearman against the span; a seq2seq model's chunk values against the signed span),
and each model's CCC over the whole Test split. Steps, each skipped when done (a second
call measures again only):
  1. norm_para.py          STUDY/NormTerm from the corpus's Train split
  2. training.py per run   STUDY/runs/seed{S}/ (checkpoint, history, curves), STUDY/logs/; one thread, one run at a
                           time; its CPU time (user + system) in STUDY/runs.csv with its command
  3. measures              STUDY/utterances.csv (model, seed, utterance), STUDY/ccc.csv (model, seed),
                           STUDY/summary.csv and .md (seed averages per utterance, standard errors over utterances,
                           spread over seeds), the figure (default STUDY/claims.png)
"""
import csv
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from ..checkpoint import checkpoint_name, load_model, read_spec
from ..claims import chunk_overlap, summarize, utterance_measures
from ..features.frontend import hop_of
from ..files import atomic_write_bytes
from ..corpus import ATTRIBUTES, MatFeatures, read_label_table, split_rows
from ..demo import corpus_paths, demo_dir, detailed_path, read_marker
from ..model import ENCODERS, EQUAL_WEIGHT_HEADS, HEADS, ModelSpec
from ..normterm import NormTerms
from ..objectives import CSV_ORDER, attributes_of
from ..retrieval.ranks import rank_file
from ..scoring import predict_utterances
from ..utils import HOP, ArgParser, UserError, chunk_spans, evaluation_metrics, run_cli

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLIT_ORDER = ('Test', 'Validation', 'Train')
ALL_HEADS = tuple(HEADS)
MEASURES = ('share', 'mass', 'diff', 'beats', 'rho_overlap', 'rho_signed')
SEQ2SEQ = 'LSTM-seq2seq'  # the retrieval follow-up's model, one per attribute
RUN_FIELDS = ('model', 'emo', 'seed', 'checkpoint', 'cpu_s', 'wall_s', 'command')


def run_script(script, args, log_path, threads):
    """Runs `python script args` (a project command) with its output in log_path -> (CPU seconds of the process
    and its children, wall seconds); a failure is a UserError naming the log."""
    path = os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get('PYTHONPATH')) if p)
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads), 'PYTHONPATH': path}
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    with open(log_path, 'w') as log:
        rc = subprocess.run([sys.executable, '-m', 'chunkser', script[:-3]] + args, stdout=log, stderr=subprocess.STDOUT,
                            env=env, stdin=subprocess.DEVNULL).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise UserError(f'{log_path}: {script} failed (exit {rc}); its last line: {tail(log_path)}')
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, time.time() - t0


def tail(path):
    lines = [line.strip() for line in open(path, errors='replace') if line.strip()]
    return lines[-1] if lines else '(empty)'


class Study:
    """Folders and bookkeeping of one study (STUDY/...)."""

    def __init__(self, out, corpus, threads=1):
        self.out, self.threads, self.corpus = out, threads, corpus
        self.paths = corpus_paths(corpus)
        self.norm_dir = os.path.join(out, 'NormTerm')
        for d in ('logs', 'runs'):
            os.makedirs(os.path.join(out, d), exist_ok=True)
        self.runs_csv = os.path.join(out, 'runs.csv')
        self.done = {} if not os.path.isfile(self.runs_csv) else \
            {r['checkpoint']: r for r in csv.DictReader(open(self.runs_csv))}

    def corpus_args(self):
        return ['--feat-dir', self.paths['feat_dir'], '--label-csv', self.paths['label_csv'], '--norm-dir',
                self.norm_dir, '--store', os.path.join(self.out, 'feat_store'), '--device', 'cpu']

    def step(self, script, args, ckpt, model, emo, seed):
        """Runs one step unless runs.csv has it and its output exists; records its CPU time."""
        if ckpt in self.done and os.path.exists(ckpt):
            return
        print(f'{model} {emo} seed {seed}: python {script} {" ".join(args)}', flush=True)
        log = os.path.join(self.out, 'logs', f'{os.path.basename(ckpt)}.{seed}.log')
        cpu, wall = run_script(script, args, log, self.threads)
        row = dict(model=model, emo=emo, seed=seed, checkpoint=ckpt, cpu_s=round(cpu, 2), wall_s=round(wall, 2),
                   command=f'python {script} ' + ' '.join(args))
        new = not os.path.isfile(self.runs_csv)
        with open(self.runs_csv, 'a', newline='') as f:
            w = csv.DictWriter(f, RUN_FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)
        self.done[ckpt] = row
        print(f'  {cpu:.0f} CPU s, {wall:.0f} s', flush=True)

    def norm_terms(self):
        args = ['--feat-dir', self.paths['feat_dir'], '--label-csv', self.paths['label_csv'],
                '--norm-dir', self.norm_dir]
        self.step('norm_para.py', args, self.norm_dir, 'NormTerm', '', '')

    def train(self, encoder, head, emos, seed, iterations, batch, lr=None):
        """One sequence-to-one run of one network for the attributes `emos` -> its checkpoint path."""
        out_dir = os.path.join(self.out, 'runs', f'seed{seed}')
        emo = ''.join(emos)
        ckpt = os.path.join(out_dir, checkpoint_name(ModelSpec(encoder=encoder, head=head, emo=emo), batch,
                                                      iterations=iterations))
        args = ['-model', encoder, '-atten', head, '-emo', *emos, '-iter', str(iterations), '-batch', str(batch),
                '--seed', str(seed), '--out-dir', out_dir] + (['--lr', str(lr)] if lr else []) + self.corpus_args()
        self.step('training.py', args, ckpt, f'{encoder}-{head}', emo, seed)
        return ckpt

    def seq2seq(self, emo, seed, epochs, batch, ranker_epochs, pairs):
        """The retrieval follow-up's pipeline for one attribute (docs/retrieval.md): preference pairs, an emotion
        ranker and the chunk ranks of Train (made once, with seed 0, for every seed), then the seq2seq
        model of `seed` -> its checkpoint path."""
        detailed, prefs = detailed_path(self.corpus), os.path.join(self.out, 'prefs')
        self.step('preference_labels.py', ['-emo', emo, '--detailed', detailed, '--label-csv', self.paths['label_csv'],
                                           '--out-dir', prefs], os.path.join(prefs, f'training_pairs_{emo}.csv'),
                  'pairs', emo, '')
        ranker = os.path.join(self.out, 'rankers', checkpoint_name(ModelSpec(head=None, task='ranker', emo=emo), batch,
                                                                   epochs=ranker_epochs))
        self.step('training.py', ['--task', 'ranker', '-ep', str(ranker_epochs), '-batch', str(batch), '-emo', emo,
                                  '--prefs-dir', prefs, '--pairs-per-epoch', str(pairs), '--seed', '0', '--out-dir',
                                  os.path.dirname(ranker)] + self.corpus_args(), ranker, 'ranker', emo, 0)
        ranks = os.path.join(self.out, 'EmoChunkRankSeq')
        out = rank_file(ranks, 'Train', emo)  # training_{emo}.json: the Train curves (validation: consensus labels)
        self.step('retrieval.py', ['-set', 'Train', '-emo', emo, '--checkpoint', ranker, '--out', out]
                  + self.corpus_args(), out, 'ranks', emo, 0)
        out_dir = os.path.join(self.out, 'runs', f'seed{seed}')
        ckpt = os.path.join(out_dir, checkpoint_name(ModelSpec(head=None, task='chunk', emo=emo), batch, epochs=epochs))
        self.step('training.py', ['--task', 'chunk', '-ep', str(epochs), '-batch', str(batch), '-emo', emo,
                                  '--ranks-dir', ranks, '--detailed', detailed, '--seed', str(seed), '--out-dir',
                                  out_dir] + self.corpus_args(), ckpt, SEQ2SEQ, emo, seed)
        return ckpt


def study_rows(paths):
    """The label table, the single-emotional-sentence rows of each split and the whole Test split's rows."""
    df = read_label_table(paths['label_csv'])
    for col in ('EmoStart', 'EmoEnd'):
        if col not in df.columns:
            raise UserError(f'{paths["label_csv"]}: no {col} column (not a demo corpus label table)')
    single = df[df['EmoStart'].notna() & df['EmoEnd'].notna()]
    splits = {s: split_rows(single, s) for s in SPLIT_ORDER}
    if any(len(v) == 0 for v in splits.values()):
        raise UserError(f'{paths["label_csv"]}: no single-emotional-sentence rows in split(s) '
                        f'{[s for s, v in splits.items() if len(v) == 0]}')
    return splits, split_rows(df, 'Test')


class Features:
    """Normalised features of the study's utterances, read once; the overlap of their chunks per chunk layout."""

    def __init__(self, feat_dir, norm):
        self.feat_dir, self.norm, self.x, self.overlaps = feat_dir, norm, {}, {}

    def get(self, fnames):
        missing = [f for f in fnames if f not in self.x]
        feats = MatFeatures(self.feat_dir, missing, self.norm)
        self.x.update({f: feats[i] for i, f in enumerate(missing)})
        return [self.x[f] for f in fnames]

    def overlap(self, rows, m, C, n, hop):
        """-> overlap masks and coverage (N, C') of rows' chunks (frames of `hop` s) against their EmoStart..EmoEnd."""
        key = (tuple(rows['FileName']), m, C, n, hop)
        if key not in self.overlaps:
            T = [len(x) for x in self.get(list(rows['FileName']))]
            ov, cov = zip(*(chunk_overlap(t, a, b, m, C, n, hop) for t, a, b in
                            zip(T, rows['EmoStart'].astype(float), rows['EmoEnd'].astype(float))))
            self.overlaps[key] = np.array(ov), np.array(cov)
        return self.overlaps[key]


def measure_model(ckpt, feats, splits, test_rows):
    """One checkpoint -> (per-utterance measure rows, one per attribute it predicts; {attribute: Test CCC};
    {file: chunk weights, or {attribute: chunk values on the 1..7 scale}} of the Test split's utterances)."""
    spec = read_spec(ckpt)
    net = load_model(ckpt, spec, 'cpu')
    emos = attributes_of(spec.emo)
    rows, curves = [], {}
    for s, part in splits.items():
        _, w, v, _ = predict_utterances(net, feats.get(list(part['FileName'])), 'cpu', 64, return_chunks=True)
        ov, cov = feats.overlap(part, spec.chunk_frames, spec.chunks, spec.scale, hop_of(spec.frontend))
        for emo in emos:  # one set of weights; a seq2seq model (one attribute) has chunk values
            labels = part[f'Emo{emo}'].to_numpy()
            m = utterance_measures(w, v, ov, cov, labels)
            rows += [dict(emo=emo, split=s, file=f, label=lab, chunks=ov.shape[1], curve=v is not None,
                          **{k: m[k][i] for k in MEASURES}) for i, (f, lab) in enumerate(zip(part['FileName'], labels))]
        if s == 'Test':
            shown = w / w.sum(1, keepdims=True) if v is None else feats.norm.denorm_label(v, emos[0])
            curves = dict(zip(part['FileName'], shown))
    raw, _ = predict_utterances(net, feats.get(list(test_rows['FileName'])), 'cpu', 64)
    raw = np.asarray(raw).reshape(len(raw), -1)  # (N, attributes)
    ccc = {emo: evaluation_metrics(test_rows[f'Emo{emo}'].to_numpy(), feats.norm.denorm_label(raw[:, j], emo))
           for j, emo in enumerate(emos)}
    return rows, ccc, curves


def fmt(mean, se_=None, sd=None, digits=3):
    """'+mean ± se (seed sd)', '—' for NaN."""
    if not np.isfinite(mean):
        return '—'
    s = f'{mean:+.{digits}f}' + (f' ± {se_:.{digits}f}' if se_ is not None else '')
    return s + (f' ({sd:.{digits}f})' if sd is not None and np.isfinite(sd) else '')


def markdown_tables(summary, ccc, emos, curve_models=()):
    """The two tables of docs/claims.md. Test: one row per model, its Test CCC per attribute (mean and spread over seeds) and
    the measures on the Test split's utterances (± standard error over utterances, spread over seeds in brackets).
    Then Validation and Train side by side (the spreads over seeds are in summary.csv). Weight measures are '—' for a
    seq2seq model (its utterance value is the plain mean of its chunk values)."""
    cc = ccc.groupby(['model', 'emo'], sort=False)['ccc'].agg(['mean', 'std'])
    at = summary.set_index(['model', 'emo', 'split'])
    models = list(dict.fromkeys(summary['model']))

    def cells(m, split, sd=True):
        mine = [e for e in emos if (m, e, split) in at.index]  # a seq2seq model may be of some attributes only
        r = at.loc[(m, mine[0], split)]
        sd_of = (lambda k: r[k + '_seed_sd']) if sd else (lambda k: None)  # noqa: E731
        out = ['—', '—', '—'] if m in curve_models else \
            [fmt(r['diff'], r['diff_se'], sd_of('diff')), f'{r["beats"]:.2f} ± {r["beats_se"]:.2f}',
             fmt(r['rho_overlap'], r['rho_overlap_se'], sd_of('rho_overlap'), 2)]
        for e in emos if sd else emos[:1]:
            v = at.loc[(m, e, split)] if e in mine else None
            out.append('—' if v is None else fmt(v['rho_signed'], v['rho_signed_se'],
                                                   v['rho_signed_seed_sd'] if sd else None, 2))
        return out

    def caption(split):
        n = {int(v) for v in summary.loc[summary['split'] == split, 'n']}
        share = at.xs(split, level='split')['share']
        return f'{split}: {"/".join(map(str, sorted(n)))} utterances, uniform mass on the span ' + \
            (f'{share.min():.3f}' if share.min() == share.max() else f'{share.min():.3f}-{share.max():.3f}')

    measures = ['weight on span − uniform', 'beats own shuffles (0.5: no)', 'ρ(weight, span)']
    head = ['model'] + [f'Test CCC {e} (seed sd)' for e in emos] + measures + \
        [f'ρ(weight or value, signed span) {e}' for e in emos]
    out = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for m in models:
        ccc_cells = [f'{cc.loc[(m, e), "mean"]:.3f} ({cc.loc[(m, e), "std"]:.3f})' if (m, e) in cc.index else '—'
                     for e in emos]
        out.append('| ' + ' | '.join([m] + ccc_cells + cells(m, 'Test')) + ' |')
    out += ['', f'({caption("Test")})', '']
    head = ['model'] + [f'{s}: {k}' for s in ('Validation', 'Train')
                        for k in measures + [f'ρ(weight or value, signed span) {emos[0]}']]
    out += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for m in models:
        out.append('| ' + ' | '.join([m] + cells(m, 'Validation', sd=False) + cells(m, 'Train', sd=False)) + ' |')
    out += ['', f'({caption("Validation")}; {caption("Train")})', '']
    return '\n'.join(out)


def draw_figure(path, shown, curves, histories, test_single, lengths, emos, n_utts=4):
    """Top: each model's validation loss over the iterations, mean over seeds. Below: n_utts Test utterances (those
    of the largest |label - 4| of emos[0]): the seed-averaged chunk weights of the `shown` heads over the chunk
    centres, a seq2seq model's curve on the right axis, the emotional sentence shaded."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    col = f'Emo{emos[0]}'
    pick = test_single.loc[(test_single[col] - 4).abs().sort_values(ascending=False).index[:n_utts]]
    fig, axes = plt.subplots(1 + len(pick), 1, figsize=(9, 2.4 * (1 + len(pick))), squeeze=False)
    ax = axes[0, 0]
    color = {h: f'C{i}' for i, h in enumerate(ALL_HEADS + ('seq2seq',))}  # one colour per head, a style per encoder
    style = lambda model: dict(color=color.get(model.split('-', 1)[1], 'k'),  # noqa: E731
                               ls='--' if model.startswith('CNN') else '-')
    for model, h in histories.items():
        if model == SEQ2SEQ:  # another objective, counted in epochs: its own curves are beside its checkpoint
            continue
        ax.plot(h['iter'], h['val_loss'], label=model, **style(model))
    ax.set(xlabel='iteration', ylabel='validation loss',
           title='validation loss (1 − CCC over validation batches; mean over attributes and seeds)')
    ax.legend(fontsize=6, ncol=4)
    for ax, (_, r) in zip(axes[1:, 0], pick.iterrows()):
        ax.axvspan(r['EmoStart'], r['EmoEnd'], color='orange', alpha=0.25, label='emotional sentence')
        ax.axhline(1 / 11, color='grey', lw=0.8, ls=':', label="uniform 1/C'")
        ax2 = None
        for model in shown:
            c = curves.get((model, r['FileName']))
            if c is None:
                continue
            n = len(c) // 11  # the scale: 11 chunks a head, 22 a seq2seq model
            t = chunk_spans(lengths[r['FileName']], 62, 11, n).mean(1) * HOP  # (C',) chunk centres, s
            if model in curves.get('curve_models', ()):
                ax2 = ax2 or ax.twinx()
                ax2.plot(t, c, 'k.-', label=f'{model} {emos[0]} curve')
                ax2.set_ylabel(f'{emos[0]} (1..7)')
            else:
                ax.plot(t, c, marker='o' if model.startswith('LSTM') else 's', ms=3, label=model, **style(model))
        ax.set(ylabel='chunk weight', title=f'{r["FileName"]} (Test), {emos[0]} {r[col]:.2f}')
        ax.legend(fontsize=6, loc='upper left', ncol=2)
        if ax2 is not None:
            ax2.legend(fontsize=6, loc='upper right')
    axes[-1, 0].set_xlabel('chunk centre (s)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_study(out, corpus, encoders, heads, emos, seeds, iterations, batch, lr=None, figure=None, threads=1,
              shown=None, seq2seq=None):
    """Steps 1-3 (the module's text) -> (summary DataFrame, Test CCC DataFrame, the markdown table). One network
    per encoder x head x seed predicts all of `emos` (training.py -emo Act Dom)."""
    emos = [e for e in CSV_ORDER if e in emos]
    st = Study(out, corpus, threads)
    st.norm_terms()
    runs = [(f'{e}-{h}', s, st.train(e, h, emos, s, iterations, batch, lr))  # seed by seed: a stopped study is balanced
            for s in seeds for e in encoders for h in heads]
    if seq2seq:  # {'emos', 'epochs', 'ranker_epochs', 'pairs'}: one model per attribute and seed, -batch as the others
        chosen = seq2seq.pop('emos', None) or emos
        s2s_emos = [e for e in emos if e in chosen]
        runs += [(SEQ2SEQ, s, st.seq2seq(emo, s, batch=batch, **seq2seq)) for s in seeds for emo in s2s_emos]
    norm = NormTerms.load(st.norm_dir)
    splits, test_rows = study_rows(st.paths)
    feats = Features(st.paths['feat_dir'], norm)
    per_utt, cccs, curves, histories = [], [], {}, {}
    for model, seed, ckpt in runs:
        rows, ccc, c = measure_model(ckpt, feats, splits, test_rows)
        per_utt += [dict(model=model, seed=seed, **r) for r in rows]
        cccs += [dict(model=model, emo=emo, seed=seed, ccc=v) for emo, v in ccc.items()]
        for f, w in c.items() if model != SEQ2SEQ or emos[0] in ccc else ():  # seed averages, for the figure
            curves.setdefault((model, f), []).append(w)
        hist = ckpt.replace('.pth.tar', '.history.csv')
        if os.path.isfile(hist):
            histories.setdefault(model, []).append(pd.read_csv(hist)[['iter', 'val_loss']])
    per_utt, cccs = pd.DataFrame(per_utt), pd.DataFrame(cccs)
    atomic_write_bytes(os.path.join(out, 'utterances.csv'), per_utt.to_csv(index=False).encode())
    atomic_write_bytes(os.path.join(out, 'ccc.csv'), cccs.to_csv(index=False).encode())
    summary = summarize(per_utt, list(MEASURES), ['model', 'emo', 'split'])
    atomic_write_bytes(os.path.join(out, 'summary.csv'), summary.to_csv(index=False).encode())
    curve_models = set(per_utt.loc[per_utt['curve'], 'model'])
    table = markdown_tables(summary, cccs, emos, curve_models)
    atomic_write_bytes(os.path.join(out, 'summary.md'), (table + '\n').encode())
    curves = {k: np.mean(v, axis=0) for k, v in curves.items()}
    histories = {k: pd.concat(v).groupby('iter', as_index=False)['val_loss'].mean() for k, v in histories.items()}
    shown = shown or [r[0] for r in runs if not r[0].endswith(EQUAL_WEIGHT_HEADS)]
    curves['curve_models'] = curve_models
    lengths = {f: len(x) for f, x in zip(splits['Test']['FileName'], feats.get(list(splits['Test']['FileName'])))}
    draw_figure(figure or os.path.join(out, 'claims.png'), list(dict.fromkeys(shown)), curves, histories,
                splits['Test'], lengths, emos)
    return summary, cccs, table


def main(argv=None):
    p = ArgParser(prog='attention_report.py', description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='the study folder (models, logs, CSVs; outside the repository)')
    p.add_argument('--corpus', default=None, help='a demo corpus folder (make_demo_corpus.py; default $DEMO_DIR '
                   'or <repo>/demo_data)')
    p.add_argument('-model', nargs='+', dest='encoders', default=['LSTM', 'CNN'], choices=list(ENCODERS))
    p.add_argument('-atten', nargs='+', dest='heads', default=list(ALL_HEADS), choices=list(HEADS))
    p.add_argument('-emo', nargs='+', dest='emos', default=['Act', 'Dom'], choices=list(ATTRIBUTES))
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('-iter', type=int, dest='iterations', default=300)
    p.add_argument('-batch', type=int, dest='batch', default=32)
    p.add_argument('--lr', type=float, default=None, help="training.py's learning rate (default its own, 1e-4)")
    p.add_argument('--seq2seq', action='store_true', help='also the retrieval follow-up\'s seq2seq model per '
                   'attribute and seed (its pipeline: preference pairs, a ranker, chunk ranks, then training)')
    p.add_argument('--seq2seq-emo', nargs='+', choices=list(ATTRIBUTES), help='--seq2seq: only these of the '
                   '-emo attributes (default all)')
    p.add_argument('--seq2seq-epochs', type=int, default=3, help='--seq2seq: its epochs (default 3)')
    p.add_argument('--ranker-epochs', type=int, default=1, help='--seq2seq: the ranker\'s epochs (default 1)')
    p.add_argument('--pairs-per-epoch', type=int, default=2000, help='--seq2seq: the ranker\'s pairs per epoch '
                   '(default 2000)')
    p.add_argument('--threads', type=int, default=1, help='torch threads of each run (default 1)')
    p.add_argument('--figure', default=None, help='the figure (default STUDY/claims.png)')
    args = p.parse_args(argv)
    corpus = args.corpus or demo_dir()
    done = read_marker(corpus)
    if not done or not done.get('features'):
        raise UserError(f'{corpus}: no complete demo corpus with features (build it: python make_demo_corpus.py '
                        f'--out {corpus})')
    if args.iterations < 1 or args.batch < 2 or args.threads < 1:
        raise UserError('-iter must be at least 1, -batch at least 2, --threads at least 1')
    _, _, table = run_study(args.out, corpus, args.encoders, args.heads, args.emos, args.seeds, args.iterations,
                            args.batch, args.lr, args.figure, args.threads,
                            seq2seq=args.seq2seq and dict(emos=args.seq2seq_emo, epochs=args.seq2seq_epochs,
                                                          ranker_epochs=args.ranker_epochs, pairs=args.pairs_per_epoch))
    print(table)
    return 0


if __name__ == '__main__':
    run_cli(main)
