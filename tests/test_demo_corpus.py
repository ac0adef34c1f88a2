"""The espeak-ng demo corpus: layout, labels, speaker-independent splits, the single-emotional-sentence
part, features one-to-one with the audio, and the idempotent second build.

Needs espeak-ng: skipped where it is missing, a failure under CI (CI installs it)."""
import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.io.wavfile

import attention_report
import demo as mdc
import make_demo_corpus
import raters
from conftest import missing
from utils import UserError

SIZE = 24


def corpus_mtimes(out):
    """file -> mtime of a corpus's audio and feature files (a migration must not touch them)."""
    return {f: os.path.getmtime(os.path.join(out, d, f))
            for d in ('Audios', 'feat_mat') for f in os.listdir(os.path.join(out, d))}


def need_espeak():
    if shutil.which('espeak-ng') is None:
        missing('espeak-ng not installed (apt-get install espeak-ng)')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    need_espeak()
    out = str(tmp_path_factory.mktemp('demo'))
    paths = mdc.build_demo_corpus(out, size=SIZE, seed=1, workers=2, features=True, progress=False)
    return out, paths


@pytest.fixture
def no_build(monkeypatch):
    """Fails the test if anything is synthesized or extracted: a complete corpus must be used as it is."""
    def refuse(*args, **kwargs):
        raise AssertionError('the complete corpus was built again')
    for name in ('check_espeak', 'synthesize', 'extract_demo_features'):
        monkeypatch.setattr(mdc, name, refuse)


def test_layout(corpus):
    out, paths = corpus
    assert paths == {'audio_dir': os.path.join(out, 'Audios'), 'feat_dir': os.path.join(out, 'feat_mat'),
                     'label_csv': os.path.join(out, 'labels_concensus.csv')}
    df = pd.read_csv(paths['label_csv'])
    for col in ('FileName', 'EmoAct', 'EmoVal', 'EmoDom', 'EmoClass', 'SpkrID', 'Gender', 'Split_Set', 'EmoStart', 'EmoEnd'):
        assert col in df.columns
    assert len(df) == SIZE and df.FileName.is_unique
    assert sorted(os.listdir(paths['audio_dir'])) == sorted(df.FileName)
    for f in df.FileName[:5]:
        sr, x = scipy.io.wavfile.read(os.path.join(paths['audio_dir'], f))
        assert sr == 16000 and x.dtype == np.int16 and x.ndim == 1
        assert 1.0 <= len(x) / sr <= 11.0
    assert json.load(open(os.path.join(out, '.complete')))['size'] == SIZE


def test_labels_and_splits(corpus):
    df = pd.read_csv(corpus[1]['label_csv'])
    for col in ('EmoAct', 'EmoVal', 'EmoDom'):
        assert df[col].between(1, 7).all()
        assert df[col].std() > 0.3  # labels vary
    assert set(df.Split_Set) == {'Train', 'Validation', 'Test'}
    assert (df.Split_Set == 'Train').mean() > 0.5
    speakers = df.groupby('Split_Set').SpkrID.apply(set)
    assert not (speakers['Train'] & speakers['Validation'])
    assert not (speakers['Train'] & speakers['Test'])
    assert not (speakers['Validation'] & speakers['Test'])
    assert set(df.Gender) <= {'Male', 'Female'}


def test_single_emotional_sentence(corpus):
    paths = corpus[1]
    df = pd.read_csv(paths['label_csv'])
    single = df[df.EmoStart.notna()]
    assert 0.1 <= len(single) / len(df) <= 0.35
    assert set(single.Split_Set) == {'Train', 'Validation', 'Test'}  # spread over all splits
    assert df.EmoEnd.notna().equals(df.EmoStart.notna())
    for _, r in single.iterrows():
        sr, x = scipy.io.wavfile.read(os.path.join(paths['audio_dir'], r.FileName))
        assert 0 <= r.EmoStart < r.EmoEnd <= len(x) / sr + 1e-3
        assert r.EmoEnd - r.EmoStart >= 0.5
        # the neutral sentences are really there: the emotional one is not the whole utterance
        assert r.EmoEnd - r.EmoStart < len(x) / sr - 0.5


def test_features_match_audio(corpus):
    _, paths = corpus
    wavs = sorted(os.path.splitext(f)[0] for f in os.listdir(paths['audio_dir']))
    mats = sorted(os.path.splitext(f)[0] for f in os.listdir(paths['feat_dir']))
    assert wavs == mats
    x = scipy.io.loadmat(os.path.join(paths['feat_dir'], mats[0] + '.mat'))['Audio_data']
    sr, w = scipy.io.wavfile.read(os.path.join(paths['audio_dir'], mats[0] + '.wav'))
    assert x.shape[1] == 131 and abs(x.shape[0] - len(w) / sr / 0.016) < 5


def test_second_build_is_a_noop(corpus, no_build):
    out, paths = corpus
    before = {f: os.path.getmtime(os.path.join(paths['audio_dir'], f)) for f in os.listdir(paths['audio_dir'])}
    again = mdc.build_demo_corpus(out, size=SIZE, seed=1, workers=2, features=True, progress=False)
    assert again == paths  # nothing synthesized or extracted (no_build), no file rewritten
    assert before == {f: os.path.getmtime(os.path.join(paths['audio_dir'], f)) for f in os.listdir(paths['audio_dir'])}
    with pytest.raises(UserError, match='--force'):  # another size in the same folder is refused
        mdc.build_demo_corpus(out, size=SIZE + 6, seed=1, progress=False)


def test_ensure_uses_a_complete_corpus(corpus, monkeypatch, no_build):
    out, paths = corpus
    monkeypatch.setenv('DEMO_DIR', out)
    marker = open(os.path.join(out, '.complete')).read()
    assert mdc.ensure_demo_corpus(progress=False) == paths  # nothing synthesized or extracted (no_build)
    assert open(os.path.join(out, '.complete')).read() == marker


def test_plan_is_deterministic():
    a, b = mdc.plan_corpus(40, seed=5), mdc.plan_corpus(40, seed=5)
    assert a == b and a != mdc.plan_corpus(40, seed=6)
    split_of = {v: s for v, _, s in mdc.SPEAKERS}
    assert all(split_of[p['voice']] == p['Split_Set'] for p in a)


def test_classes_are_five_of_their_own():
    """EmoClass names the quadrants N H A S and R (a < 0, v >= 0: "relaxed"), never MSP-Podcast's O ("other")."""
    assert [mdc.emo_class(a, v) for a, v in ((0.1, -0.1), (0.5, 0.5), (0.5, -0.5), (-0.5, -0.5), (-0.5, 0.5))] == \
        ['N', 'H', 'A', 'S', 'R']
    assert {p['EmoClass'] for p in mdc.plan_corpus(200, seed=0)} == {'N', 'H', 'A', 'S', 'R'}


def test_version_1_corpus_migrates_by_its_labels(corpus, tmp_path, monkeypatch, no_build):
    """A version-1 corpus (that quadrant labelled O) is brought to this rule by rewriting its labels CSV alone: R
    for O, every other byte as it was, no audio or feature file synthesised (no_build) or touched."""
    out, paths = corpus
    old = str(tmp_path / 'v1')
    shutil.copytree(out, old, ignore=shutil.ignore_patterns('NormTerm', 'Models', '.lock'))  # other tests' files
    want = open(paths['label_csv'], 'rb').read()
    assert want.count(b',R,') > 0 and b',O,' not in want  # EmoClass is the only one-letter column
    label_csv, marker = mdc.corpus_paths(old)['label_csv'], os.path.join(old, '.complete')
    with open(label_csv, 'wb') as f:
        f.write(want.replace(b',R,', b',O,'))
    done = {**json.load(open(marker)), 'version': 1}
    json.dump(done, open(marker, 'w'))
    before = corpus_mtimes(old)
    monkeypatch.setenv('DEMO_DIR', old)
    assert mdc.ensure_demo_corpus(progress=False) == mdc.corpus_paths(old)
    assert open(label_csv, 'rb').read() == want
    assert json.load(open(marker)) == {**done, 'version': mdc.BUILD_VERSION}
    assert corpus_mtimes(old) == before
    assert mdc.build_demo_corpus(old, size=SIZE, seed=1, progress=False) == mdc.corpus_paths(old)  # now current
    assert open(label_csv, 'rb').read() == want


def test_simulated_raters(corpus):
    """labels_detailed.json (the v1.6 layout, read by raters.py): 3-7 raters per utterance, integer ratings 1..7
    scattered around the consensus label (so ties occur), the consensus class."""
    out, paths = corpus
    df = pd.read_csv(paths['label_csv'])
    got = raters.read_raters(os.path.join(out, 'labels_detailed.json'))
    assert list(got) == list(df.FileName)
    assert all(3 <= len(r) <= 7 for r in got.values())
    assert {len(r) for r in got.values()} != {len(next(iter(got.values())))}  # the number of raters varies
    ties = spread = 0
    for row in df.itertuples():
        rs = got[row.FileName]
        assert list(rs) == [f'WORKER{k:05d}' for k in range(1, len(rs) + 1)]
        assert {r['EmoClass'] for r in rs.values()} == {row.EmoClass}
        for a in raters.ATTRS:
            v = np.array([r[a] for r in rs.values()])
            assert ((v == np.round(v)) & (v >= 1) & (v <= 7)).all()
            ties += len(set(v)) < len(v)
            spread += len(set(v)) > 1
    assert ties > 0 and spread > len(df)  # raters tie, and disagree (more than one attribute per utterance)
    for a in raters.ATTRS:
        means = np.array([np.mean([r[a] for r in got[f].values()]) for f in df.FileName])
        assert np.abs(means - df[a].to_numpy()).mean() < 0.5, a  # scattered around the label, not off it
        assert np.corrcoef(means, df[a])[0, 1] > 0.8, a


def test_version_2_corpus_gets_its_raters(corpus, tmp_path, monkeypatch, no_build):
    """A corpus built before labels_detailed.json (version 2) gets it on first use, the same file a fresh build
    writes; its labels CSV, audio and features stay as they are (nothing synthesised: no_build)."""
    out, paths = corpus
    old = str(tmp_path / 'v2')
    shutil.copytree(out, old, ignore=shutil.ignore_patterns('NormTerm', 'Models', '.lock'))
    want = open(os.path.join(out, 'labels_detailed.json'), 'rb').read()
    detailed, marker = os.path.join(old, 'labels_detailed.json'), os.path.join(old, '.complete')
    os.remove(detailed)
    done = {**json.load(open(marker)), 'version': 2}
    json.dump(done, open(marker, 'w'))
    label_csv = mdc.corpus_paths(old)['label_csv']
    csv_bytes = open(label_csv, 'rb').read()
    before = corpus_mtimes(old)
    monkeypatch.setenv('DEMO_DIR', old)
    assert mdc.ensure_demo_corpus(progress=False) == mdc.corpus_paths(old)
    assert open(detailed, 'rb').read() == want
    assert open(label_csv, 'rb').read() == csv_bytes and corpus_mtimes(old) == before
    assert json.load(open(marker)) == {**done, 'version': mdc.BUILD_VERSION}


PLAN_5 = 'fbb54bce1914c8621cc66fb4ed9e5c6f46bc3c772b7116a80ea7941f81921a09'  # version 2's plan_corpus(40, seed=5)


def test_raters_leave_the_plan_alone():
    """The raters draw from a stream of their own: the whole plan of a seed (what is synthesised, the consensus
    labels) is what it was before they existed."""
    p = mdc.plan_corpus(40, seed=5)
    assert hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest() == PLAN_5


def test_missing_espeak_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(mdc.shutil, 'which', lambda name: None)
    with pytest.raises(UserError, match='espeak-ng not found: apt-get install espeak-ng'):
        mdc.build_demo_corpus(str(tmp_path / 'x'), size=12, progress=False)


def test_main_cli(tmp_path):
    need_espeak()
    out = str(tmp_path / 'cli')
    assert make_demo_corpus.main(['--out', out, '--size', '8', '--no-features', '--workers', '2']) == 0
    assert len(pd.read_csv(os.path.join(out, 'labels_concensus.csv'))) == 8
    with pytest.raises(UserError):
        make_demo_corpus.main(['--out', out, '--size', '3'])


def test_demo_dir(monkeypatch):
    monkeypatch.setenv('DEMO_DIR', '/somewhere/demo')
    assert mdc.demo_dir() == '/somewhere/demo'
    monkeypatch.delenv('DEMO_DIR')
    assert mdc.demo_dir() == os.path.join(os.path.dirname(os.path.abspath(mdc.__file__)), 'demo_data')


# ----------------------------------------------------------------------------------
# the attention report

def test_chunk_overlap_spans():
    # 11 s = 687 frames: step (687 - 62) // 10 = 62 frames, chunk k spans [0.992 k, 0.992 (k + 1)) s
    ov, cov = attention_report.chunk_overlap(687, 2.0, 3.5, 62, 11, 1)
    assert ov.tolist() == [k in (2, 3) for k in range(11)]
    assert np.allclose(cov[2:4], [(2.976 - 2.0) / 0.992, (3.5 - 2.976) / 0.992]) and not cov[[0, 1, 4]].any()
    # shorter than a chunk: padded at the front, every chunk covers the whole utterance [0, 0.64) s
    ov, cov = attention_report.chunk_overlap(40, 0.5, 0.9, 62, 11, 1)
    assert ov.all() and np.allclose(cov, 0.14 / 0.64)


def _expected_masks(paths, df):
    """Overlap masks computed here from the .mat frame counts, the chunk rule and the CSV."""
    from utils import chunk_starts
    masks = {}
    for _, r in df.iterrows():
        T = scipy.io.loadmat(os.path.join(paths['feat_dir'], r.FileName[:-4] + '.mat'))['Audio_data'].shape[0]
        if T < 62:
            mask = np.ones(11, bool)
        else:
            lo = chunk_starts(T, 62, 11, 1) * 0.016
            mask = (lo < r.EmoEnd) & (lo + 62 * 0.016 > r.EmoStart)
        masks.setdefault(r.Split_Set, []).append(mask)
    return {s: np.array(v) for s, v in masks.items()}


def test_attention_report_arithmetic(corpus, monkeypatch, capsys):
    out, paths = corpus
    import torch
    import attention_report
    import model as M
    import checkpoint as CK
    from model import ModelSpec
    from normterm import NormTerms
    norm_dir, model_dir = os.path.join(out, 'NormTerm'), os.path.join(out, 'Models')
    NormTerms(np.zeros(130), np.ones(130), {e: (4.0, 1.0) for e in ('Act', 'Dom', 'Val')}).save(norm_dir)
    os.makedirs(model_dir, exist_ok=True)
    torch.manual_seed(0)
    torch.save(M.build_model(ModelSpec(head='NonAtten')).state_dict(),
               os.path.join(model_dir, CK.checkpoint_name(ModelSpec(head='NonAtten', emo='Act'), 4, iterations=2)))
    df = pd.read_csv(paths['label_csv'])
    masks = _expected_masks(paths, df[df.EmoStart.notna()])

    # NonAtten: uniform weights, so the mass on the overlap is exactly the share of overlapping chunks
    r = attention_report.attention_report(paths, model_dir, norm_dir, 'NonAtten', 'Act', 2, 4)
    assert list(r['splits']) == ['Test', 'Validation', 'Train'] and r['chunks'] == 11
    for s, v in r['splits'].items():
        share = masks[s].mean(1).mean()
        assert v['n'] == len(masks[s])
        assert v['overlap_share'] == pytest.approx(share, abs=1e-12)
        assert v['weight_on_overlap'] == pytest.approx(share, abs=1e-6) and v['lift'] == pytest.approx(1, abs=1e-5)
        assert v['above'] == 0 and v['mean_w_overlap'] == pytest.approx(1 / 11, abs=1e-7)
        assert v['coverage_weighted'] == pytest.approx(v['coverage_uniform'], abs=1e-6)

    # hand-set raw weights: 3 on chunk 0, 0 elsewhere (gates that do not sum to 1): all the normalised
    # weight sits on chunk 0, which spans [0, 0.992) s
    def fake(net, utts, device, batch_size=64, return_chunks=False):
        w = np.zeros((len(utts), 11), np.float32)
        w[:, 0] = 3.0
        return np.zeros(len(utts), np.float32), w, None, 0.0
    with monkeypatch.context() as mp:
        mp.setattr(attention_report, 'predict_utterances', fake)
        r = attention_report.attention_report(paths, model_dir, norm_dir, 'NonAtten', 'Act', 2, 4, split='train')
    assert list(r['splits']) == ['Train']
    v, mk = r['splits']['Train'], masks['Train']
    first = df[df.EmoStart.notna() & (df.Split_Set == 'Train')].EmoStart.to_numpy() < 0.992
    assert 0 < first.sum() < len(first)  # seed 1: one Train sentence starts the utterance, three do not
    assert np.array_equal(mk[:, 0], first)
    assert v['weight_on_overlap'] == pytest.approx(first.mean())
    assert v['raw_overlap'] == pytest.approx(3 * first.sum() / mk.sum())
    if (~mk).any():
        assert v['mean_w_other'] == pytest.approx((~first).sum() / (~mk).sum())

    # the command line prints the table for the corpus folder's Models/ and NormTerm/
    assert attention_report.main(['--out', out, '-atten', 'NonAtten', '-iter', '2', '-batch', '4',
                     '--device', 'cpu']) == 0
    text = capsys.readouterr().out
    assert 'NonAtten Act' in text and all(s in text for s in ('Test', 'Validation', 'Train'))
    with pytest.raises(UserError, match='checkpoint not found'):
        attention_report.main(['--out', out, '-atten', 'GatedVec', '-iter', '2', '-batch', '4'])


def test_demo_flag_on_every_script(corpus, monkeypatch, tmp_path, capsys):
    """--demo runs norm_para -> training -> testing -> predict on the demo corpus, with its NormTerm and Models
    inside the demo folder, never in ./NormTerm or ./Models."""
    import norm_para
    import predict
    import testing
    import training
    demo = str(tmp_path / 'demo')
    shutil.copytree(corpus[0], demo, ignore=shutil.ignore_patterns('NormTerm', 'Models'))  # other tests' files
    monkeypatch.setenv('DEMO_DIR', demo)
    run = ['--demo', '-iter', '2', '-batch', '4', '-atten', 'GatedVec']
    assert norm_para.main(['--demo']) == 0
    assert len(os.listdir(os.path.join(demo, 'NormTerm'))) == 8
    assert training.main(run + ['-emo', 'Act', '--seed', '0']) == 0
    assert os.path.isfile(os.path.join(demo, 'Models', 'LSTM_iter2_batch4_ChunkSeq2One_GatedVec_Act.pth.tar'))
    capsys.readouterr()
    assert testing.main(run + ['-emo', 'Act']) == 0
    assert 'Act-CCC: ' in capsys.readouterr().out
    out = str(tmp_path / 'pred.csv')
    assert predict.main(run + ['--out', out]) == 0  # no PATH: the demo's Test audio
    df = pd.read_csv(out)
    labels = pd.read_csv(os.path.join(demo, 'labels_concensus.csv'))
    assert len(df) == (labels.Split_Set == 'Test').sum()
    assert df.Act.notna().all() and df.Val.isna().all()  # only an Act model was trained
    assert not os.path.exists('NormTerm') and not os.path.exists('Models')


def test_make_demo_retrieval_at_a_tiny_size(corpus, tmp_path):
    """make demo-retrieval runs the four stages on (a copy of) a demo corpus, here at a tiny size: it prints the
    seq2seq model's Test CCC and ends with the emotion curve of a Test utterance (chunks CSV and picture)."""
    import subprocess
    import sys
    out, _ = corpus
    d = str(tmp_path / 'demo')
    shutil.copytree(out, d, ignore=shutil.ignore_patterns('NormTerm', 'Models', '.lock'))
    # 10 Train and 10 Validation sentences, so each split has preference pairs (int(N * 0.1) partners each)
    labels = pd.read_csv(os.path.join(d, 'labels_concensus.csv'))
    rest = np.flatnonzero(labels['Split_Set'] != 'Test')
    labels.loc[rest[:10], 'Split_Set'], labels.loc[rest[10:], 'Split_Set'] = 'Train', 'Validation'
    labels.to_csv(os.path.join(d, 'labels_concensus.csv'), index=False)
    venv = os.path.dirname(os.path.dirname(sys.executable))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(['make', '-s', '-C', root, '-o', f'{venv}/.installed', 'demo-retrieval', f'VENV={venv}',
                        f'PY={sys.executable}', f'DEMO_DIR={d}', 'DEMO_RANKER_EP=1', 'DEMO_PAIRS=16', 'DEMO_SEQ_EP=2',
                        'DEMO_RBATCH=8'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ccc = [ln for ln in r.stdout.splitlines() if ln.startswith('Act-CCC: ')]
    assert len(ccc) == 1 and np.isfinite(float(ccc[0].split(': ')[1]))
    done = r.stdout.strip().splitlines()[-1]
    assert done.startswith('demo-retrieval done: the emotion curve of demo_')
    for f in ('retrieval/prefs/training_pairs_Act.csv', 'retrieval/EmoChunkRankSeq/training_Act.json',
              'retrieval/EmoChunkRankSeq/training_Act.provenance.json',
              'Models/LSTM_epoch2_batch8_EmoRankerSeq_Act.json', 'Models/LSTM_epoch1_batch8_Act_ranker.json'):
        assert os.path.isfile(os.path.join(d, f)), f
    chunks = pd.read_csv(os.path.join(d, 'retrieval', 'chunks.csv'))
    assert len(chunks) % 22 == 0 and set(chunks['attribute']) == {'Act'}
    assert any(f.endswith('_curve.png') for f in os.listdir(os.path.join(d, 'retrieval', 'plots')))
