"""bench.py: its reference-style path computes the same function as ours (heads, data, scoring), and a --quick
run writes a complete, self-consistent report where --out says. Speed itself is measured by bench.py, never
asserted here."""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

import bench
from chunkser import model
from benchmarking import report, runs, startup
from benchmarking.reference import LoopedHeadNet, RefDataset, ref_chunk_split, ref_collate
from chunkser.corpus import MatFeatures, read_label_table
from chunkser.model import ChunkLevelSER, ModelSpec
from chunkser.normterm import NormTerms
from chunkser.store import open_store
from chunkser.utils import DynamicChunkSplitData, UserError, cc_coef

HEADS = ['NonAtten', 'GatedVec', 'RnnAttenVec', 'SelfAttenVec']


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A 24-utterance synthetic corpus (70..140 frames) with its NormTerm: (feat_dir, label_csv, norm_dir)."""
    from chunkser.commands.norm_para import compute_terms
    from chunkser.synthetic import write_corpus
    d = tmp_path_factory.mktemp('tiny')
    feat_dir, label_csv = write_corpus(str(d), size=24, seed=4, min_frames=70, max_frames=140,
                                       splits=(0.25, 0.25, 0.5))
    norm_dir = str(d / 'NormTerm')
    compute_terms(read_label_table(label_csv), feat_dir, label_csv).save(norm_dir)
    return feat_dir, label_csv, norm_dir


def pair(head, seed=0):
    torch.manual_seed(seed)
    ours = ChunkLevelSER(ModelSpec(head=head))
    looped = LoopedHeadNet(head)
    looped.load_state_dict(ours.state_dict())
    return ours, looped


@pytest.mark.numeric
@pytest.mark.parametrize('head', HEADS)
def test_looped_heads_equal_vectorised_eval(head):
    ours, looped = pair(head)
    ours.eval(), looped.eval()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        x = torch.randn(5 * 11, 62, 130)  # (B*C', m, F)
        with torch.no_grad():  # the SelfAttenVec layer's fast path included
            torch.testing.assert_close(looped(x), ours(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(looped(x), ours(x), rtol=1e-5, atol=1e-6)  # autograd on, as the reference scores


@pytest.mark.numeric
@pytest.mark.parametrize('head', ['NonAtten', 'GatedVec', 'RnnAttenVec'])
def test_looped_heads_equal_vectorised_training_step(head):
    """Heads without dropout of their own: the same seed gives the same training loss and gradients
    (SelfAttenVec's dropouts draw random numbers in another order in the loop, so only eval mode compares)."""
    ours, looped = pair(head)
    x, y = torch.randn(4 * 11, 62, 130), torch.randn(4)
    grads = []
    for net in (ours, looped):
        net.train()
        torch.manual_seed(7)  # the LSTM's dropout masks
        loss = cc_coef(net(x), y)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.numeric
def test_ref_data_path_equals_ours(tiny, tmp_path):
    """The reference-style Dataset + collate, cast to float32 at the model, equals the store's gather bit for bit."""
    feat_dir, label_csv, norm_dir = tiny
    df = read_label_table(label_csv)
    fnames, labels = [str(f) for f in df['FileName']], df['EmoAct'].to_numpy()
    norm = NormTerms.load(norm_dir)
    ds = RefDataset(feat_dir, fnames, labels, norm_dir, 'Act')
    mat = MatFeatures(feat_dir, fnames, norm)
    s = open_store(str(tmp_path / 'st'), feat_dir, fnames, norm, workers=1, progress=False)
    idx = np.array([3, 0, 17, 5, 5, 11])
    x, y = ref_collate([ds[i] for i in idx])
    assert x.dtype == torch.float64 and x.shape == (len(idx) * 11, 62, 130)
    assert np.array_equal(x.float().numpy(), s.gather(idx, 62, 11, 1))
    assert np.array_equal(ref_chunk_split([mat[i] for i in idx]), DynamicChunkSplitData([mat[i] for i in idx]))
    np.testing.assert_allclose(y.numpy(), norm.norm_label(labels[idx], 'Act'), rtol=0, atol=1e-12)


@pytest.mark.numeric
def test_ref_pair_path_equals_ours(tiny, tmp_path):
    """The reference-style ranker batch (both sentences' .mat per item, chunks in the collate) is the chunks our
    PairFeatures read from the store, bit for bit once cast, each label once per chunk pair; the ranker on each side
    gives our forward's logits."""
    from benchmarking.reference import RefPairDataset, ref_pair_collate, ref_pair_logits
    from chunkser.tasks import PairFeatures
    feat_dir, label_csv, norm_dir = tiny
    fnames = [str(f) for f in read_label_table(label_csv)['FileName']]
    pairs, labels = np.array([[3, 0], [17, 5], [5, 5]]), np.array([1, 0, 1])
    s = open_store(str(tmp_path / 'st'), feat_dir, fnames, NormTerms.load(norm_dir), workers=1, progress=False)
    a, b, y = ref_pair_collate(list(RefPairDataset(feat_dir, fnames, pairs, labels, norm_dir, 'Act')))
    assert a.dtype == torch.float64 and a.shape == (3 * 22, 62, 130) and y.tolist() == [1] * 22 + [0] * 22 + [1] * 22
    ours = PairFeatures(s, pairs).gather(np.arange(3), 62, 11, 2)
    assert np.array_equal(torch.cat([a, b]).float().numpy(), ours)
    torch.manual_seed(0)
    ranker = ChunkLevelSER(ModelSpec(task='ranker', head=None, scale=2)).eval()
    with torch.no_grad():
        torch.testing.assert_close(ref_pair_logits(ranker, a.float(), b.float()),
                                   ranker(torch.from_numpy(ours)).reshape(-1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.numeric
def test_ref_scripts_and_our_testing_agree(tiny, tmp_path, capsys):
    """bench.py ref-train writes a checkpoint the reference way; ref-test and our testing.py give the same CCC on it."""
    from chunkser.commands import testing
    feat_dir, label_csv, norm_dir = tiny
    models = str(tmp_path / 'Models')
    seed = ['-iter', '50', '-batch', '6', '-emo', 'Act', '-atten', 'GatedVec']
    corpus = ['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir]
    assert bench.main(['ref-train'] + seed + corpus + ['--model-dir', models, '--workers', '0']) == 0
    assert os.path.isfile(os.path.join(models, 'LSTM_iter50_batch6_ChunkSeq2One_GatedVec_Act.pth.tar'))
    assert os.path.isfile(os.path.join(models, 'LSTM_iter50_batch6_ChunkSeq2One_GatedVec_Act.png'))
    capsys.readouterr()
    assert bench.main(['ref-test'] + seed + corpus + ['--model-dir', models]) == 0
    ref_out = capsys.readouterr().out
    store = ['--store', str(tmp_path / 'st')]  # not ./feat_store: tests write only to temporary folders
    assert testing.main(seed + corpus + ['--model-dir', models, '--device', 'cpu'] + store) == 0
    our_out = capsys.readouterr().out

    def ccc(text):
        return float(next(l for l in text.splitlines() if l.startswith('Act-CCC: ')).split(': ')[1])
    assert abs(ccc(ref_out) - ccc(our_out)) < 1e-6
    assert all(line in our_out.splitlines() for line in ref_out.splitlines()[:5])  # the same result header


# ----------------------------------------------------------------------------------
# a --quick run, with one encoder more than model.py registers and one that does not build

class MeanFrames(nn.Linear):
    """A stand-in for an encoder added later: the mean frame through a linear layer."""

    def __init__(self, spec):
        super().__init__(spec.feat_dim, spec.hidden_dim)

    def forward(self, x):  # (N, m, F) -> (N, H)
        return super().forward(x.mean(1))

    @staticmethod
    def flops(spec):
        return 2 * spec.feat_dim * spec.hidden_dim


FAKE_PROCESSES = {'iters': 2, 'batch': 4, 'repeat': 1, 'floor_s': 1.0,
                  **{k: {'wall_s': w, 'peak_rss': 300 * 2**20, 'ccc': 0.5, 'model_ms': 2.0}
                     for k, w in (('ref_train', 9.0), ('ours_train', 6.0), ('ref_test', 4.0), ('ours_test', 3.2),
                                  ('ours_test_warm', 2.5))}}


IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:       100 |        100 |     torch._C
import time:       500 |        600 |   torch
import time:        50 |        650 | checkpoint
import time:       200 |        200 |     scipy.signal
import time:        10 |        210 |   make_demo_corpus
import time:         5 |        215 | cli
import time:       300 |        300 | pandas
"""
OURS = {'checkpoint', 'cli', 'make_demo_corpus'}
FAKE_STARTUP = {'utts': 12, 'runs': {'floor': [2.0, 2.2, 2.1], 'testing': [2.9, 2.5, 2.6]}, 'floor_s': 2.1,
                'testing_s': 2.6, 'ratio': 2.6 / 2.1, 'round_ratio': 1.19, 'checkpoint': '/x/' + startup.CHECKPOINT,
                'imports': startup.summarise_imports(startup.import_times(IMPORTTIME), OURS)}


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    """A --quick run into a tmp folder whose BENCHMARKS.md holds hand-written notes; the whole-process runs are
    and the start-up ones replaced by canned figures (they start training.py / testing.py processes: minutes on a
    busy machine)."""
    out = tmp_path_factory.mktemp('out')
    (out / 'BENCHMARKS.md').write_text('# Benchmarks\n\nold figures\n\n## Notes\n\n- a hand-written note\n')
    repo_report = os.path.join(runs.ROOT, 'BENCHMARKS.md')
    before = os.path.getmtime(repo_report)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(model.ENCODERS, 'MeanFrames', ('meanframes', MeanFrames, None))
        mp.setattr(runs, 'CHILD_ENV', {})  # --threads sets OMP_NUM_THREADS there: undone afterwards
        mp.setattr(runs, 'whole_processes', lambda c, work: FAKE_PROCESSES)
        mp.setattr(startup, 'measure', lambda c, work, env: FAKE_STARTUP)
        mp.setattr(runs, 'rss_scaling', lambda c, work: {16: {'peak_rss': 380 * 2**20, 'wall_s': 5.0},
                                                          32: {'peak_rss': 360 * 2**20, 'wall_s': 6.0}})
        n = torch.get_num_threads()
        argv = ['--quick', '--rss-scaling', '--threads', '1', '--work', str(out / 'w'), '--out', str(out)]
        assert bench.main(argv) == 0
        torch.set_num_threads(n)
    assert os.path.getmtime(repo_report) == before  # tests never write into the repository
    return out, (out / 'BENCHMARKS.md').read_text()


def tables(text):
    """{section title: rows (lists of cells, header first)} of the report's markdown tables."""
    out, section = {}, None
    for line in text.splitlines():
        if line.startswith('## '):
            section = line[3:]
        elif line.startswith('|') and not line.startswith('|---'):
            out.setdefault(section, []).append([c.strip().strip('*') for c in line.strip('|').split('|')])
    return out


def num(cell):
    return float(re.match(r'[0-9.,]+', cell).group().replace(',', ''))


def test_quick_report_sections(quick):
    out, text = quick
    titles = [l[3:] for l in text.splitlines() if l.startswith('## ')]
    assert titles == ['Training, validation, scoring per head', 'Scoring per encoder', 'Training step per encoder',
                      'Chunk retrieval', 'Whole processes (cold start included)', 'Start-up',
                      'Peak RssAnon of training against corpus size', 'What the reference-style path reproduces',
                      'Notes']
    assert text.endswith('## Notes\n\n- a hand-written note\n') and 'old figures' not in text
    assert 'torch ' + torch.__version__ in text and '--quick' in text
    assert (out / 'images' / 'benchmark.png').stat().st_size > 10_000


def test_quick_report_ratios_match_times(quick):
    t = tables(quick[1])
    assert t['Peak RssAnon of training against corpus size'][1:] == [['16', '380', '5.000'], ['32', '360', '6.000']]
    heads = t['Training, validation, scoring per head']
    assert heads[0][:3] == ['head', 'pipeline', 's/iter']
    for head in ('NonAtten', 'SelfAttenVec'):
        ref, ours, speedup = (r for r in heads if r[0] == head)
        assert (ref[1], ours[1], speedup[1]) == ('reference-style', 'ours', 'speed-up')
        for col in (2, 3, 4, 6, 7):  # s/iter, data, model step, validation, scoring
            assert num(speedup[col]) == pytest.approx(num(ref[col]) / num(ours[col]), rel=0.05, abs=0.01)
        assert num(ours[2]) == pytest.approx(num(ours[3]) + num(ours[4]), rel=0.002)  # data + step
        assert num(ours[3].split('(')[1]) == pytest.approx(4 / num(ours[3]), rel=0.002)  # utterances/s of a batch of 4
        # GFLOPS: model.estimate_flops of a batch (forward + backward) over the model step
        flops = ChunkLevelSER(ModelSpec(head=head)).estimate_flops(4, train=True)
        assert num(ours[5]) == pytest.approx(flops / float(ours[4]) / 1e9, rel=0.02, abs=0.06)
    diffs = re.search(r'agree to (.*) \(max abs', quick[1]).group(1)
    assert max(float(v) for v in re.findall(r'\w+ ([0-9.e+-]+)', diffs)) < 1e-5


def test_quick_report_every_encoder(quick):
    rows = {r[0]: r for r in tables(quick[1])['Scoring per encoder'][1:]}
    assert set(rows) == set(model.ENCODERS) | {'MeanFrames'}  # every registered encoder, the later ones included
    lstm = num(rows['LSTM'][2])
    assert rows['LSTM'][6] == '1.00x' and all(r[1] == 'NonAtten' for r in rows.values())
    assert num(rows['MeanFrames'][6]) == pytest.approx(num(rows['MeanFrames'][2]) / lstm, rel=0.02, abs=0.006)
    assert num(rows['MeanFrames'][5]) < num(rows['LSTM'][5])  # parameters


def test_quick_report_retrieval(quick):
    """One sentence ranked both ways: the same wins, the speed-up the ratio of the two times; the ranker's and the
    seq2seq model's steps (data + model), their speed-ups, the same logits; the projection's sums."""
    rows = tables(quick[1])['Chunk retrieval']
    head, row = rows[:2]
    assert head[0] == 'reference loop s/utt' and row[3] == 'True'
    assert num(row[2]) == pytest.approx(num(row[0]) / num(row[1]), rel=0.05)
    steps = [r for r in rows if r[0].startswith(('ranker, 4 sentence pairs (88 chunk pairs)', 'seq2seq, 4 utt'))]
    assert [r[1] for r in steps] == ['reference-style', 'ours', 'speed-up'] * 2
    for ref, ours, speedup in (steps[:3], steps[3:]):
        for col in (2, 3, 4, 6):  # s/step, data, model step, validation batch
            assert num(speedup[col]) == pytest.approx(num(ref[col]) / num(ours[col]), rel=0.05, abs=0.01)
        assert num(ours[2]) == pytest.approx(num(ours[3]) + num(ours[4]), rel=0.002)
    assert float(re.search(r"ranker pipelines' logits agree to (\S+) \(max", quick[1]).group(1)) < 1e-5
    proj = {r[0]: r for r in rows if len(r) == 5 and r[0] != 'stage'}
    assert list(proj) == ['ranker training', 'chunk ranks', 'seq2seq training', 'one attribute',
                          'three attributes (Act, Val, Dom)']
    for col in (2, 3):
        assert num(proj['one attribute'][col]) == pytest.approx(sum(num(proj[k][col]) for k in list(proj)[:3]), rel=0.01)
    assert num(proj['chunk ranks'][4]) == pytest.approx(num(row[2]), rel=0.01)  # the same ratio as the ranks' row


def test_quick_report_training_step_per_encoder(quick):
    """Every registered encoder under the same head (--quick: GatedVec, batch 4), and the LSTM's categorical step:
    the ratio to the LSTM's (regression) step, GFLOPS from model.estimate_flops."""
    from benchmarking.runs import CLASS_ROW
    rows = {r[1]: r for r in tables(quick[1])['Training step per encoder'][1:]}
    assert set(rows) == set(model.ENCODERS) | {'MeanFrames', CLASS_ROW} and {r[0] for r in rows.values()} == {'GatedVec'}
    assert rows['LSTM'][3] == '1.00x'
    for enc, r in rows.items():
        assert num(r[3]) == pytest.approx(num(r[2]) / num(rows['LSTM'][2]), rel=0.02, abs=0.006)
        if enc != 'MeanFrames':
            spec = ModelSpec(head='GatedVec', emo='Class', classes=list('ASHUFDCN')) if enc == CLASS_ROW else \
                ModelSpec(encoder=enc, head='GatedVec')
            flops = ChunkLevelSER(spec).estimate_flops(4, train=True)
            assert num(r[4]) == pytest.approx(flops / num(r[2]) / 1e9, rel=0.02, abs=0.06)


def test_quick_report_startup(quick):
    rows = tables(quick[1])['Start-up'][1:]
    assert [r[1] for r in rows] == ['2.100', '2.600', '1.24x', '1.19x']  # the medians, their ratio, the rounds'
    assert rows[0][2] == '2.000, 2.200, 2.100'
    assert 'checkpoint -> torch 0.0006000; (top level) -> pandas 0.0003000; cli > make_demo_corpus -> scipy.signal' \
        in quick[1]


def test_startup_rounds(tmp_path, monkeypatch):
    """A warm-up of each command, then rounds of one run of each, which goes first alternating; the medians, their
    ratio and the median of the rounds' ratios; import times from one more run under -X importtime."""
    import statistics
    for f in (startup.CHECKPOINT, 'feat_norm_means.mat'):
        (tmp_path / f).touch()
    calls, walls = [], iter([9.0, 9.0, 2.0, 2.9, 2.5, 2.2, 2.1, 2.6])

    def timed_run(cmd, cwd, env):
        calls.append(('importtime' if '-X' in cmd else 'testing') if 'testing.py' in ' '.join(cmd) else 'floor')
        return (1.0, IMPORTTIME) if '-X' in cmd else (next(walls), '')
    monkeypatch.setattr(startup, 'timed_run', timed_run)
    S = startup.measure({'model_dir': str(tmp_path), 'norm_dir': str(tmp_path), 'device': 'cpu', 'startup_runs': 3},
                        str(tmp_path), {})
    assert calls == ['floor', 'testing'] + ['floor', 'testing', 'testing', 'floor', 'floor', 'testing', 'importtime']
    assert S['runs'] == {'floor': [2.0, 2.2, 2.1], 'testing': [2.9, 2.5, 2.6]}
    assert S['ratio'] == pytest.approx(2.6 / 2.1)
    assert S['round_ratio'] == pytest.approx(statistics.median([2.9 / 2.0, 2.5 / 2.2, 2.6 / 2.1]))
    assert S['imports']['total_s'] == pytest.approx(1165e-6) and S['utts'] == 12


def test_import_times():
    rows = startup.import_times(IMPORTTIME)
    assert [r[0] for r in rows] == ['torch._C', 'torch', 'checkpoint', 'scipy.signal', 'make_demo_corpus', 'cli',
                                    'pandas']
    assert rows[0] == ('torch._C', 100e-6, 100e-6, ('checkpoint', 'torch')) and rows[-1][3] == ()
    s = startup.summarise_imports(rows, OURS)
    assert s['total_s'] == pytest.approx(1165e-6)
    assert s['packages'][:2] == [('torch', pytest.approx(600e-6)), ('pandas', pytest.approx(300e-6))]
    assert s['imports'] == [('checkpoint', 'torch', 600e-6), ('(top level)', 'pandas', 300e-6),
                            ('cli > make_demo_corpus', 'scipy.signal', 200e-6)]  # only the outermost of each chain
    assert s['self'][:3] == [('torch', 500e-6, 'checkpoint'), ('pandas', 300e-6, '-'),
                             ('scipy.signal', 200e-6, 'make_demo_corpus')]
    assert {'testing', 'model', 'benchmarking'} <= startup.first_party() and 'torch' not in startup.first_party()


def sections(text):
    """{title: text} of a markdown report's '## ' sections, and the text before them under ''."""
    parts = re.split(r'(?m)^(?=## )', text)
    return {'': parts[0], **{p.split('\n', 1)[0]: p for p in parts[1:]}}


def test_only_rewrites_its_sections(quick, tmp_path):
    """--only startup (its checkpoint missing: the section says so) replaces only that section of an existing
    report; the plot stays; an unknown section is refused."""
    out, text = quick
    (tmp_path / 'BENCHMARKS.md').write_text(text)
    assert bench.main(['--only', 'startup', '--model-dir', str(tmp_path / 'none'), '--out', str(tmp_path),
                       '--work', str(tmp_path / 'w')]) == 0
    before, after = sections(text), sections((tmp_path / 'BENCHMARKS.md').read_text())
    assert list(after) == list(before)
    assert [k for k in before if before[k] != after[k]] == ['## Start-up']
    assert 'Not measured: ' + str(tmp_path / 'none') in after['## Start-up']
    assert '_Measured alone: ' in after['## Start-up'] and '`python bench.py --only startup' in after['## Start-up']
    assert not (tmp_path / 'images').exists()
    with pytest.raises(UserError, match='no such section'):
        bench.main(['--only', 'startup,nope'])


def test_only_adds_missing_sections_in_order(tmp_path):
    """Sections an existing report lacks go where a whole run puts them; the rest, notes included, stays."""
    (tmp_path / 'BENCHMARKS.md').write_text('# Benchmarks\n\nold header\n\n## Chunk retrieval\n\nold\n\n'
                                            '## Notes added by hand\n\n- a hand-written note\n')
    argv = ['--quick', '--only', 'startup', '--only', 'train-encoders', '--encoder-heads', 'NonAtten', 'GatedVec',
            '--model-dir', str(tmp_path / 'none'), '--out', str(tmp_path), '--work', str(tmp_path / 'w')]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, 'ENCODERS', {k: model.ENCODERS[k] for k in ('LSTM', 'CNN')})  # seconds, not more
        assert bench.main(argv) == 0
    text = (tmp_path / 'BENCHMARKS.md').read_text()
    assert list(sections(text)) == ['', '## Training step per encoder', '## Chunk retrieval', '## Start-up',
                                    '## Notes added by hand']
    assert text.startswith('# Benchmarks\n\nold header\n\n') and text.endswith('- a hand-written note\n')
    assert [r[:2] for r in tables(text)['Training step per encoder'][1:]] == [
        ['NonAtten', 'LSTM'], ['NonAtten', 'CNN'], ['NonAtten', runs.CLASS_ROW], ['GatedVec', 'LSTM'], ['GatedVec', 'CNN'],
        ['GatedVec', runs.CLASS_ROW]]


def test_quick_report_whole_processes(quick):
    rows = tables(quick[1])['Whole processes (cold start included)'][1:]
    assert rows[0][0] == 'training.py, whole process'
    assert [num(v) for v in rows[0][1:5]] == [9.0, 6.0, 1.5, 1.6]  # without the 1 s floor: 8 / 5
    assert rows[2][0] == 'testing.py, feature store already built'
    assert [num(v) for v in rows[2][1:4]] == [4.0, 2.5, 1.6]
    assert rows[3][0] == 'testing.py, printed model ms/utt' and rows[3][3] == '1.00x'
    assert 'reference-style 0.5, ours 0.5' in quick[1]  # the CCCs of the same checkpoint


def test_matmul_peak_per_library():
    p = runs.matmul_peak(128, reps=2)
    libs = {k: v for k, v in p.items() if k != 'gflops'}
    assert 'blas' in libs and ('onednn' in libs) == torch.backends.mkldnn.is_available()
    assert p['gflops'] == max(libs.values()) > 0
    # repeated measurements keep each library's best
    assert runs.merge_peaks({'blas': 1.0, 'onednn': 5.0}, {'blas': 3.0}) == {'blas': 3.0, 'onednn': 5.0}


def test_helpers(tmp_path):
    import sys
    if os.path.exists('/proc/self/status'):
        hold = 'import time; x = bytearray(200 * 2**20); time.sleep(0.5)'
        r = runs.run_process([sys.executable, '-c', hold], str(tmp_path))
        assert r['peak_rss'] > 150 * 2**20 and r['wall_s'] > 0.4
    assert report.ratio(3.0, 2.0) == '1.50x' and report.ratio(1.0, 0) == 'n/a'
    assert [report.g(v) for v in (52268.3, 1.0884, 0.0121449, 0)] == ['52268', '1.088', '0.01214', '0']


# ----------------------------------------------------------------------------------
# the fine-tuning section (bench.py --only finetune), on a tiny WavLM: structure and sanity, never speed

FT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(scope='module')
def finetune_run(tmp_path_factory):
    """bench.py --only finetune on a tiny WavLM config (batch 2 x 1 s, 1 step after the warm-up) into a tmp folder:
    (the config, the result dict, the report's text)."""
    from conftest import need_transformers
    transformers = need_transformers()
    d = tmp_path_factory.mktemp('finetune')
    cfg = transformers.WavLMConfig(**FT_TINY)
    cfg.to_json_file(str(d / 'config.json'))
    got, run_all = {}, runs.run_all
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, 'CHILD_ENV', {})
        mp.setattr(runs, 'run_all', lambda a, work: got.setdefault('R', run_all(a, work)))
        n = torch.get_num_threads()
        assert bench.main(['--only', 'finetune', '--ft-config', str(d / 'config.json'), '--ft-batch', '2',
                           '--ft-seconds', '1', '--ft-steps', '1', '--threads', '1', '--out', str(d)]) == 0
        torch.set_num_threads(n)
    return cfg, got['R'], (d / 'BENCHMARKS.md').read_text()


def test_finetune_section_figures(finetune_run):
    cfg, R, _ = finetune_run
    F = R['finetune']
    assert (F['device'], F['batch'], F['seconds'], F['steps'], F['layers'], F['hidden']) == ('cpu', 2, 1.0, 1, 2, 32)
    assert list(F['variants']) == ['finetune', 'frozen']
    import transformers
    wavlm = transformers.WavLMModel(cfg)  # its parameters counted here, independently of the network
    total = sum(p.numel() for p in wavlm.parameters())
    frozen_convs = sum(p.numel() for p in wavlm.feature_extractor.parameters()) + wavlm.masked_spec_embed.numel()
    for name, v in F['variants'].items():
        assert (v['variant'], v['device']) == (name, 'cpu')
        assert len(v['steps_s']) == 2 and min(v['steps_s']) > 0 and v['step_s'] == v['steps_s'][1] and v['cpu_s'] > 0
        assert v['peak_bytes'] > 0 and v['peak_bytes'] >= v['built_bytes'] > 0
        assert v['step_peak_bytes'] == v['peak_bytes'] - v['built_bytes']
        assert v['backbone_params'] == total and v['head_params'] > 0
    # frozen: only the head trains; fine-tuned: the head and the transformer (not the convolutions, nor the mask)
    assert F['variants']['frozen']['trained_params'] == F['variants']['frozen']['head_params']
    assert F['variants']['finetune']['trained_params'] == F['variants']['finetune']['head_params'] + total - frozen_convs


def test_finetune_section_report(finetune_run):
    _, R, text = finetune_run
    assert list(sections(text)) == ['', '## ' + report.TITLES['finetune'][3:]]
    rows = tables(text)[report.TITLES['finetune'][3:]]
    assert rows[0][0] == 'device' and rows[0][-1] == 'projected h per run'
    cpu = {r[1]: r for r in rows[1:] if r[0] == 'CPU'}
    assert list(cpu) == ['fine-tuned', 'frozen']
    for key, r in zip(('finetune', 'frozen'), cpu.values()):
        v = R['finetune']['variants'][key]
        assert num(r[4]) == pytest.approx(v['step_s'], rel=1e-3) and num(r[7]) == round(v['peak_bytes'] / 2**20)
        # 20 epochs x ceil(84,030 / 2) steps, each scaled from 1 s to the mean turn (324 h 23 min / 207,136)
        hours = 20 * 42_015 * v['step_s'] * (324 * 3600 + 23 * 60) / 207_136 / 1.0 / 3600
        assert num(r[9]) == pytest.approx(hours, abs=0.6)
    cuda = [r for r in rows[1:] if r[0] == 'CUDA']
    assert [tuple(r[1:4]) for r in cuda] == [
        ('fine-tuned', 'fp32', 'off'), ('fine-tuned', 'fp32', 'on'), ('fine-tuned', 'bf16 autocast', 'off'),
        ('fine-tuned', 'bf16 autocast', 'on'), ('frozen', 'fp32', '-'), ('frozen', 'bf16 autocast', '-')]
    want = 'not run (no GPU)' if not torch.cuda.is_available() else 'not run (--device cpu)'
    assert all(r[4] == want and r[5:] == [''] * 5 for r in cuda)  # no figures where nothing ran
    assert '**not measured**' in text and '**measured**' in text and '84,030 Train utterances' in text


def test_finetune_options_refused(tmp_path):
    for argv in (['--ft-batch', '1'], ['--ft-steps', '0'], ['--ft-seconds', '0']):
        with pytest.raises(UserError, match='--ft-batch >= 2'):
            bench.main(['--only', 'finetune', *argv, '--out', str(tmp_path)])
    (tmp_path / 'bad.json').write_text('[1]')
    with pytest.raises(UserError, match='--ft-config .*bad.json: expected a transformers config.json'):
        bench.main(['--only', 'finetune', '--ft-config', str(tmp_path / 'bad.json'), '--out', str(tmp_path)])
