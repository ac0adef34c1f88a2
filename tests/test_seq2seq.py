"""The retrieval follow-up's seq2seq model trained here (training.py --task chunk, SPEC-retrieval.md section 5):
the curve objective against a direct formula, a short run's files and testing.py's lines, resume equal to an
uninterrupted run, and the refusals of its inputs (rank files, details file)."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from chunkser.commands import norm_para
from chunkser.commands import testing
from chunkser.commands import training
from chunkser.train import step as train_step
from chunkser.checkpoint import read_description
from chunkser.demo import simulate_raters
from chunkser.model import ModelSpec, build_model
from chunkser.normterm import NormTerms
from chunkser.objectives import Curves, objective_of, rater_stats
from chunkser.retrieval.ranks import read_ranks
from run_checks import assert_resume_equals_uninterrupted, one_and_two_processes
from chunkser.synthetic import write_corpus
from chunkser.utils import UserError, cc_coef

K = 8  # chunks per sentence in the small runs: --chunks 4 --scale 2
SMALL = ['--chunk-frames', '20', '--chunks', '4']  # --task chunk's default scale is 2
RUN = ['--task', 'chunk', '-ep', '3', '-batch', '8', '-emo', 'Act']  # Train 24: 3 iterations an epoch


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """48 sentences of 40-160 frames (Train 24, Validation 12, Test 12), simulated raters (labels_detailed.json) and a
    rank file of the Train sentences (random ranks 1..K with ties): a dict of paths."""
    d = str(tmp_path_factory.mktemp('seq2seq'))
    feat_dir, label_csv = write_corpus(d, size=48, seed=4, min_frames=40, max_frames=160, splits=(0.5, 0.25, 0.25))
    norm_dir = os.path.join(d, 'NormTerm')
    assert norm_para.main(['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir]) == 0
    detailed = os.path.join(d, 'labels_detailed.json')
    with open(detailed, 'w') as f:
        json.dump(simulate_raters(label_csv, 0), f)
    ranks_dir = os.path.join(d, 'ranks')
    os.makedirs(ranks_dir)
    df = pd.read_csv(label_csv)
    rng = np.random.default_rng(0)
    train = df[df['Split_Set'] == 'Train']['FileName'].tolist()
    write_rank_file(os.path.join(ranks_dir, 'training_Act.json'), {f: rng.integers(1, K + 1, K).tolist() for f in train})
    return dict(feat_dir=feat_dir, label_csv=label_csv, norm_dir=norm_dir, detailed=detailed, ranks_dir=ranks_dir,
                store=os.path.join(d, 'store'), train=train)


def write_rank_file(path, seqs):
    with open(path, 'w') as f:
        json.dump({k: {'ChunkRankSeq': v} for k, v in seqs.items()}, f)


def corpus_args(c):
    return ['--feat-dir', c['feat_dir'], '--label-csv', c['label_csv'], '--norm-dir', c['norm_dir'], '--store', c['store']]


def argv(c, out, *extra, ranks_dir=None, detailed=None):
    return RUN + SMALL + ['--seed', '3', '--ranks-dir', ranks_dir or c['ranks_dir'], '--detailed', detailed or c['detailed'],
                          '--out-dir', str(out), *corpus_args(c), *extra]


def test_curve_objective_equals_the_formula():
    """Curves: targets (N, 1 + C') = z-scored [raters' mean, generate_chunk_EmoSeq(mean, population std, ranks)];
    loss 0.5 (1 - CCC) of the chunks' mean against column 0 + 0.5 (1 - CCC) of every chunk against the curve."""
    norm = NormTerms(np.zeros(3), np.ones(3), {'Act': (4.0, 1.5)})
    values = [np.array([3.0, 5, 6]), np.array([2.0, 2, 2]), np.array([7.0, 1])]
    ranks = np.array([[1, 2, 2, 3], [4, 3, 2, 1], [2, 1, 1, 4]])
    obj = Curves(('Act',))
    y = obj.curve_targets(values, ranks, norm)
    mu, sd = rater_stats(values)
    np.testing.assert_allclose(mu, [14 / 3, 2, 4])
    np.testing.assert_allclose(sd, [np.std([3, 5, 6]), 0, 3])
    # the trends by hand: t steps -1 where the rank rises, +1 where it falls (t_1 = 0); a 3-point moving average
    # inside, the ends kept. Row 0, ranks 1 2 2 3: t = 0 -1 -1 -2 -> 0 -2/3 -4/3 -2; row 2, ranks 2 1 1 4:
    # t = 0 1 1 0 -> 0 2/3 2/3 0; row 1 has std 0: flat at its mean
    trend = {0: np.array([0, -2 / 3, -4 / 3, -2]), 2: np.array([0, 2 / 3, 2 / 3, 0])}
    curves = {i: mu[i] + (s - s.mean()) / s.std() * sd[i] for i, s in trend.items()}  # rescaled to (mu, std)
    curves[1] = np.full(4, 2.0)
    for i in range(3):
        want = (np.concatenate([[mu[i]], curves[i]]) - 4.0) / 1.5
        np.testing.assert_allclose(y[i], want, rtol=1e-6)
        np.testing.assert_allclose([curves[i].mean(), curves[i].std()], [mu[i], sd[i]], atol=1e-12)
    assert y.dtype == np.float32 and y.shape == (3, 5)
    np.testing.assert_allclose(y[1, 1:], (2 - 4.0) / 1.5, rtol=1e-6)  # std 0: flat at the mean
    out = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    t = torch.from_numpy(y)
    want = 0.5 * cc_coef(out.mean(1), t[:, 0]) + 0.5 * cc_coef(out.reshape(-1), t[:, 1:].reshape(-1))
    torch.testing.assert_close(obj.loss(out, t), want, rtol=0, atol=0)
    # validation: 1 - CCC of the utterance values against the consensus z-scores
    u, z = torch.tensor([0.1, -0.3, 0.5]), torch.tensor([0.0, -1.0, 1.0])
    assert obj.validation_sums(u, z) == [cc_coef(u, z).item(), 1.0]
    spec = ModelSpec(task='chunk', head=None, emo='Dom')
    assert isinstance(objective_of(spec), Curves) and objective_of(spec).attribute == 'Dom'
    assert objective_of(spec).header(spec, 'x', 128, 30) == ['EmoRankerSeq_Info', 'Epochs: 30', 'Batch_Size: 128',
                                                             'Model_Type: LSTM']
    with pytest.raises(UserError, match='one attribute'):
        Curves(('Act', 'Dom'))


def test_training_step_sees_the_chunk_values():
    """forward_backward hands the curve objective the network's (B, C') chunk values: the same loss as computing them
    by hand, with and without the CPU streams."""
    from chunkser.streams import use_cpu_streams
    torch.manual_seed(0)
    x, y = torch.randn(3 * K, 20, 130), torch.randn(3, 1 + K)
    obj = Curves(('Act',))
    losses = []
    for streams in (0, 2):
        torch.manual_seed(1)
        model = build_model(ModelSpec(task='chunk', head=None, chunk_frames=20, chunks=4, scale=2)).eval()
        use_cpu_streams(model, torch.device('cpu'), streams)
        losses.append(train_step.forward_backward(model, x, y, obj).item())
        with torch.no_grad():
            want = obj.loss(model(x, return_chunks=True)[2], y).item()
        assert abs(losses[-1] - want) < 1e-6
    assert abs(losses[0] - losses[1]) < 1e-5


def test_seq2seq_trains_and_tests(corpus, tmp_path, capsys):
    """training.py --task chunk writes the reference-named checkpoint, its JSON (inputs: rank file and details file
    with their sums), history and plot; testing.py --checkpoint prints the retrieval reference's lines with the CCC
    of the chunk means."""
    assert training.main(argv(corpus, tmp_path)) == 0
    base = str(tmp_path / 'LSTM_epoch3_batch8_EmoRankerSeq_Act')
    run = read_description(base + '.pth.tar')
    assert run['task'] == 'chunk' and run['head'] is None and run['scale'] == 2 and run['lr'] == 1e-3
    assert run['curves']['ranks'] == os.path.join(corpus['ranks_dir'], 'training_Act.json')
    assert run['curves']['detailed'] == corpus['detailed'] and len(run['curves']['detailed_sha256']) == 64
    hist = pd.read_csv(base + '.history.csv')
    assert hist['epoch'].tolist() == [1, 2, 3] and hist['saved'].iloc[0] == 1 and 'val_loss' in hist
    assert os.path.getsize(base + '.png') > 0
    capsys.readouterr()
    out = tmp_path / 'pred.csv'
    assert testing.main(['--checkpoint', base + '.pth.tar', '--out', str(out), *corpus_args(corpus)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:5] == ['EmoRankerSeq_Info', 'Epochs: 3', 'Batch_Size: 8', 'Model_Type: LSTM']
    assert lines[5].startswith('Act-CCC: ') and len(lines) == 6
    from chunkser.utils import evaluation_metrics
    p = pd.read_csv(out)
    assert float(lines[5].split(': ')[1]) == pytest.approx(evaluation_metrics(p['true'], p['pred']), abs=1e-12)


def test_seq2seq_resume_equals_uninterrupted(corpus, tmp_path, monkeypatch, capsys):
    """SIGTERM at iteration 4 (in epoch 2), then --resume: the uninterrupted run's history and best model to the
    bit; a resume with another rank file is refused (its sha256 is part of the settings)."""
    assert_resume_equals_uninterrupted(lambda out, *extra: argv(corpus, out, *extra), tmp_path, monkeypatch, capsys,
                                       4, '(resumed at iteration 4, batch 1 of its epoch)')
    other = tmp_path / 'other_ranks'
    other.mkdir()
    write_rank_file(other / 'training_Act.json', {f: [1] * K for f in corpus['train']})
    with pytest.raises(UserError, match='curves'):
        training.main(argv(corpus, tmp_path / 'cut', '--resume', ranks_dir=str(other)))


def refusal(corpus, tmp_path, **kw):
    with pytest.raises(UserError) as e:
        training.main(argv(corpus, tmp_path / 'out', **kw))
    msg = str(e.value)
    assert '\n' not in msg and not (tmp_path / 'out').exists()  # one line, nothing written
    return msg


def test_refusals(corpus, tmp_path):
    """Each bad input of --task chunk is one line naming the file and what was expected, before anything is written."""
    seqs = {f: list(range(1, K + 1)) for f in corpus['train']}

    def ranks(name, table, prov=None):
        d = tmp_path / name
        d.mkdir()
        write_rank_file(d / 'training_Act.json', table)
        if prov is not None:
            (d / 'training_Act.provenance.json').write_text(json.dumps(prov))
        return str(d)

    msg = refusal(corpus, tmp_path, ranks_dir=str(tmp_path / 'nowhere'))
    assert 'training_Act.json: not found' in msg and 'retrieval.py' in msg
    short = dict(seqs, **{corpus['train'][0]: [1] * 22})
    msg = refusal(corpus, tmp_path, ranks_dir=ranks('short', short))
    assert f'{corpus["train"][0]}: expected a ChunkRankSeq of {K} ranks' in msg and 'found 22 values' in msg
    msg = refusal(corpus, tmp_path, ranks_dir=ranks('missing', {f: s for f, s in list(seqs.items())[1:]}))
    assert 'no rank sequence for 1 file(s)' in msg and corpus['train'][0] in msg
    msg = refusal(corpus, tmp_path, ranks_dir=ranks('dom', seqs, {'emo': 'Dom'}))
    assert 'ranks of Dom' in msg and '-emo Act' in msg
    (tmp_path / 'garbage').mkdir()
    (tmp_path / 'garbage' / 'training_Act.json').write_text('{not json')
    assert 'not a readable rank file' in refusal(corpus, tmp_path, ranks_dir=str(tmp_path / 'garbage'))
    # the details file: a Train file without raters, a rater without the attribute
    raters = json.load(open(corpus['detailed']))
    less = tmp_path / 'less.json'
    less.write_text(json.dumps({f: r for f, r in raters.items() if f != corpus['train'][1]}))
    assert f'no raters for {corpus["train"][1]}' in refusal(corpus, tmp_path, ranks_dir=ranks('ok', seqs),
                                                            detailed=str(less))
    holes = json.loads(json.dumps(raters))
    first = next(iter(holes[corpus['train'][2]]))
    del holes[corpus['train'][2]][first]['EmoAct']
    (tmp_path / 'holes.json').write_text(json.dumps(holes))
    msg = refusal(corpus, tmp_path, ranks_dir=str(tmp_path / 'ok'), detailed=str(tmp_path / 'holes.json'))
    assert f'rater {first} has no EmoAct value' in msg
    with pytest.raises(UserError, match='needs --detailed'):
        training.main(RUN + SMALL + ['--out-dir', str(tmp_path / 'out'), *corpus_args(corpus)])
    with pytest.raises(UserError, match='one attribute'):
        training.main(['--task', 'chunk', '-emo', 'Act', 'Dom', '--detailed', corpus['detailed'], *corpus_args(corpus)])
    with pytest.raises(UserError, match='a seq2seq model has no aggregation head'):
        training.main(argv(corpus, tmp_path / 'out', '-atten', 'GatedVec'))


def test_read_ranks_checks_the_range(tmp_path):
    p = tmp_path / 'training_Act.json'
    write_rank_file(p, {'a.wav': [1, 2, 9]})
    with pytest.raises(UserError, match='3 ranks in 1..3'):
        read_ranks(str(p), ['a.wav'], 3, 'Act')
    write_rank_file(p, {'a.wav': [1, 3, 3], 'b.wav': [2, 1, 1]})
    np.testing.assert_array_equal(read_ranks(str(p), ['b.wav', 'a.wav'], 3, 'Act'), [[2, 1, 1], [1, 3, 3]])


def signed_overlap(T, start, end, emo, m, C, n):
    """(C',) each chunk's true emotion: the share of its span inside [start, end] seconds times the sign of the
    sentence's label minus 4 (calm sentences count too)."""
    from chunkser.utils import HOP, chunk_spans
    a, b = (chunk_spans(T, m, C, n) * HOP).T
    return np.clip(np.minimum(b, end) - np.maximum(a, start), 0, None) / (b - a) * np.sign(emo - 4)


def mean_spearman(values, truths):
    """The mean over utterances of the within-utterance Spearman correlation (0 where either side is constant)."""
    from scipy.stats import spearmanr
    return float(np.mean([spearmanr(v, t)[0] if np.ptp(v) > 0 and np.ptp(t) > 0 else 0.0
                          for v, t in zip(values, truths)]))


def test_pipeline_finds_the_emotional_chunks(tmp_path, capsys):
    """prefs -> ranker -> ranks -> seq2seq on a synthetic corpus whose label is carried over the whole sentence by
    some columns and most strongly by others in one ~1 s segment: the Train ranks and the Test chunk outputs both
    follow each chunk's signed overlap with the segment (mean within-utterance Spearman >= 0.4; measured 0.57 and
    0.47), clearly above a seq2seq model trained the same 40 epochs on flat curves (every rank 1; measured 0.02).
    The control tracks the segment too at first (0.57 after 10 epochs, 0.10 after 25), where its features say most
    about the label, and has flattened by 40: the comparison is made there."""
    from chunkser.commands import preference_labels
    from chunkser.commands import retrieval
    from chunkser.checkpoint import load_model, read_spec
    from chunkser.store import open_features
    from chunkser.utils import chunk_batch
    d = str(tmp_path)
    feat_dir, label_csv = write_corpus(d, size=100, seed=1, min_frames=100, max_frames=240, splits=(0.6, 0.2, 0.2),
                                       spread=1.0)
    norm_dir, det = os.path.join(d, 'NormTerm'), os.path.join(d, 'labels_detailed.json')
    C = ['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir]
    assert norm_para.main(C) == 0
    with open(det, 'w') as f:
        json.dump(simulate_raters(label_csv, 0), f)
    assert preference_labels.main(['-emo', 'Act', '--detailed', det, '--label-csv', label_csv,
                                   '--out-dir', os.path.join(d, 'prefs')]) == 0
    M = ['--chunk-frames', '20', '--seed', '0', '--out-dir', os.path.join(d, 'Models'), *C]
    assert training.main(['--task', 'ranker', '-ep', '4', '-batch', '32', '-emo', 'Act', '--pairs-per-epoch', '256',
                          '--prefs-dir', os.path.join(d, 'prefs'), *M]) == 0
    ranks_dir, flat_dir = os.path.join(d, 'ranks'), os.path.join(d, 'flat')
    assert retrieval.main(['-set', 'Train', '-emo', 'Act', '--checkpoint',
                           os.path.join(d, 'Models', 'LSTM_epoch4_batch32_Act_ranker.pth.tar'),
                           '--out', os.path.join(ranks_dir, 'training_Act.json'), *C]) == 0
    table = json.load(open(os.path.join(ranks_dir, 'training_Act.json')))
    os.makedirs(flat_dir)
    write_rank_file(os.path.join(flat_dir, 'training_Act.json'), {f: [1] * 22 for f in table})
    df, norm = pd.read_csv(label_csv), NormTerms.load(norm_dir)

    def truths(rows, feats):
        return [signed_overlap(feats[i].shape[0], r.EmoStart, r.EmoEnd, r.EmoAct, 20, 11, 2)
                for i, r in enumerate(rows.itertuples())]
    train = df[df['Split_Set'] == 'Train']
    train_truth = truths(train, open_features(None, feat_dir, train['FileName'].tolist(), norm))
    rank_rho = mean_spearman([-np.array(table[f]['ChunkRankSeq']) for f in train['FileName']], train_truth)
    test = df[df['Split_Set'] == 'Test']
    feats = open_features(None, feat_dir, test['FileName'].tolist(), norm)
    rho = {}
    for name, rdir in (('curves', ranks_dir), ('flat', flat_dir)):
        out = os.path.join(d, name)
        assert training.main(['--task', 'chunk', '-ep', '40', '-batch', '16', '-emo', 'Act', '--ranks-dir', rdir,
                              '--detailed', det, '--chunk-frames', '20', '--seed', '0', '--out-dir', out, *C]) == 0
        ckpt = os.path.join(out, 'LSTM_epoch40_batch16_EmoRankerSeq_Act.pth.tar')
        model = load_model(ckpt, read_spec(ckpt), 'cpu')
        with torch.no_grad():
            x = torch.from_numpy(chunk_batch(feats, np.arange(len(test)), 20, 11, 2))
            values = model(x, return_chunks=True)[2].numpy()  # (N, 22) chunk values
        rho[name] = mean_spearman(list(values), truths(test, feats))
    with capsys.disabled():
        print(f'\npipeline: Train ranks {rank_rho:.3f}, Test chunk outputs {rho["curves"]:.3f} '
              f'(flat-curve control {rho["flat"]:.3f})')
    assert rank_rho >= 0.4 and rho['curves'] >= 0.4
    assert rho['flat'] < 0.2 and rho['curves'] - rho['flat'] >= 0.25


@pytest.mark.numeric
def test_two_processes_train_a_seq2seq_model_as_one(corpus, tmp_path, monkeypatch):
    """torchrun --nproc_per_node=2, dropout off: the seq2seq run's training losses (the CCCs of the gathered global
    batch) and validation losses are those of one process."""
    base = 'LSTM_epoch3_batch8_EmoRankerSeq_Act'
    h1, h2 = one_and_two_processes(lambda out: argv(corpus, out), tmp_path, monkeypatch, base)
    assert list(h1.iter) == list(h2.iter) == [3, 6, 9]
    # seen: training losses equal, validation losses 6e-8 apart (one unit in the last place of a float32 near 1),
    # the same with ATen, oneDNN and MKL limited to AVX2; 1e-6 leaves ten times that for other CPUs' summation orders
    np.testing.assert_allclose(h2.train_loss, h1.train_loss, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h2.val_loss, h1.val_loss, atol=1e-6, rtol=0)
