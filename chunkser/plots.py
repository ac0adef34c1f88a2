"""The commands' figures. predict.py --plot: per recording, the chunks and their weights, the seq2seq models' emotion curves and the
timeline of a recording cut into windows; testing.py's confusion matrix. matplotlib's Agg canvas directly (no pyplot, no global backend
state), imported inside the functions: only --plot pays for it. Each function returns its Figure."""
import os

import numpy as np

from .inference import VOICED_MIN, low_voiced
from .features.lld import SAMPLE_RATE
from .spec import EQUAL_WEIGHT_HEADS, HEAD_WEIGHTS, TASKS
from .objectives import CLASS, CSV_ORDER
from .utils import HOP

EMO_COLORS = {'Act': 'tab:red', 'Val': 'tab:green', 'Dom': 'tab:blue'}
EMO_NAMES = {'Act': 'arousal (Act)', 'Val': 'valence (Val)', 'Dom': 'dominance (Dom)'}
SEQ2SEQ = 'trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_{}.pth.tar'  # where pretrained.py puts them
LOW_VOICED_COLOR = '0.8'
NO_SPEECH_COLOR = '0.94'  # the stretches without speech: no row, drawn apart from the greyed rows


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _grey(ax, bounds, low, alpha=1.0):
    """Grey spans over the windows flagged in `low` (k,) (little voiced speech), labelled once."""
    for n, j in enumerate(np.flatnonzero(low) if low is not None else []):
        ax.axvspan(bounds[j, 0] * HOP, bounds[j, 1] * HOP, color=LOW_VOICED_COLOR, alpha=alpha, lw=0,
                   label=f'under {VOICED_MIN:.0%} voiced frames' if n == 0 else None)


def _no_speech(ax, gaps):
    """Light spans over the stretches without speech (seconds, (g, 2)), labelled once."""
    for n, (s, e) in enumerate(gaps if gaps is not None else []):
        ax.axvspan(s, e, color=NO_SPEECH_COLOR, lw=0, zorder=0, label='no speech: no row' if n == 0 else None)


def _draw_signal(top, wave, feats, bounds, low=None, gaps=None):
    """The waveform's envelope (audio) or the z-normalised features (.mat), window bounds dashed, windows with
    little voiced speech greyed over, stretches without speech shaded."""
    if wave is not None:
        hop = SAMPLE_RATE // 100  # envelope of 10 ms bins: a long file stays a light plot
        n = len(wave) // hop * hop
        if n:
            bins = wave[:n].reshape(-1, hop)  # (N/hop, hop)
            t = np.arange(len(bins)) * hop / SAMPLE_RATE
            top.fill_between(t, bins.min(1), bins.max(1), color='0.3', lw=0)
        top.set_ylabel('waveform')
    else:
        top.imshow(feats.T, aspect='auto', origin='lower', cmap='coolwarm', vmin=-3, vmax=3,
                   extent=[0, bounds[-1, 1] * HOP, 0, feats.shape[1]], interpolation='nearest')
        top.set_ylabel('z-norm features')
    for s in bounds[1:, 0]:
        top.axvline(s * HOP, color='k', ls='--', lw=0.8)
    _grey(top, bounds, low, alpha=0.6)
    _no_speech(top, gaps)


def curve_hint(heads):
    """For heads whose weights are all equal, how to get an emotion curve instead (when a seq2seq model is
    installed), else ''."""
    if not any(h in EQUAL_WEIGHT_HEADS for h in heads) or not os.path.isfile(SEQ2SEQ.format('Act')):
        return ''
    return ('equal weights: no chunk stands out. For an emotion curve (a value per chunk), the installed seq2seq model:\n'
            f'--checkpoint {SEQ2SEQ.format("Act")} (_Val, _Dom) --plot DIR [--chunks-out FILE]')


def outputs_line(values, k):
    """What a model says about the first 8 windows: `Act = 4.12, 3.90; Val = ...`, or for a categorical model
    `Class = H (p 0.61), A (p 0.48)` (the predicted class and its probability)."""
    more = ' ...' if k > 8 else ''
    if CLASS in values:
        p = np.stack([v for c, v in values.items() if c.startswith('p_')], axis=1)  # (k, K)
        return f'{CLASS} = ' + ', '.join(f'{c} (p {q:.2f})' for c, q in zip(values[CLASS][:8], p.max(1)[:8])) + more
    return '; '.join(f'{c} = ' + ', '.join(f'{v:.2f}' for v in vs[:8]) + more for c, vs in values.items())


def model_order(name):
    """Rows in CSV order: the attributes' models first, then the others (ActValDom, Class) as given."""
    return CSV_ORDER.index(name) if name in CSV_ORDER else len(CSV_ORDER)


def plot_chunks(png, title, bounds, results, heads, wave=None, feats=None, low=None, gaps=None, duration=None):
    """Waveform (audio) or z-normalised features (.mat) on top; below, per model (one per attribute, or one for
    several attributes or the classes), every chunk as a bar over the time it covers, one row per chunk index,
    coloured by its weight (grey in a row with little speech), with the model's outputs in its title."""
    import matplotlib
    names = sorted(results, key=model_order)
    fig = _figure(12, 2.2 + 1.6 * len(names))
    axes = fig.subplots(1 + len(names), 1, sharex=True, gridspec_kw={'height_ratios': [1.4] + [1] * len(names)})
    top, duration = axes[0], duration or bounds[-1, 1] * HOP
    _draw_signal(top, wave, feats, bounds, low, gaps)
    Cp = next(iter(results.values()))['weights'].shape[1]
    lines = [title] + [f'{h}: {HEAD_WEIGHTS[h]}' for h in heads] + [curve_hint(heads)]  # what the weights are
    top.set_title('\n'.join(filter(None, lines)).replace("C'", f"C' = 1/{Cp}"), fontsize=9)
    for ax, name in zip(axes[1:], names):
        spans, weights = results[name]['spans'], results[name]['weights']  # (k, C', 2), (k, C')
        k, Cp = weights.shape  # windows, chunks per window
        rows = np.tile(np.arange(Cp), k)
        vmax = max(float(weights.max()), 1e-9)
        colors = matplotlib.colormaps['viridis'](weights.reshape(-1) / vmax)  # (k * C', 4)
        if low is not None:  # a row with little speech: its weights mean nothing either
            colors[np.repeat(low, Cp)] = matplotlib.colors.to_rgba(LOW_VOICED_COLOR)
        ax.barh(rows, (spans[..., 1] - spans[..., 0]).reshape(-1), left=spans[..., 0].reshape(-1), height=0.8,
                color=colors, edgecolor='k', lw=0.3)
        if k <= 2:  # room for the numbers
            for (a, b), w, r in zip(spans.reshape(-1, 2), weights.reshape(-1), rows):
                ax.text((a + b) / 2, r, f'{w:.3f}', ha='center', va='center', fontsize=6, color='w' if w < 0.6 * vmax else 'k')
        for s in bounds[1:, 0]:
            ax.axvline(s * HOP, color='k', ls='--', lw=0.8)
        ax.set_ylim(Cp - 0.5, -0.5)
        ax.set_ylabel(f'{name} chunk')
        ax.set_title(outputs_line(results[name]['values'], k) + f'  (weights 0..{vmax:.3f})', fontsize=8, loc='left')
    axes[-1].set_xlim(0, duration)
    axes[-1].set_xlabel('time (s)')
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return fig


def steps(bounds, values):
    """A step line over the rows (k, 2) frames with values (k,): x, y with a break (NaN) wherever rows are apart."""
    x, y = [], []
    for j, ((s, e), v) in enumerate(zip(bounds * HOP, values)):
        if j and s > bounds[j - 1, 1] * HOP:  # a stretch without a row: no line across it
            x.append(np.nan)
            y.append(np.nan)
        x += [s, e]
        y += [v, v]
    return np.array(x), np.array(y)


def plot_timeline(png, title, bounds, results, low=None, gaps=None, duration=None):
    """Act/Val/Dom of each row as a step line over its segment of the recording, whichever models give them, broken
    where there is no speech (shaded: no row); a categorical model's class and its probability written over each
    row; rows flagged in `low` (k,) greyed."""
    fig = _figure(10, 3.5)
    ax = fig.subplots()
    _grey(ax, bounds, low)
    _no_speech(ax, gaps)
    values = {c: v for r in results.values() for c, v in r['values'].items()}
    for emo in CSV_ORDER:
        if emo in values:
            line, = ax.plot(*steps(bounds, values[emo]), label=emo, lw=2)
            for j in np.flatnonzero(bounds[1:, 0] > bounds[:-1, 1]):  # across a stretch without speech: dotted
                ax.plot(bounds[[j, j + 1], [1, 0]] * HOP, values[emo][j:j + 2], ':', color=line.get_color(), lw=1)
    if CLASS in values:
        p = np.stack([v for c, v in values.items() if c.startswith('p_')], axis=1)  # (k, K)
        for (s, e), c, q in zip(bounds * HOP, values[CLASS], p.max(1)):
            ax.text((s + e) / 2, 6.6, f'{c} (p {q:.2f})', ha='center', va='center', fontsize=9)
    ax.set_ylim(1, 7)
    ax.set_xlim(0, duration or bounds[-1, 1] * HOP)
    ax.set_xlabel('time (s)')
    ax.set_ylabel('prediction (1..7)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if any(emo in values for emo in CSV_ORDER):
        ax.legend(loc='upper right')
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return fig


def plot_curves(png, title, bounds, results, wave=None, feats=None, low=None, gaps=None, duration=None):
    """The seq2seq models' emotion curves: waveform (or features) on top; below, per attribute, its value per
    chunk at the chunk's centre, one line per window, the sentence value (their mean) dashed over the window."""
    fig = _figure(10, 5.6)
    top, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={'height_ratios': [1, 2]})
    _draw_signal(top, wave, feats, bounds, low, gaps)
    top.set_title(title, fontsize=9)
    for emo in CSV_ORDER:  # a seq2seq model gives one attribute: its name
        if emo not in results:
            continue
        r, col = results[emo], EMO_COLORS[emo]
        chunks, pred = r['chunks'][emo], r['values'][emo]  # (k, C'), (k,)
        centres = r['spans'].mean(-1)  # (k, C') seconds
        for j, (t, v) in enumerate(zip(centres, chunks)):  # windows are scored apart: one line each
            ax.plot(t, v, '-o', color=col, ms=3, lw=1.6, label=f'{EMO_NAMES[emo]} per chunk' if j == 0 else None)
            ax.hlines(pred[j], bounds[j, 0] * HOP, bounds[j, 1] * HOP, colors=col, linestyles='--', lw=1, alpha=0.7)
        ax.annotate(f'{pred[0]:.2f}', (bounds[0, 1] * HOP, pred[0]), color=col, fontsize=8, va='bottom', ha='right')
    ax.set_ylim(1, 7)  # the whole scale: a small change looks small
    _no_speech(ax, gaps)
    for s in bounds[1:, 0]:
        ax.axvline(s * HOP, color='k', ls=':', lw=0.8)
    ax.set_xlim(0, duration or bounds[-1, 1] * HOP)
    ax.set_xlabel('time (s)')
    ax.set_ylabel('value per chunk (1..7)')
    ax.grid(alpha=0.3)
    m = results[next(iter(results))]['spans'][0, 0]
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=3, frameon=False, title_fontsize=8,
              title=f'points: each {m[1] - m[0]:.2f} s chunk at its centre;  dashed: the sentence value (their mean)')
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return fig


def plot_names(paths):
    """path -> PNG base name: the file stem (calm), or the file name (calm.wav, calm.mat) when inputs share a stem;
    numbered when they share the name too (calm.wav, calm.wav_2: files of two folders)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names, used = {}, set()
    for path, stem in zip(paths, stems):
        base = stem if stems.count(stem) == 1 else os.path.basename(path)
        name, i = base, 1
        while name in used:
            i += 1
            name = f'{base}_{i}'
        used.add(name)
        names.setdefault(path, name)
    return names


def voicing_note(it):
    """The title line for windows with little voiced speech, or ''."""
    low = low_voiced(it)
    if not low.any():
        return ''
    if len(low) == 1:
        where = f'{it["voiced"][0]:.0%} of the frames voiced, under {VOICED_MIN:.0%}; greyed'
    else:
        idx = np.flatnonzero(low) + 1  # window numbers from 1
        where = f'window{"s" if len(idx) > 1 else ""} {", ".join(map(str, idx))} of {len(low)}: ' \
                f'greyed, under {VOICED_MIN:.0%} of the frames voiced'
    return f'little voiced speech ({where}): the values are not meaningful'


def plot_item(plot_dir, it, names):
    """<name>_chunks.png (sequence-to-one models: chunk weights), <name>_curve.png (seq2seq: chunk values),
    and <name>_timeline.png for a recording cut into windows or segments; `names` from plot_names. A recording
    without speech (no row) gets no plot."""
    name, k = names[it['path']], len(it['bounds'])
    if k == 0:
        return
    # the figures draw frames x the LLD hop: another front end's frames in those units (the same seconds)
    it = dict(it, bounds=it['bounds'] * (it.get('hop', HOP) / HOP))
    wave, feats = it['wave'], None if it['wave'] is not None else it['z']
    weights = {m: r for m, r in it['res'].items() if not TASKS[r['spec'].task].curve}
    curves = {m: r for m, r in it['res'].items() if TASKS[r['spec'].task].curve}
    heads = sorted({r['spec'].head for r in weights.values()})
    duration, gaps = it.get('duration'), it.get('gaps')
    unit = 'segment' if gaps is not None and (k > 1 or len(gaps)) else 'window'  # speech segments, or windows
    rows = f'{k} {unit}{"s" * (k > 1)}'
    title = f'{it["path"]}  ({duration or it["bounds"][-1, 1] * HOP:.1f} s, ' \
            f'{" / ".join(heads + ["seq2seq"] * bool(curves))}, {rows})'
    title = '\n'.join(filter(None, [title, voicing_note(it)]))
    low = low_voiced(it)  # (k,)
    shown = dict(low=low, gaps=gaps, duration=duration)
    if weights:
        plot_chunks(os.path.join(plot_dir, name + '_chunks.png'), title, it['bounds'], weights, heads,
                    wave=wave, feats=feats, **shown)
    if curves:
        plot_curves(os.path.join(plot_dir, name + '_curve.png'), title, it['bounds'], curves, wave=wave, feats=feats,
                    **shown)
    if k > 1 or (gaps is not None and len(gaps)):
        plot_timeline(os.path.join(plot_dir, name + '_timeline.png'), title, it['bounds'], it['res'], **shown)


def plot_confusion(png, classes, cm):
    """testing.py's confusion matrix of a categorical model: counts, rows the true class, shaded by row share."""
    k = len(classes)
    fig = _figure(1.2 + 0.6 * k, 1.0 + 0.6 * k)
    ax = fig.subplots()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # (k, k) recall per true class
    ax.imshow(share, cmap='Blues', vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha='center', va='center', fontsize=8, color='w' if share[i, j] > 0.6 else 'k')
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    fig.tight_layout()
    fig.savefig(png, dpi=100)
