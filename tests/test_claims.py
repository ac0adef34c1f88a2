"""The claims study's measures (claims.py): chunk overlap, within-utterance Spearman, the shuffled-weights control
and the statistics over seeds and utterances, on small hand-made arrays."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from chunkser import claims


def test_chunk_overlap_spans():
    # 11 s = 687 frames: step (687 - 62) // 10 = 62 frames, chunk k spans [0.992 k, 0.992 (k + 1)) s
    ov, cov = claims.chunk_overlap(687, 2.0, 3.5, 62, 11, 1)
    assert ov.tolist() == [k in (2, 3) for k in range(11)]
    assert np.allclose(cov[2:4], [(2.976 - 2.0) / 0.992, (3.5 - 2.976) / 0.992]) and not cov[[0, 1, 4]].any()
    # shorter than a chunk: padded at the front, every chunk covers the whole utterance [0, 0.64) s
    ov, cov = claims.chunk_overlap(40, 0.5, 0.9, 62, 11, 1)
    assert ov.all() and np.allclose(cov, 0.14 / 0.64)
    # n = 2 (the seq2seq layout): 22 chunks, step (687 - 62) // 21 = 29 frames
    ov, _ = claims.chunk_overlap(687, 2.0, 3.5, 62, 11, 2)
    starts = np.arange(22) * 29 * 0.016
    assert ov.tolist() == ((starts < 3.5) & (starts + 0.992 > 2.0)).tolist()
    # a self-supervised front end's 0.02 s frames, m = 50: 550 frames = 11 s, step 50 frames, chunk k is [k, k + 1) s
    ov, cov = claims.chunk_overlap(550, 2.0, 3.5, 50, 11, 1, hop=0.02)
    assert ov.tolist() == [k in (2, 3) for k in range(11)] and np.allclose(cov[2:4], [1.0, 0.5])


def test_row_spearman_is_scipys_per_row():
    rng = np.random.default_rng(0)
    x = rng.random((6, 11))
    y = np.round(rng.random((6, 11)), 1)  # ties
    y[2] = [0] * 8 + [0.5, 1, 1]  # many ties, as coverages have
    got = claims.row_spearman(x, y)
    assert np.allclose(got, [spearmanr(a, b)[0] for a, b in zip(x, y)])
    assert claims.row_spearman(-x, y) == pytest.approx(-got)
    const = claims.row_spearman(np.ones((2, 11)), y[:2])  # uniform weights: undefined
    assert np.isnan(const).all()


def test_shuffle_beats():
    C = 11
    ov = np.zeros((3, C), bool)
    ov[:, 2:5] = True  # 3 of 11 chunks overlap
    w = np.full((3, C), 1 / C)  # uniform: every shuffle ties
    w[1] = 0
    w[1, 3] = 1  # all weight on one overlapping chunk: a shuffle ties when it lands on the overlap (3/11)
    w[2] = 0
    w[2, 7] = 1  # all weight on one other chunk: a shuffle is below never, ties 8/11 of the time
    b = claims.shuffle_beats(w, ov, shuffles=20000)
    assert b[0] == 0.5
    assert b[1] == pytest.approx(8 / 11 + 0.5 * 3 / 11, abs=0.01)
    assert b[2] == pytest.approx(0.5 * 8 / 11, abs=0.01)


def test_utterance_measures():
    C = 11
    cov = np.zeros((2, C))
    cov[:, 3:6] = [0.5, 1, 0.25]
    ov = cov > 0
    w = np.ones((2, C))
    w[:, 3:6] = 3  # raw gates: rescaled to sum 1
    m = claims.utterance_measures(w, None, ov, cov, np.array([6.0, 2.0]))
    assert m['share'] == pytest.approx([3 / 11] * 2)
    assert m['mass'] == pytest.approx([9 / 17] * 2) and m['diff'] == pytest.approx(m['mass'] - m['share'])
    assert (m['rho_overlap'] > 0.8).all()
    # signed: the aroused utterance (6) correlates positively, the calm one (2) negatively
    assert m['rho_signed'][0] == pytest.approx(m['rho_overlap'][0])
    assert m['rho_signed'][1] == pytest.approx(-m['rho_overlap'][1])
    # a seq2seq model: its values, not its (uniform) weights, are correlated with the signed span
    v = np.where(ov, 2.0, 4.0)  # low on the span
    m = claims.utterance_measures(np.ones((2, C)), v, ov, cov, np.array([6.0, 2.0]))
    assert m['diff'] == pytest.approx([0, 0]) and m['beats'] == pytest.approx([0.5, 0.5])
    assert np.isnan(m['rho_overlap']).all()
    assert m['rho_signed'][0] < -0.8 and m['rho_signed'][1] > 0.8


def test_signed_spearman_at_the_scale_middle():
    """sign(label - 4): a label of exactly 4 (neutral) signs the span 0, so its signed coverage is constant and
    rho_signed NaN; just above 4 it counts as aroused (+), just below as calm (-)."""
    C = 11
    cov = np.zeros((3, C))
    cov[:, 3:6] = [0.5, 1, 0.25]
    w = np.ones((3, C))
    w[:, 3:6] = 3
    m = claims.utterance_measures(w, None, cov > 0, cov, np.array([4.0, 4.0 + 1e-9, 4.0 - 1e-9]))
    rho = spearmanr(w[0], cov[0])[0]  # by scipy: the weights against the unsigned coverage
    assert np.isnan(m['rho_signed'][0])
    assert m['rho_signed'][1] == pytest.approx(rho) and m['rho_signed'][2] == pytest.approx(-rho)


def test_summarize_seed_average_per_utterance():
    # two seeds, three utterances; seed 1 has an undefined value for utterance c
    df = pd.DataFrame({'model': 'M', 'split': 'Test', 'seed': [0, 0, 0, 1, 1, 1], 'file': list('abcabc'),
                       'x': [1.0, 2.0, 6.0, 3.0, 4.0, np.nan]})
    r = claims.summarize(df, ['x'], ['model', 'split']).iloc[0]
    per_utt = np.array([2.0, 3.0, 6.0])  # seed averages per utterance (c: seed 0 only)
    assert r['n'] == 3 and r['seeds'] == 2 and r['x_n'] == 3
    assert r['x'] == pytest.approx(per_utt.mean())
    assert r['x_se'] == pytest.approx(per_utt.std(ddof=1) / np.sqrt(3))
    assert r['x_seed_sd'] == pytest.approx(np.std([3.0, 3.5], ddof=1))  # the seeds' own means over utterances
    assert np.isnan(claims.se([1.0])) and claims.se([1.0, 3.0, np.nan]) == pytest.approx(1.0)
