"""Predict arousal (Act), valence (Val) and dominance (Dom) on the 1..7 scale for audio or feature files.

    python predict.py PATH [PATH ...] [-atten SelfAttenVec] [-iter 5000 -batch 128] [--model-dir DIR]
                      [--norm-dir DIR] [--out FILE.csv] [--plot DIR] [--window 11] [--device auto]

PATH is a .wav/.flac file (any sample rate, any channel count), a feature .mat (as feature_extraction.py
writes them), or a folder searched recursively for both. One checkpoint per attribute is looked up by
the reference's file name (-iter, -batch, -atten) in --model-dir, else ./Models, else ./trained_model_v1.6;
or --checkpoint FILE (repeatable, one per attribute) runs exactly that file, ours or one keras_convert.py or
pretrained.py wrote, as its JSON describes it, and fills its attribute's column.

Output: CSV rows `file,Act,Val,Dom,start,end` on stdout and, with --out, in a file. `file` is the path as
given (joined with the folder for files found in one). The model was trained on turns of at most 11 s
(its 11 chunks of 1 s), so a recording longer than --window seconds is cut into consecutive windows of
equal length, at most --window seconds each, one row per window; start/end are a row's bounds in seconds
(frame index x 0.016). A recording that fits one window gets start 0 and end its length. An attribute
whose checkpoint is missing is named on stderr and its column left empty.

--checkpoint FILE (repeatable, one per attribute) uses exactly those checkpoints, as their JSON describes
them. A seq2seq model of the retrieval follow-up (task 'chunk', `pretrained.py` installs the released ones
in ./trained_seq2seq_model_v1.6) also gives a value per chunk: --chunks-out FILE writes the rows
`file,attribute,chunk,start,end,value` (chunk numbers run on through a recording's windows, times in seconds,
values on the 1..7 scale), and --plot draws that emotion curve over the waveform (<name>_curve.png).
"""
import argparse
import csv
import io
import os
import sys

import numpy as np

import lld as fx
from checkpoint import check_norm, checkpoint_name, find_checkpoint, load_model, read_spec, require_task
from cli import add_reference_args, add_system_args
from demo import use_demo
from inference import collect_inputs, load_input
from device import select_device
from files import atomic_write_bytes, ensure_writable_dir
from model import HEAD_WEIGHTS, ModelSpec
from normterm import NormTerms
from scoring import predict_utterances
from streams import use_cpu_streams
from utils import HOP, ArgParser, UserError, chunk_spans, run_cli

CSV_ORDER = ('Act', 'Val', 'Dom')  # the CSV's attribute columns (the reference's NormTerm order is Act, Dom, Val)
GROUP = 32    # input files held in memory at once (their features, windows and plots)


def parse_args(argv):
    p = ArgParser(prog='predict.py', description=__doc__.split('\n')[0], epilog=__doc__.split('\n\n', 2)[2],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('paths', nargs='*', metavar='PATH',
                   help='.wav/.flac/.mat files, or folders of them (with --demo, default: the demo Test audio)')
    add_reference_args(p, emo=False)
    p.add_argument('--checkpoint', action='append', metavar='FILE',
                   help='use this checkpoint (repeat for several attributes; its JSON says what it is) instead of '
                        'looking up -atten/-iter/-batch names')
    p.add_argument('--chunks-out', metavar='FILE', help="a seq2seq model's value per chunk: rows "
                   'file,attribute,chunk,start,end,value (needs --checkpoint of task chunk models)')
    p.add_argument('--model-dir', help='checkpoint folder (default ./Models, else ./trained_model_v1.6)')
    p.add_argument('--norm-dir', help="z-norm terms (default: the folder the checkpoint's JSON names, else ./NormTerm)")
    p.add_argument('--out', help='also write the CSV rows to this file')
    p.add_argument('--plot', metavar='DIR', help='draw <name>_chunks.png per recording (chunk layout and weights) '
                   'and, for recordings cut into windows, <name>_timeline.png (Act/Val/Dom over time)')
    p.add_argument('--window', type=float, default=11.0,
                   help='longest span in seconds scored as one utterance; 0 never cuts (default 11)')
    p.add_argument('--force', action='store_true', help="use --norm-dir even if the checkpoint's JSON names other terms")
    p.add_argument('--demo', action='store_true', help="the demo corpus's checkpoints and NormTerm (see training.py --demo)")
    add_system_args(p)
    args = p.parse_args(argv)
    if args.demo:
        demo_paths(args)
    if not args.paths:
        raise UserError('predict.py: give at least one PATH (a .wav, .flac or .mat file, or a folder)')
    if args.window != 0 and args.window < 1:
        raise UserError(f'--window {args.window}: expected 0 (never cut) or at least 1 second (one chunk)')
    for out in (args.out, args.chunks_out):
        if out and not os.path.isdir(os.path.dirname(out) or '.'):  # fail before the work, not after
            raise UserError(f'{out}: the folder for the CSV does not exist')
    return args


# ----------------------------------------------------------------------------------
# inputs, checkpoints, z-norm terms

def demo_paths(args):
    """--demo: the demo's Models/ and NormTerm/; with no PATH, the audio of its Test split."""
    import pandas as pd
    paths = use_demo(args)
    if not args.paths:
        df = pd.read_csv(paths['label_csv'])
        args.paths = [os.path.join(paths['audio_dir'], f) for f in df[df['Split_Set'] == 'Test']['FileName']]

def find_models(args):
    """emo -> (checkpoint path, config) for the attributes that have a checkpoint; the others are named."""
    if args.checkpoint:
        return given_models(args)
    if args.chunks_out:
        raise UserError('--chunks-out needs seq2seq checkpoints (task chunk): pass --checkpoint FILE, e.g. '
                        'trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_Act.pth.tar')
    found = {}
    for emo in CSV_ORDER:
        name = checkpoint_name(ModelSpec(head=args.atten, emo=emo), args.batch_size, iterations=args.iterations)
        path = find_checkpoint(name, args.model_dir)
        if path:
            found[emo] = (path, read_spec(path, args.atten))
    where = args.model_dir or './Models or ./trained_model_v1.6'
    if not found:
        act = checkpoint_name(ModelSpec(head=args.atten, emo='Act'), args.batch_size, iterations=args.iterations)
        raise UserError(f'no {args.atten} checkpoint ({act} '
                        f'or its Val/Dom siblings) in {where}: run `make pretrained` (installs the released v1.6 '
                        'models into ./trained_model_v1.6 and ./NormTerm) or pass --model-dir')
    for emo in CSV_ORDER:
        if emo not in found:
            print(f'warning: no {emo} checkpoint '
                  f'({checkpoint_name(ModelSpec(head=args.atten, emo=emo), args.batch_size, iterations=args.iterations)}) in {where}: '
                  f'the {emo} column stays empty', file=sys.stderr)
    return found


def given_models(args):
    """--checkpoint FILE...: emo -> (path, spec), one checkpoint per attribute."""
    found = {}
    for path in args.checkpoint:
        if not os.path.isfile(path):
            raise UserError(f'{path}: checkpoint not found')
        spec = read_spec(path)
        require_task(spec, path, ('utterance', 'chunk'), 'predict.py')
        if spec.emo in found:
            raise UserError(f'{path}: a second {spec.emo} checkpoint (after {found[spec.emo][0]}); give one per attribute')
        if args.chunks_out and spec.task != 'chunk':
            raise UserError(f'{path}: --chunks-out needs seq2seq checkpoints (task chunk), this one is {spec.task!r}')
        found[spec.emo] = (path, spec)
    return found


def load_norm(args, found):
    """--norm-dir, else the folder named in a checkpoint's JSON (training writes it), else ./NormTerm."""
    named = [spec.norm_dir for _, spec in found.values() if spec.norm_dir]
    norm_dir = args.norm_dir or next((d for d in named if os.path.isdir(d)), None) or './NormTerm'
    if not os.path.isdir(norm_dir):
        raise UserError(f'{norm_dir}: NormTerm folder not found: run `make pretrained` (the released v1.6 terms '
                        'go to ./NormTerm) or pass --norm-dir')
    norm = NormTerms.load(norm_dir)
    for path, spec in found.values():
        check_norm(spec, norm, norm_dir, path, args.force)
    return norm


def window_bounds(T, max_frames):
    """Frames [start, end) of consecutive equal windows of at most max_frames covering T frames: (k, 2).
    Equal lengths avoid a last window of a few frames, which the model would score from padding."""
    if max_frames <= 0 or T <= max_frames:
        return np.array([[0, T]])
    k = -(-T // max_frames)  # ceil
    edges = np.round(np.linspace(0, T, k + 1)).astype(int)
    return np.stack([edges[:-1], edges[1:]], axis=1)


# ----------------------------------------------------------------------------------
# plots (matplotlib's Agg canvas directly: no pyplot, no global backend state)

def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: only --plot pays for it
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def window_chunk_spans(bounds, spec):
    """Seconds [start, end) of every chunk of every window: (k, C', 2)."""
    return np.array([chunk_spans(e - s, spec.chunk_frames, spec.chunks, spec.scale) + s for s, e in bounds],
                    dtype=np.float64) * HOP


def _draw_signal(top, wave, feats, bounds):
    """The waveform's envelope (audio) or the z-normalised features (.mat), window bounds dashed."""
    if wave is not None:
        hop = fx.SAMPLE_RATE // 100  # envelope of 10 ms bins: a long file stays a light plot
        n = len(wave) // hop * hop
        if n:
            bins = wave[:n].reshape(-1, hop)  # (N/hop, hop)
            t = np.arange(len(bins)) * hop / fx.SAMPLE_RATE
            top.fill_between(t, bins.min(1), bins.max(1), color='0.3', lw=0)
        top.set_ylabel('waveform')
    else:
        top.imshow(feats.T, aspect='auto', origin='lower', cmap='coolwarm', vmin=-3, vmax=3,
                   extent=[0, len(feats) * HOP, 0, feats.shape[1]], interpolation='nearest')
        top.set_ylabel('z-norm features')
    for s in bounds[1:, 0]:
        top.axvline(s * HOP, color='k', ls='--', lw=0.8)


def plot_chunks(png, title, bounds, results, heads, wave=None, feats=None):
    """Waveform (audio) or z-normalised features (.mat) on top; below, per attribute, every chunk as a bar
    over the time it covers, one row per chunk index, coloured by its weight."""
    import matplotlib
    emos = [e for e in CSV_ORDER if e in results]
    fig = _figure(12, 2.2 + 1.6 * len(emos))
    axes = fig.subplots(1 + len(emos), 1, sharex=True, gridspec_kw={'height_ratios': [1.4] + [1] * len(emos)})
    top, duration = axes[0], bounds[-1, 1] * HOP
    _draw_signal(top, wave, feats, bounds)
    Cp = next(iter(results.values()))['weights'].shape[1]
    weights = '\n'.join(f'{h}: {HEAD_WEIGHTS[h]}' for h in heads)  # what the heads' chunk weights are
    top.set_title(f'{title}\n{weights}'.replace("C'", f"C' = 1/{Cp}"), fontsize=9)
    for ax, emo in zip(axes[1:], emos):
        spans, weights, preds = results[emo]['spans'], results[emo]['weights'], results[emo]['pred']  # (k,C',2), (k,C'), (k,)
        k, Cp = weights.shape  # windows, chunks per window
        rows = np.tile(np.arange(Cp), k)
        vmax = max(float(weights.max()), 1e-9)
        colors = matplotlib.colormaps['viridis'](weights.reshape(-1) / vmax)
        ax.barh(rows, (spans[..., 1] - spans[..., 0]).reshape(-1), left=spans[..., 0].reshape(-1), height=0.8,
                color=colors, edgecolor='k', lw=0.3)
        if k <= 2:  # room for the numbers
            for (a, b), w, r in zip(spans.reshape(-1, 2), weights.reshape(-1), rows):
                ax.text((a + b) / 2, r, f'{w:.3f}', ha='center', va='center', fontsize=6, color='w' if w < 0.6 * vmax else 'k')
        for s in bounds[1:, 0]:
            ax.axvline(s * HOP, color='k', ls='--', lw=0.8)
        ax.set_ylim(Cp - 0.5, -0.5)
        ax.set_ylabel(f'{emo} chunk')
        ax.set_title(f'{emo} = ' + ', '.join(f'{p:.2f}' for p in preds[:8]) + (' ...' if k > 8 else '')
                     + f'  (weights 0..{vmax:.3f})', fontsize=8, loc='left')
    axes[-1].set_xlim(0, duration)
    axes[-1].set_xlabel('time (s)')
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def plot_timeline(png, title, bounds, results):
    """Act/Val/Dom of each window as a step line over the recording."""
    fig = _figure(10, 3.5)
    ax = fig.subplots()
    edges = np.append(bounds[:, 0], bounds[-1, 1]) * HOP  # (k+1,) windows are contiguous
    for emo in CSV_ORDER:
        if emo in results:
            ax.stairs(results[emo]['pred'], edges, baseline=None, label=emo, lw=2)
    ax.set_ylim(1, 7)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel('time (s)')
    ax.set_ylabel('prediction (1..7)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc='upper right')
    fig.tight_layout()
    fig.savefig(png, dpi=100)


EMO_COLORS = {'Act': 'tab:red', 'Val': 'tab:green', 'Dom': 'tab:blue'}
EMO_NAMES = {'Act': 'arousal (Act)', 'Val': 'valence (Val)', 'Dom': 'dominance (Dom)'}


def plot_curves(png, title, bounds, results, wave=None, feats=None):
    """The seq2seq models' emotion curves: waveform (or features) on top; below, per attribute, its value per
    chunk at the chunk's centre, one line per window, the sentence value (their mean) dashed over the window."""
    fig = _figure(10, 5.6)
    top, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={'height_ratios': [1, 2]})
    _draw_signal(top, wave, feats, bounds)
    top.set_title(title, fontsize=9)
    edges = np.append(bounds[:, 0], bounds[-1, 1]) * HOP  # (k+1,) window edges in seconds
    lo, hi = np.inf, -np.inf
    for emo in CSV_ORDER:
        if emo not in results:
            continue
        r, col = results[emo], EMO_COLORS[emo]
        centres = r['spans'].mean(-1)  # (k, C') seconds
        for j, (t, v) in enumerate(zip(centres, r['chunks'])):  # windows are scored apart: one line each
            ax.plot(t, v, '-o', color=col, ms=3, lw=1.6, label=f'{EMO_NAMES[emo]} per chunk' if j == 0 else None)
            ax.hlines(r['pred'][j], edges[j], edges[j + 1], colors=col, linestyles='--', lw=1, alpha=0.7)
        ax.annotate(f'{r["pred"][0]:.2f}', (edges[1], r['pred'][0]), color=col, fontsize=8, va='bottom', ha='right')
        lo, hi = min(lo, r['chunks'].min()), max(hi, r['chunks'].max())
    mid, half = (lo + hi) / 2, max((hi - lo) / 2 * 1.25, 0.5)  # at least 1 point of the 1..7 scale shown
    ax.set_ylim(max(mid - half, 1), min(mid + half, 7))
    for s in bounds[1:, 0]:
        ax.axvline(s * HOP, color='k', ls=':', lw=0.8)
    ax.set_xlim(0, edges[-1])
    ax.set_xlabel('time (s)')
    ax.set_ylabel('value per chunk (1..7)')
    ax.grid(alpha=0.3)
    m = results[next(iter(results))]['spans'][0, 0]
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=3, frameon=False, title_fontsize=8,
              title=f'points: each {m[1] - m[0]:.2f} s chunk at its centre;  dashed: the sentence value (their mean)')
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def plot_name(path, used):
    """A PNG base name from the file stem, numbered when two inputs share one."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, i = stem, 1
    while name in used:
        i += 1
        name = f'{stem}_{i}'
    used.add(name)
    return name


# ----------------------------------------------------------------------------------
# main

def load_group(paths, args, norm, max_frames, failures):
    """Input files -> items: path, z-normalised features (T, F), waveform (for plots), windows (k, 2) and the
    windows' float32 features. A file that cannot be read is named on stderr and added to `failures`."""
    items = []
    for path in paths:
        try:
            raw, wave = load_input(path, keep_audio=bool(args.plot))
        except UserError as e:
            print(f'error: {e}', file=sys.stderr)
            failures.append(path)
            continue
        z = norm.normalize(raw)  # (T, F) float64, as the reference
        bounds = window_bounds(len(z), max_frames)
        items.append({'path': path, 'z': z, 'wave': wave, 'bounds': bounds,
                      'segments': [z[s:e].astype(np.float32) for s, e in bounds]})
    return items


def score_items(items, models, norm, device):
    """Every window of every item with every attribute's model (batched; eval batch norm = one at a time):
    item['res'][emo] = pred (k,), weights (k, C'), and for seq2seq models the chunk values (k, C') (1..7)."""
    segments = [seg for it in items for seg in it['segments']]
    scores = {}
    for emo, (net, spec) in models.items():
        raw_pred, weights, values, _ = predict_utterances(net, segments, device, batch_size=32, return_chunks=True)
        chunks = None if values is None else norm.denorm_label(values, emo)  # seq2seq: chunk values
        scores[emo] = (norm.denorm_label(raw_pred, emo), weights, chunks)  # (S,), (S, C'), (S, C') | None
    i = 0
    for it in items:
        k = len(it['bounds'])
        it['res'] = {emo: {'pred': p[i:i + k], 'weights': w[i:i + k], 'chunks': None if c is None else c[i:i + k],
                           'spans': window_chunk_spans(it['bounds'], models[emo][1])}
                     for emo, (p, w, c) in scores.items()}
        i += k


def item_rows(it):
    """The CSV rows of one item (one per window) and its chunk rows (seq2seq models: one per chunk)."""
    res = it['res']
    rows = [[it['path']] + [f'{res[emo]["pred"][j]:.6f}' if emo in res else '' for emo in CSV_ORDER]
            + [f'{s * HOP:.3f}', f'{e * HOP:.3f}'] for j, (s, e) in enumerate(it['bounds'])]
    chunk_rows = [[it['path'], emo, c, f'{a:.3f}', f'{b:.3f}', f'{v:.6f}']
                  for emo in CSV_ORDER if emo in res and res[emo]['chunks'] is not None
                  for c, ((a, b), v) in enumerate(zip(res[emo]['spans'].reshape(-1, 2), res[emo]['chunks'].reshape(-1)))]
    return rows, chunk_rows


def plot_item(args, it, models, used_names):
    """<name>_chunks.png (sequence-to-one models: chunk weights), <name>_curve.png (seq2seq: chunk values),
    and <name>_timeline.png for a recording cut into windows."""
    name, k = plot_name(it['path'], used_names), len(it['bounds'])
    wave, feats = it['wave'], None if it['wave'] is not None else it['z']
    kind = {emo: models[emo][1] for emo in it['res']}
    weights = {emo: r for emo, r in it['res'].items() if kind[emo].task != 'chunk'}
    curves = {emo: r for emo, r in it['res'].items() if kind[emo].task == 'chunk'}
    heads = sorted({kind[emo].head for emo in weights})
    title = f'{it["path"]}  ({len(it["z"]) * HOP:.1f} s, {" / ".join(heads + ["seq2seq"] * bool(curves))}, ' \
            f'{k} window{"s" * (k > 1)})'
    if weights:
        plot_chunks(os.path.join(args.plot, name + '_chunks.png'), title, it['bounds'], weights, heads,
                    wave=wave, feats=feats)
    if curves:
        plot_curves(os.path.join(args.plot, name + '_curve.png'), title, it['bounds'], curves, wave=wave, feats=feats)
    if k > 1:
        plot_timeline(os.path.join(args.plot, name + '_timeline.png'), title, it['bounds'], it['res'])


def write_csv(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(header)
    w.writerows(rows)
    try:
        atomic_write_bytes(path, buf.getvalue().encode())
    except OSError as e:
        raise UserError(f'{path}: cannot write the CSV ({e.strerror})')


def main(argv=None):
    args = parse_args(argv)
    files = collect_inputs(args.paths)
    found = find_models(args)
    norm = load_norm(args, found)
    device = select_device(args.device)
    models = {emo: (use_cpu_streams(load_model(path, spec, device), device, args.cpu_streams), spec)
              for emo, (path, spec) in found.items()}
    if args.plot:
        ensure_writable_dir(args.plot)
    max_frames = int(args.window / HOP + 1e-9)  # 11 s -> 687 frames

    header = ['file', *CSV_ORDER, 'start', 'end']
    out = csv.writer(sys.stdout, lineterminator='\n')
    out.writerow(header)
    rows, chunk_rows, failures, used_names = [], [], [], set()
    for g in range(0, len(files), GROUP):
        items = load_group(files[g:g + GROUP], args, norm, max_frames, failures)
        if not items:
            continue
        score_items(items, models, norm, device)
        for it in items:
            r, c = item_rows(it)
            out.writerows(r)
            rows += r
            chunk_rows += c
            if args.plot:
                plot_item(args, it, models, used_names)
        sys.stdout.flush()

    if args.out:
        write_csv(args.out, header, rows)
    if args.chunks_out:
        write_csv(args.chunks_out, ['file', 'attribute', 'chunk', 'start', 'end', 'value'], chunk_rows)
    if failures:
        print(f'{len(failures)} of {len(files)} input(s) failed: {", ".join(failures)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
