"""Does a demo model's attention head weight the chunks of the one emotional sentence?

    python attention_report.py -atten RnnAttenVec -emo Act -iter 150 -batch 32 [--out demo_data] [--split Test]

About 22 % of the demo corpus's utterances carry their emotional prosody in one sentence of several
(EmoStart/EmoEnd in its label table). For a trained demo model (DIR/Models, DIR/NormTerm) this prints,
per split, the weight mass the head puts on the chunks overlapping [EmoStart, EmoEnd] (weights normalised
to sum 1 per utterance; GatedVec's gates also raw), against uniform weights 1/C', whose mass there is the
share of overlapping chunks.
"""
import os

import numpy as np
import pandas as pd

from checkpoint import check_norm, checkpoint_name, load_model, read_spec
from cli import add_reference_args, reference_run
from corpus import MatFeatures, read_label_table, resolve_split, split_rows
from demo import corpus_paths, demo_dir, read_marker
from device import select_device
from model import ModelSpec
from normterm import NormTerms
from scoring import predict_utterances
from utils import HOP, ArgParser, UserError, chunk_spans, run_cli


SPLIT_ORDER = ('Test', 'Validation', 'Train')


def chunk_overlap(T, start, end, m, C, n):
    """Chunks of an utterance of T frames against the sentence [start, end] in seconds -> (overlaps (C',) bool,
    coverage (C',) the share of each chunk's span inside the sentence). Chunk k covers frames
    given by utils.chunk_spans."""
    a, b = (chunk_spans(T, m, C, n) * HOP).T  # (C',), (C',) seconds
    inside = np.clip(np.minimum(b, end) - np.maximum(a, start), 0, None)
    return (a < end) & (b > start), inside / (b - a)


def attention_report(corpus_paths, model_dir, norm_dir, atten, emo, iterations, batch_size, split=None, device='cpu'):
    """Chunk weights of a trained head on the single-emotional-sentence utterances (rows with EmoStart) against
    uniform weights. `corpus_paths` is {'feat_dir', 'label_csv', ...} (build_demo_corpus's return value); the
    checkpoint is the reference's file name for atten/emo/iterations/batch_size in `model_dir`.

    Weights are normalised per utterance to sum 1 (a no-op for RnnAttenVec's softmax and NonAtten's mean;
    GatedVec's sigmoid gates do not sum to 1). Per split (all splits with such rows, or only `split`):
      n, chunks (C'), uniform (1/C')
      overlap_share      mean over utterances of the share of chunks overlapping [EmoStart, EmoEnd]: the weight
                         mass uniform weights put there (the baseline)
      weight_on_overlap  mean over utterances of the normalised weight mass on the overlapping chunks
      lift               weight_on_overlap / overlap_share (1 = no better than uniform)
      diff_se            standard error over utterances of (mass - share)
      above              utterances whose mass on the overlap exceeds their overlap share (by > 1e-6)
      mean_w_overlap, mean_w_other   normalised weight per chunk, pooled over the chunks of all utterances,
                         on overlapping and on other chunks (uniform: both 1/C')
      raw_overlap, raw_other         the same for the head's own weights (GatedVec: the raw gates 0..1)
      coverage_uniform, coverage_weighted   mean over utterances of the share of the chunks' time inside the
                         sentence, averaged uniformly and weighted by the normalised weights (a graded variant)
    """
    name = checkpoint_name(ModelSpec(head=atten, emo=emo), batch_size, iterations=iterations)
    ckpt = os.path.join(model_dir, name)
    if not os.path.isfile(ckpt):
        raise UserError(f'{ckpt}: checkpoint not found (train it: python training.py --demo -iter {iterations} '
                        f'-batch {batch_size} -emo {emo} -atten {atten} --seed 0)')
    norm = NormTerms.load(norm_dir)
    spec = read_spec(ckpt, atten, norm.feat_dim)
    check_norm(spec, norm, norm_dir, ckpt)
    dev = select_device(device) if isinstance(device, str) else device
    net = load_model(ckpt, spec, dev)
    m, C, n = spec.chunk_frames, spec.chunks, spec.scale

    df = read_label_table(corpus_paths['label_csv'])
    for col in ('EmoStart', 'EmoEnd'):
        if col not in df.columns:
            raise UserError(f'{corpus_paths["label_csv"]}: no {col} column (not a demo corpus label table)')
    rows = df[df['EmoStart'].notna() & df['EmoEnd'].notna()]
    present = list(pd.unique(rows['Split_Set'].astype(str)))
    if split is not None:
        names = [resolve_split(df, split, corpus_paths['label_csv'])]
    else:
        names = [s for s in SPLIT_ORDER if s in present] + sorted(s for s in present if s not in SPLIT_ORDER)
    out = {'atten': atten, 'emo': emo, 'checkpoint': ckpt, 'chunks': C * n, 'uniform': 1.0 / (C * n), 'splits': {}}
    for s in names:
        part = split_rows(rows, s)
        if len(part) == 0:
            raise UserError(f'{corpus_paths["label_csv"]}: no single-emotional-sentence rows (EmoStart) in split {s!r}')
        feats = MatFeatures(corpus_paths['feat_dir'], [str(f) for f in part['FileName']], norm)
        lengths = [len(feats[i]) for i in range(len(feats))]  # frames T of each utterance
        _, w_raw, _, _ = predict_utterances(net, feats, dev, 32, return_chunks=True)  # (N, C')
        w_raw = np.asarray(w_raw, dtype=np.float64)
        w = w_raw / w_raw.sum(1, keepdims=True)
        masks, covs = zip(*(chunk_overlap(T, a, b, m, C, n) for T, a, b in
                            zip(lengths, part['EmoStart'].astype(float), part['EmoEnd'].astype(float))))
        ov, cov = np.array(masks), np.array(covs)  # (N, C')
        share, mass = ov.mean(1), (w * ov).sum(1)
        diff = mass - share
        pooled = lambda x, sel: float(x[sel].mean()) if sel.any() else float('nan')  # noqa: E731
        out['splits'][s] = {
            'n': len(part), 'overlap_share': float(share.mean()), 'weight_on_overlap': float(mass.mean()),
            'lift': float(mass.mean() / share.mean()),
            'diff_se': float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float('nan'),
            'above': int((diff > 1e-6).sum()),
            'mean_w_overlap': pooled(w, ov), 'mean_w_other': pooled(w, ~ov),
            'raw_overlap': pooled(w_raw, ov), 'raw_other': pooled(w_raw, ~ov),
            'coverage_uniform': float(cov.mean(1).mean()), 'coverage_weighted': float((w * cov).sum(1).mean())}
    return out


def format_attention_report(r):
    """The report as a small text table."""
    Cp, gated = r['chunks'], r['atten'] == 'GatedVec'
    lines = [f'{r["atten"]} {r["emo"]}: {r["checkpoint"]}',
             f"single-emotional-sentence utterances; C' = {Cp} chunks, uniform weight 1/{Cp} = {r['uniform']:.4f}; "
             'weights normalised to sum 1 per utterance',
             f'{"split":<11}{"utts":>5}{"uniform":>9}{"head":>7}{"diff ± s.e.":>16}{"lift":>7}{"above":>8}'
             f'{"w/chunk ov.":>13}{"w/chunk other":>15}{"coverage u/head":>17}' + (f'{"raw gate ov./other":>20}' if gated else '')]
    for s, v in r['splits'].items():
        d = v['weight_on_overlap'] - v['overlap_share']
        line = (f'{s:<11}{v["n"]:>5}{v["overlap_share"]:>9.3f}{v["weight_on_overlap"]:>7.3f}{d:>+9.3f} ± {v["diff_se"]:.3f}'
                f'{v["lift"]:>7.3f}{v["above"]:>5}/{v["n"]:<2}{v["mean_w_overlap"]:>13.4f}{v["mean_w_other"]:>15.4f}'
                f'{v["coverage_uniform"]:>11.3f}/{v["coverage_weighted"]:.3f}')
        if gated:
            line += f'{v["raw_overlap"]:>14.3f}/{v["raw_other"]:.3f}'
        lines.append(line)
    lines += ["uniform: the weight mass uniform (1/C') weights put on the chunks overlapping [EmoStart, EmoEnd] "
              '(= the share of chunks overlapping); head: the mass the head puts there; lift = head/uniform;',
              'above: utterances where the head puts more there than uniform; w/chunk: mean normalised weight of one '
              "chunk (uniform: 1/C'); coverage: share of chunk time inside the sentence, uniform/head-weighted"]
    return '\n'.join(lines)


def main(argv=None):
    p = ArgParser(prog='attention_report.py', description=__doc__.split('\n')[0])
    p.add_argument('--out', default=None, help='the demo corpus folder (default $DEMO_DIR or <repo>/demo_data)')
    add_reference_args(p)
    p.set_defaults(atten='RnnAttenVec', iterations=150, batch_size=32)  # the demo's training run
    p.add_argument('--split', default=None, help='one split only (default: every split, Test first)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'], help='default auto')
    args = reference_run(p.parse_args(argv))
    out = args.out or demo_dir()
    done = read_marker(out)
    if not done or not done.get('features'):
        raise UserError(f'{out}: no complete demo corpus with features (build it: python make_demo_corpus.py, '
                        'or make demo)')
    r = attention_report(corpus_paths(out), os.path.join(out, 'Models'), os.path.join(out, 'NormTerm'), args.atten,
                         args.emo, args.iterations, args.batch_size, split=args.split, device=args.device)
    print(format_attention_report(r))
    return 0


if __name__ == '__main__':
    run_cli(main)
