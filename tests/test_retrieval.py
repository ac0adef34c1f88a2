"""The retrieval follow-up (Lin & Busso, TASLP 2023): its released seq2seq models and rankers, installed by
pretrained.py, give the reference's own outputs (../shared/golden/retrieval_outputs.npz) through testing.py,
predict.py and retrieval.py; batched ranking equals a one-pair-per-call loop; the emotion curve; errors."""
import csv
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

from chunkser import checkpoint as CK
from chunkser.commands import predict
from chunkser.commands import pretrained
from chunkser.commands import retrieval
from chunkser.commands import testing
from benchmarking.reference import reference_pair_wins
from chunkser.corpus import ATTRIBUTES
from chunkser.model import ModelSpec, build_model
from chunkser.normterm import NormTerms
from chunkser.retrieval.ranks import generate_chunk_EmoSeq, rank_utterances
from chunkser.utils import HOP, UserError, chunk_batch, chunk_spans, evaluation_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ2SEQ = 'trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_{}.pth.tar'
RANKER = 'trained_ranker_model_v1.6/LSTM_epoch20_batch128_{}_ranker.pth.tar'
N_UTT = 11


@pytest.fixture(scope='module')
def goldens(golden, golden_npz):
    """(the reference's outputs, the retrieval reference's outputs)."""
    return golden, golden_npz('retrieval_outputs')


@pytest.fixture(scope='module')
def released(shared, tmp_path_factory):
    """The retrieval set installed by pretrained.py --retrieval-from: (dest folder, its source)."""
    src = os.path.join(shared, 'upstream-retrieval-v1.6')
    dest = str(tmp_path_factory.mktemp('released'))
    assert pretrained.main(['--dest', dest, '--retrieval-from', src]) == 0
    return dest, src


@pytest.fixture(scope='module')
def norm_dir(upstream):
    return upstream[1]


# ----------------------------------------------------------------------------------
# installing

def test_install_describes_every_model(released, upstream):
    dest, src = released
    for rel in pretrained.RETRIEVAL_SHA256:
        assert filecmp.cmp(os.path.join(dest, rel), os.path.join(src, rel), shallow=False), rel
    fingerprint = NormTerms.load(upstream[1]).fingerprint()
    assert pretrained.V16_NORM_FINGERPRINT == fingerprint
    for emo in ATTRIBUTES:
        for rel, task, epochs in ((SEQ2SEQ, 'chunk', 30), (RANKER, 'ranker', 20)):
            path = os.path.join(dest, rel.format(emo))
            info = CK.read_description(path)
            spec = CK.read_spec(path)
            assert (spec.task, spec.emo, spec.head, spec.chunk_frames, spec.chunks, spec.scale) == \
                   (task, emo, None, 62, 11, 2)
            assert (info['epochs'], info['batch_size'], spec.norm_fingerprint) == (epochs, 128, fingerprint)
            assert list(CK.load_model(path, spec).state_dict()) == \
                   list(torch.load(path, map_location='cpu', weights_only=True))  # lstm.*, fc1.*, fc2.*


def test_install_sets_rule(released, upstream, tmp_path, capsys):
    """--from alone installs only the v1.6 set; a rerun skips; --retrieval-url-base reads the upstream layout."""
    dest, src = released
    assert pretrained.main(['--dest', dest, '--retrieval-from', src]) == 0
    assert '0 installed, 9 already present' in capsys.readouterr().out
    only = tmp_path / 'only'
    assert pretrained.main(['--dest', str(only), '--from', os.path.dirname(upstream[0])]) == 0
    assert sorted(os.listdir(only)) == ['NormTerm', 'trained_model_v1.6']

    mirror = tmp_path / 'mirror'  # the upstream repository's layout: rankers and ranks under chunk_emotion_rankers/
    for rel in pretrained.RETRIEVAL_SHA256:
        target = mirror / pretrained.retrieval_remote(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.join(src, rel))
    url = tmp_path / 'url'
    assert pretrained.main(['--dest', str(url), '--retrieval-url-base', mirror.as_uri()]) == 0
    assert sorted(os.listdir(url)) == ['EmoChunkRankSeq', 'trained_ranker_model_v1.6', 'trained_seq2seq_model_v1.6']


# ----------------------------------------------------------------------------------
# the seq2seq models through testing.py and predict.py

@pytest.mark.numeric
@pytest.mark.parametrize('emo', ATTRIBUTES)
def test_seq2seq_through_testing_py(emo, goldens, released, golden_corpus, norm_dir, tmp_path, capsys):
    _, gold = goldens
    out = tmp_path / 'pred.csv'
    argv = ['--checkpoint', os.path.join(released[0], SEQ2SEQ.format(emo)), '--feat-dir', golden_corpus[0],
            '--label-csv', golden_corpus[1], '--norm-dir', norm_dir, '--out', str(out)]
    assert testing.main(argv) == 0
    df = pd.read_csv(out)
    np.testing.assert_allclose(df['pred'].to_numpy(), gold[f'seq2seq_{emo}_pred'], atol=1e-5, rtol=0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ['EmoRankerSeq_Info', 'Epochs: 30', 'Batch_Size: 128', 'Model_Type: LSTM',
                         f'{emo}-CCC: {evaluation_metrics(df["true"], df["pred"])!r}']


def run_predict(capsys, *argv):
    code = predict.main([str(a) for a in argv])
    out, _ = capsys.readouterr()
    assert code == 0
    return list(csv.DictReader(out.splitlines()))


def seq2seq_args(released, norm_dir):
    return [a for emo in ATTRIBUTES for a in ('--checkpoint', os.path.join(released[0], SEQ2SEQ.format(emo)))] + \
           ['--norm-dir', norm_dir]


@pytest.mark.numeric
def test_seq2seq_chunks_through_predict_py(goldens, released, golden_corpus, norm_dir, tmp_path, capsys):
    """--chunks-out gives the reference's chunk outputs (de-normalised), the CSV its sentence values."""
    _, gold = goldens
    norm = NormTerms.load(norm_dir)
    chunks_csv = tmp_path / 'chunks.csv'
    rows = run_predict(capsys, golden_corpus[0], '--window', 0, '--chunks-out', chunks_csv, *seq2seq_args(released, norm_dir))
    chunks = pd.read_csv(chunks_csv)
    assert list(chunks.columns) == ['file', 'attribute', 'chunk', 'start', 'end', 'value']
    for emo in ATTRIBUTES:
        np.testing.assert_allclose([float(r[emo]) for r in rows], gold[f'seq2seq_{emo}_pred'], atol=1e-5, rtol=0)
        for i in range(N_UTT):
            mine = chunks[(chunks['file'] == os.path.join(golden_corpus[0], f'utt_{i:02d}.mat')) & (chunks['attribute'] == emo)]
            assert mine['chunk'].tolist() == list(range(22))
            np.testing.assert_allclose(mine['value'].to_numpy(), norm.denorm_label(gold[f'seq2seq_{emo}_chunks_{i}'], emo),
                                       atol=1e-5, rtol=0)


def test_chunks_out_times_cover_the_utterance(goldens, shared, released, golden_corpus, norm_dir, tmp_path, capsys):
    """Chunk times follow the chunk rule: the first starts at 0 (of its window), the last ends where the rule
    puts it (the utterance's end when (T - m) is a multiple of n*C - 1); a file shorter than a chunk: all [0, T)."""
    ref, _ = goldens
    short = os.path.join(shared, 'golden', 'audio', 'short.mat')
    chunks_csv = tmp_path / 'chunks.csv'
    rows = run_predict(capsys, golden_corpus[0], short, '--chunks-out', chunks_csv, *seq2seq_args(released, norm_dir))
    chunks = pd.read_csv(chunks_csv)
    lengths = {os.path.join(golden_corpus[0], f'utt_{i:02d}.mat'): int(n) for i, n in enumerate(ref['lengths'])}
    lengths[short] = len(scipy.io.loadmat(short)['Audio_data'])
    for path, T in lengths.items():
        windows = [(round(float(r['start']) / HOP), round(float(r['end']) / HOP)) for r in rows if r['file'] == path]
        assert windows[0][0] == 0 and windows[-1][1] == T
        got = chunks[(chunks['file'] == path) & (chunks['attribute'] == 'Val')][['start', 'end']].to_numpy()
        want = np.concatenate([chunk_spans(e - s, 62, 11, 2) + s for s, e in windows]) * HOP
        np.testing.assert_allclose(got, want, atol=6e-4)  # printed to the millisecond
        for j, (s, e) in enumerate(windows):  # per window: first start at its start, chunks inside it
            w = got[22 * j:22 * (j + 1)]
            assert w[0, 0] == pytest.approx(s * HOP, abs=6e-4) and w[:, 1].max() <= e * HOP + 6e-4
            if e - s >= 62 and (e - s - 62) % 21 == 0:
                assert w[-1, 1] == pytest.approx(e * HOP, abs=6e-4)
    assert len(lengths) == 12 and any(T > 700 for T in lengths.values())  # windows exercised
    T = lengths[short]
    assert T < 62 and (chunks[chunks['file'] == short][['start', 'end']].to_numpy() == [0, round(T * HOP, 3)]).all()


# ----------------------------------------------------------------------------------
# the rankers through retrieval.py

@pytest.mark.numeric
@pytest.mark.parametrize('emo', ATTRIBUTES)
def test_rankers_through_retrieval_py(emo, goldens, released, golden_corpus, norm_dir, tmp_path, capsys):
    ref, gold = goldens
    out = tmp_path / 'ranks.json'
    assert retrieval.main(['-set', 'Test', '-emo', emo, '--model-dir', os.path.join(released[0], 'trained_ranker_model_v1.6'),
                           '--feat-dir', golden_corpus[0], '--label-csv', golden_corpus[1], '--norm-dir', norm_dir,
                           '--out', str(out)]) == 0
    ranks = json.loads(out.read_text())
    assert list(ranks) == [f'utt_{i:02d}.wav' for i in range(N_UTT)]
    for i in range(N_UTT):
        assert ranks[f'utt_{i:02d}.wav'] == {'ChunkRankSeq': gold[f'ranker_{emo}_rank_{i}'].tolist()}

    # the wins, and ranking given files (printed as JSON)
    path = os.path.join(released[0], RANKER.format(emo))
    model = CK.load_model(path, CK.read_spec(path))
    norm = NormTerms.load(norm_dir)
    feats = [norm.normalize(ref[f'lld_{i}'][:, 1:]).astype(np.float32) for i in range(N_UTT)]
    wins, _ = rank_utterances(model, feats, batch_size=4)
    np.testing.assert_array_equal(wins, np.stack([gold[f'ranker_{emo}_score_{i}'] for i in range(N_UTT)]))
    capsys.readouterr()
    assert retrieval.main(['--checkpoint', path, '--norm-dir', norm_dir, golden_corpus[0]]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [v['ChunkRankSeq'] for v in printed.values()] == [v['ChunkRankSeq'] for v in ranks.values()]


def test_provenance_beside_the_ranks(released, golden_corpus, norm_dir, tmp_path, capsys):
    """A written rank JSON keeps the reference's layout; X.provenance.json beside it names the ranker, its sha256
    and attribute, the NormTerm folder and what was ranked (split, label CSV, features; or the PATHs). Printed
    ranks (stdout) get none."""
    rel = RANKER.format('Val')
    ranker = os.path.join(released[0], rel)
    out = tmp_path / 'validation_Val.json'
    assert retrieval.main(['-set', 'Test', '-emo', 'Val', '--model-dir', os.path.dirname(ranker), '--feat-dir', golden_corpus[0],
                           '--label-csv', golden_corpus[1], '--norm-dir', norm_dir, '--out', str(out)]) == 0
    ranks = json.loads(out.read_text())
    assert all(list(v) == ['ChunkRankSeq'] for v in ranks.values()) and len(ranks) == N_UTT
    prov = json.loads((tmp_path / 'validation_Val.provenance.json').read_text())
    assert prov['ranker'] == os.path.abspath(ranker) and prov['emo'] == 'Val' and prov['split'] == 'Test'
    assert prov['ranker_sha256'] == pretrained.RETRIEVAL_SHA256[rel]
    assert prov['label_csv'] == os.path.abspath(golden_corpus[1]) and prov['feat_dir'] == os.path.abspath(golden_corpus[0])
    assert prov['norm_dir'] == os.path.abspath(norm_dir) and prov['sentences'] == N_UTT and prov['ranks'] == out.name
    assert 'provenance: ' + str(tmp_path / 'validation_Val.provenance.json') in capsys.readouterr().err

    one = os.path.join(golden_corpus[0], 'utt_03.mat')
    assert retrieval.main(['--checkpoint', ranker, '--norm-dir', norm_dir, one, '--out', str(tmp_path / 'mine.json')]) == 0
    prov = json.loads((tmp_path / 'mine.provenance.json').read_text())
    assert prov['split'] is None and prov['paths'] == [os.path.abspath(one)] and 'label_csv' not in prov
    before = sorted(os.listdir(tmp_path))
    assert retrieval.main(['--checkpoint', ranker, '--norm-dir', norm_dir, one]) == 0  # to stdout
    assert sorted(os.listdir(tmp_path)) == before


def test_ranker_found_in_models_then_the_released_folder(released, golden_corpus, norm_dir, tmp_path, monkeypatch):
    """Without --model-dir a reference-named ranker is looked for in ./Models, then ./trained_ranker_model_v1.6."""
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(released[0], 'trained_ranker_model_v1.6'), 'trained_ranker_model_v1.6')
    name = os.path.basename(RANKER.format('Dom'))
    args = ['-set', 'Test', '-emo', 'Dom', '--feat-dir', golden_corpus[0], '--label-csv', golden_corpus[1],
            '--norm-dir', norm_dir, '--out', 'r.json']
    def used():
        assert retrieval.main(args) == 0
        return json.loads(open('r.provenance.json').read())['ranker']
    assert used() == os.path.abspath(os.path.join('trained_ranker_model_v1.6', name))
    os.makedirs('Models')
    for f in os.listdir('trained_ranker_model_v1.6'):  # the model and its JSON
        if f.startswith(name.split('.pth')[0]):
            os.symlink(os.path.abspath(os.path.join('trained_ranker_model_v1.6', f)), os.path.join('Models', f))
    assert used() == os.path.abspath(os.path.join('Models', name))


@pytest.mark.numeric
def test_batched_equals_pair_loop(goldens, released, norm_dir, one_thread):
    """On an utterance whose chunks are identical at different starts (features periodic with the step), an
    ordinary one and one whose first six chunks only are identical (a periodic stretch, then speech), batched among
    other utterances (one with step 0), retrieval gives the wins of the pair loop and pandas' ranks
    (method='min': a tie shares the smallest rank and the next rank skips the tied places)."""
    ref, _ = goldens
    norm = NormTerms.load(norm_dir)
    rng = np.random.default_rng(0)
    periodic = np.tile(rng.normal(size=(4, 130)), (41, 1))[:62 + 21 * 4].astype(np.float32)  # step 4, period 4
    ordinary = norm.normalize(ref['lld_6'][:, 1:]).astype(np.float32)  # T = 257: step 9
    partly = ordinary.copy()
    stretch = 62 + 5 * 9  # chunks 0..5 (starts 0, 9, .., 45) lie in it
    partly[:stretch] = 0.5 * np.tile(np.random.default_rng(5).normal(size=(9, 130)), (12, 1))[:stretch]
    utts = [periodic, ordinary, partly,
            norm.normalize(ref['lld_0'][:, 1:]).astype(np.float32)]  # the last: batched only (one pair loop: ~5 s)
    path = os.path.join(released[0], RANKER.format('Act'))
    model = CK.load_model(path, CK.read_spec(path))
    wins, ranks = rank_utterances(model, utts)
    for u, x in enumerate(utts[:3]):
        chunks = torch.from_numpy(chunk_batch([x], [0], 62, 11, 2))  # (22, 62, 130)
        want = reference_pair_wins(model, chunks)  # the reference's way: one ranker call per ordered pair
        np.testing.assert_array_equal(wins[u], want)
        pd_rank = pd.Series(want).rank(method='min', ascending=False).to_numpy().astype(int)
        np.testing.assert_array_equal(ranks[u], pd_rank)
    assert (ranks[0] == 1).all() and len(set(ranks[1])) > 11 and (ranks[3] == 1).all()  # (T = 62: step 0)
    # the six identical chunks tie with others ranked below them, so a dense rank would differ from the min rank
    tied = ranks[2][:6]
    assert (tied == tied[0]).all() and len(set(ranks[2][6:])) == 16 and (ranks[2] > tied[0] + 1).any()
    dense = pd.Series(wins[2]).rank(method='dense', ascending=False).to_numpy().astype(int)
    assert (dense != ranks[2]).any()


@pytest.mark.numeric
def test_emotion_curves(goldens):
    _, gold = goldens
    n = len([k for k in gold if k.startswith('curve_rank_')])
    assert n == 45
    for k in range(n):
        curve = generate_chunk_EmoSeq(gold[f'curve_mu_{k}'], gold[f'curve_std_{k}'], gold[f'curve_rank_{k}'])
        np.testing.assert_allclose(curve, gold[f'curve_{k}'], atol=1e-9, rtol=0, err_msg=f'curve {k}')


# ----------------------------------------------------------------------------------
# the model description and wrong checkpoints

@pytest.mark.numeric
def test_tasks_are_model_description_entries():
    for task, width in (('chunk', 1), ('ranker', 2)):
        model = build_model(ModelSpec(head=None, task=task, scale=2))
        assert [k.split('.')[0] for k in model.state_dict()] == ['lstm'] * 8 + ['fc1'] * 2 + ['fc2'] * 2
        assert model.fc2.out_features == width
    x = torch.zeros(2 * 22, 62, 130)
    y, w, c = build_model(ModelSpec(head=None, task='chunk', scale=2)).eval()(x, return_chunks=True)
    assert y.shape == (2,) and c.shape == (2, 22) and torch.allclose(c.mean(1), y)
    assert torch.equal(w, torch.full((2, 22), 1 / 22))  # the utterance value is the plain mean of the chunk values
    with pytest.raises(UserError, match="head 'SelfAttenVec' for task 'chunk'"):
        ModelSpec(task='chunk').check()
    with pytest.raises(UserError, match="unknown head None"):
        ModelSpec(head=None).check()


def test_wrong_task_is_one_line(released, golden_corpus, norm_dir, tmp_path):
    ranker = os.path.join(released[0], RANKER.format('Act'))
    seq2seq = os.path.join(released[0], SEQ2SEQ.format('Act'))
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'testing.py'), '--checkpoint', ranker, '--feat-dir', golden_corpus[0],
                        '--label-csv', golden_corpus[1], '--norm-dir', norm_dir], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1  # a ranker goes to the ranker test,
    assert 'the ranker test draws int(11 * 0.1) = 1 sentences' in r.stderr  # which 11 sentences cannot feed
    for call in (lambda: predict.main([golden_corpus[0], '--checkpoint', ranker, '--norm-dir', norm_dir]),
                 lambda: retrieval.main(['--checkpoint', seq2seq, '--norm-dir', norm_dir, golden_corpus[0]]),
                 lambda: predict.main([golden_corpus[0], '--chunks-out', str(tmp_path / 'c.csv'), '--norm-dir', norm_dir])):
        with pytest.raises(UserError) as e:
            call()
        assert '\n' not in str(e.value)


@pytest.mark.parametrize('script', ['predict.py', 'retrieval.py'])
def test_wrong_task_names_the_file_and_what_was_expected(script, released, golden_corpus, norm_dir, tmp_path):
    """predict.py given a ranker (it has no sentence value: retrieval.py ranks its chunks), retrieval.py given a
    seq2seq model: one line naming the file, what it is and what was expected; exit status 2; nothing written."""
    ranker = os.path.join(released[0], RANKER.format('Act'))
    seq2seq = os.path.join(released[0], SEQ2SEQ.format('Act'))
    out = tmp_path / 'out'
    given, is_, wants, hint = {
        'predict.py': (ranker, "'ranker' model", "predict.py needs a 'utterance' model or a 'chunk' model", 
                       'no sentence value: rank its chunks with retrieval.py'),
        'retrieval.py': (seq2seq, "'chunk' model", "retrieval.py needs a 'ranker' model", 'predict.py --chunks-out')}[script]
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), '--checkpoint', given, '--norm-dir', norm_dir,
                        '--out', str(out), os.path.join(golden_corpus[0], 'utt_00.mat')],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert given in r.stderr and is_ in r.stderr and wants in r.stderr and hint in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_curve_plots(shared, released, golden_corpus, norm_dir, tmp_path, capsys):
    """--plot with seq2seq models: a curve per file over the waveform (audio) or features (.mat); a recording
    cut into windows also gets its timeline."""
    plots = tmp_path / 'plots'
    run_predict(capsys, os.path.join(golden_corpus[0], 'utt_10.mat'), os.path.join(shared, 'golden', 'audio', 'short.wav'),
                '--plot', plots, *seq2seq_args(released, norm_dir))
    assert sorted(os.listdir(plots)) == ['short_curve.png', 'utt_10_curve.png', 'utt_10_timeline.png']
    assert all(os.path.getsize(plots / f) > 10_000 for f in os.listdir(plots))
