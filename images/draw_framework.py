"""Draw images/framework.png: the chunk-level attention SER framework in one picture.

    python images/draw_framework.py [--out images/framework.png] [--dpi 100]

Two utterances of different length go through the same pipeline: the dynamic chunk split
cuts each into C = 11 chunks of about 1 s (step = (T - m) / (C - 1), so a short utterance
gets heavily overlapping chunks), a shared LSTM encodes every chunk into one vector, the
attention head weights the chunk vectors into one utterance vector, and fully connected
layers map it to the attribute score. All pictures are made up (no data is read).
"""
import argparse
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

C, M, HOP = 11, 62, 0.016  # chunks, frames per chunk, seconds per frame
SEC = 3.3  # drawing units per second of audio
COL = {'enc': '#dbe9f6', 'att': '#fde9d2', 'fc': '#e2f0d9', 'edge': '#4a4a4a', 'chunk': plt.cm.viridis}


def box(ax, x, y, w, h, color, text=None, size=11, weight='bold'):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle='round,pad=0.3,rounding_size=1.2',
                                fc=color, ec=COL['edge'], lw=1.3))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha='center', va='center', fontsize=size, weight=weight, linespacing=1.4)


def arrow(ax, x0, y0, x1, y1, lw=1.4, color=None):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle='-|>', mutation_scale=13,
                                 lw=lw, color=color or COL['edge'], shrinkA=0, shrinkB=0))


def utterance(ax, rng, x0, ytop, seconds, name):
    """Waveform, feature strip and the 11 chunk windows of one utterance; returns the chunk rows' y."""
    w = seconds * SEC
    T = int(round(seconds / HOP))
    step = (T - M) // (C - 1)
    ax.text(x0, ytop + 1.0, f'{name}: {seconds:g} s = {T} frames, step {step}', fontsize=10.5, va='bottom')
    # waveform: noise under syllable-like envelopes
    t = np.linspace(0, seconds, int(seconds * 900))
    env = np.clip(np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)) * 0.5 + 0.6 + 0.3 * np.sin(2 * np.pi * 0.4 * t), 0, None)
    env *= (t > 0.15) & (t < seconds - 0.15)
    y = env * rng.normal(0, 0.35, len(t))
    ax.plot(x0 + t * SEC, ytop - 1.8 + np.clip(y, -1, 1) * 1.6, lw=0.5, color='#555555')
    # LLD feature strip: a smooth random "features x frames" image
    F = 26
    img = rng.normal(size=(F, T // 3))
    img = np.cumsum(img, axis=1) * 0.15 + np.cumsum(rng.normal(size=(F, 1)), axis=0) * 0.3
    ax.imshow(img, extent=(x0, x0 + w, ytop - 7.4, ytop - 4.0), aspect='auto', cmap='magma', interpolation='bilinear')
    ax.text(x0 - 0.8, ytop - 1.8, 'audio', ha='right', va='center', fontsize=9.5, color='#555555')
    ax.text(x0 - 0.8, ytop - 5.7, '130 LLD\n+ deltas', ha='right', va='center', fontsize=9.5, color='#555555')
    # chunks: frames [k*step, k*step + m), one thin bar per chunk
    rows = []
    for k in range(C):
        yk = ytop - 9.0 - k * 0.95
        xs = x0 + k * step * HOP * SEC
        ax.add_patch(Rectangle((xs, yk - 0.35), M * HOP * SEC, 0.7, fc=COL['chunk'](k / (C - 1)), ec='none'))
        rows.append(yk)
    ax.text(x0 - 0.8, np.mean(rows), f'{C} chunks\nof 1 s', ha='right', va='center', fontsize=9.5, color='#555555')
    return rows


def note(ax, x, y, text):
    ax.text(x, y, text, ha='center', va='center', fontsize=9.5, style='italic', color='#555555', linespacing=1.2)


def draw_titles(ax):
    title = dict(fontsize=12.5, weight='bold', va='center')
    ax.text(1.5, 58, '1  Dynamic chunk split', **title)
    ax.text(1.5, 55.6, 'C = 11 chunks of m = 62 frames (≈ 1 s) per utterance,  step = ⌊(T − m) / (C − 1)⌋',
            fontsize=10, va='center')
    ax.text(45, 58, '2  Encoder', **title)
    ax.text(63, 58, '3  Chunk-level attention', **title)
    ax.text(99, 58, '4  Utterance-level regression', **title)


def draw_split_and_encoder(ax, rng, ex, ew):
    """1: two utterances of different length, the same number of chunks; 2: one LSTM encodes every chunk."""
    rows_a = utterance(ax, rng, 8, 51.5, 9.0, 'utterance 1')
    rows_b = utterance(ax, rng, 8, 25.5, 3.2, 'utterance 2')
    ax.text(22, 12.5, 'a shorter utterance gets\nthe same 11 chunks,\njust more overlapping', fontsize=10,
            style='italic', color='#555555', va='center')
    box(ax, ex, 5, ew, 46, COL['enc'], 'LSTM\n2 layers\n130 → 130\n\noutput at the\nlast frame\n\nBatchNorm', size=11)
    note(ax, ex + ew / 2, 2.2, 'shared by\nall chunks')
    for rows in (rows_a, rows_b):
        for yk in rows[::2]:
            arrow(ax, 40.5, yk, ex - 0.6, yk, lw=0.7, color='#999999')


def draw_attention(ax, rng, ex, ew, ax_, aw):
    """3: chunk vectors h_c and their attention weights; returns the two utterances' centre heights."""
    box(ax, ax_, 5, aw, 46, COL['att'])
    ax.text(ax_ + aw / 2, 49.2, r'one weight $\alpha_c$ per chunk', ha='center', va='center', fontsize=10, weight='bold')
    centers = []
    for yc0, peak in ((37.5, 7), (16.5, 2)):
        score = np.exp(-0.5 * ((np.arange(C) - peak) / 1.6) ** 2) + 0.15 * rng.random(C)
        alpha = score / score.sum()
        yc = yc0 + 7.25 - np.arange(C) * 1.45
        for k in range(C):
            ax.add_patch(Rectangle((61.5, yc[k] - 0.55), 5.5, 1.1, fc=COL['chunk'](k / (C - 1)), ec='white', lw=0.6))
            ax.add_patch(Rectangle((ax_ + 2, yc[k] - 0.45), 17 * alpha[k] / alpha.max(), 0.9, fc='#e07b39', ec='none'))
        ax.text(64.25, yc[0] + 1.6, r'$h_1 \ldots h_{11}$', ha='center', fontsize=10)
        ax.text(ax_ + 2, yc[0] + 1.6, r'$\alpha_1 \ldots \alpha_{11}$', ha='left', fontsize=10)
        arrow(ax, ex + ew + 0.6, yc0, 61.2, yc0)
        arrow(ax, 67.3, yc0, ax_ + 1.6, yc0, lw=1.0)
        centers.append(yc0)
    note(ax, 64.25, 2.2, '130-d\nchunk vectors')
    note(ax, ax_ + aw / 2 + 1, 2.2, 'heads: RnnAttenVec, SelfAttenVec,\nGatedVec, NonAtten (mean)')
    return centers


def draw_regression(ax, centers, ax_, aw):
    """4: weighted sum -> utterance vector -> FC -> attribute score."""
    fx, fw = 105, 13
    box(ax, fx, 5, fw, 46, COL['fc'], 'FC 130 → 130\n\nReLU\n\nFC 130 → 1', size=11)
    for yo in centers:
        arrow(ax, ax_ + aw + 0.6, yo, 97.4, yo)
        ax.add_patch(Rectangle((97.6, yo - 4.5), 2.0, 9, fc='#c9a0dc', ec=COL['edge'], lw=0.8))
        ax.text(98.6, yo + 5.4, r'$\sum_c \alpha_c h_c$', ha='center', fontsize=10)
        arrow(ax, 99.9, yo, fx - 0.6, yo)
        arrow(ax, fx + fw + 0.6, yo, 123.4, yo)
        box(ax, 124, yo - 3.2, 13.5, 6.4, 'white', 'arousal,\nvalence or\ndominance', size=10, weight='normal')
    note(ax, 98.6, 2.2, 'utterance\nvector')
    note(ax, 130, 2.2, 'one model per attribute,\ntrained with CCC loss')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'framework.png'),
                   help='output PNG (default images/framework.png beside this script)')
    p.add_argument('--dpi', type=int, default=100, help='dots per inch; the figure is 14 x 6 in (default 100)')
    args = p.parse_args(argv)
    rng = np.random.default_rng(7)

    fig = plt.figure(figsize=(14, 6))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 140)
    ax.set_ylim(0, 60)
    ax.axis('off')
    draw_titles(ax)
    ex, ew, ax_, aw = 45, 13, 70, 22  # the encoder's and the attention's boxes: x, width
    draw_split_and_encoder(ax, rng, ex, ew)
    centers = draw_attention(ax, rng, ex, ew, ax_, aw)
    draw_regression(ax, centers, ax_, aw)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi, facecolor='white')
    print(f'wrote {args.out}')
    return 0

if __name__ == '__main__':
    raise SystemExit(main())
