"""bench.py: its reference-style path computes the same function as ours (heads, data, scoring), and a tiny
run writes the report where --out says. Speed itself is measured by bench.py, never asserted here."""
import os
import re
import sys

import numpy as np
import pytest
import torch

import bench
from bench import LoopedHeadNet, RefDataset, ref_chunk_split, ref_collate
from model import ChunkLevelSER
from store import open_store
from utils import DynamicChunkSplitData, MatFeatures, NormTerms, read_label_table

HEADS = ['NonAtten', 'GatedVec', 'RnnAttenVec', 'SelfAttenVec']


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP teams waiting on a descheduled thread when the machine is busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A 24-utterance synthetic corpus (70..140 frames) with its NormTerm: (feat_dir, label_csv, norm_dir)."""
    from norm_para import compute_terms
    from synthetic import write_corpus
    d = tmp_path_factory.mktemp('tiny')
    feat_dir, label_csv = write_corpus(str(d), size=24, seed=4, min_frames=70, max_frames=140,
                                       splits=(0.25, 0.25, 0.5))
    norm_dir = str(d / 'NormTerm')
    compute_terms(read_label_table(label_csv), feat_dir, label_csv).save(norm_dir)
    return feat_dir, label_csv, norm_dir


def pair(head, seed=0):
    torch.manual_seed(seed)
    ours = ChunkLevelSER(head, 130, 130, 2, chunks=11)
    looped = LoopedHeadNet(head, 130, 130, 2, chunks=11)
    looped.load_state_dict(ours.state_dict())
    return ours, looped


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
        loss = bench.cc_coef(net(x), y)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


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


def test_ref_scripts_and_our_testing_agree(tiny, tmp_path, capsys):
    """bench.py ref-train writes a checkpoint the reference way; ref-test and our testing.py give the same CCC on it."""
    import testing
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
    assert testing.main(seed + corpus + ['--model-dir', models, '--device', 'cpu']) == 0
    our_out = capsys.readouterr().out

    def ccc(text):
        return float(next(l for l in text.splitlines() if l.startswith('Act-CCC: ')).split(': ')[1])
    assert abs(ccc(ref_out) - ccc(our_out)) < 1e-6
    assert all(line in our_out.splitlines() for line in ref_out.splitlines()[:5])  # the same result header


def test_tiny_run_writes_report(tiny, tmp_path):
    out = tmp_path / 'out'
    repo_report = os.path.join(bench.ROOT, 'BENCHMARKS.md')
    before = os.path.getmtime(repo_report) if os.path.exists(repo_report) else None
    assert bench.main(['--utts', '16', '--min-frames', '64', '--max-frames', '120', '--batch', '4', '--iters', '1',
                       '--val-utts', '8', '--test-utts', '6', '--data-batches', '2', '--heads', 'GatedVec,SelfAttenVec',
                       '--inline', '--no-accept', '--no-compile', '--cpu-reps', '1', '--threads', '1', '--peak-size', '256',
                       '--work', str(tmp_path / 'w'),
                       '--out', str(out)]) == 0
    text = (out / 'BENCHMARKS.md').read_text()
    for needle in ('| GatedVec | reference-style |', '| SelfAttenVec | ours |', '**speed-up**', 'utterances/s',
                   'Matmul peak', 'torch.set_num_threads(1)', 'LSTM forward + backward alone', 'torch ' + torch.__version__):
        assert needle in text
    assert (out / 'images' / 'benchmark.png').stat().st_size > 10_000
    after = os.path.getmtime(repo_report) if os.path.exists(repo_report) else None
    assert after == before  # tests never write into the repository
    # the same function: predictions of both pipelines agree
    diffs = [float(v) for v in re.findall(r'(?:GatedVec|SelfAttenVec) ([0-9.e+-]+)', text.split('agree to')[1].split('\n')[0])]
    assert len(diffs) == 2 and max(diffs) < 1e-5


def test_flops_and_rss_helpers(tmp_path):
    # LSTM: 2 layers x 4 gates x (input + recurrent) products, 62 steps, 11 chunks per utterance
    assert bench.step_flops('NonAtten', 1, train=False) == 11 * 62 * 2 * 4 * 130 * (260 + 260) + 2 * 130 * 130 + 2 * 130
    assert bench.step_flops('SelfAttenVec', 2) == 3 * bench.step_flops('SelfAttenVec', 2, train=False)
    if os.path.exists('/proc/self/status'):
        assert bench.rss_anon() > 0
        r = bench.run_process([sys.executable, '-c', 'import time; x = bytearray(200 * 2**20); time.sleep(0.5)'],
                              str(tmp_path))
        assert r['peak_rss'] > 150 * 2**20 and r['wall_s'] > 0.4
    p = bench.project({'it_s': 1.0, 'val_s': 2.0, 'val_utts': 100, 'score_ms': 6.0}, {'utt_per_s': 1000.0})
    assert p['train_h'] == pytest.approx((5000 + 100 * 6000 * 0.02 + 40) / 3600)
    assert p['test_min'] == pytest.approx((60 + 10) / 60)


def test_matmul_peak_per_library():
    p = bench.matmul_peak(128, reps=2)
    libs = {k: v for k, v in p.items() if k != 'gflops'}
    assert 'blas' in libs and ('onednn' in libs) == torch.backends.mkldnn.is_available()
    assert p['gflops'] == max(libs.values()) > 0
    # repeated measurements keep each library's best
    assert bench.merge_peaks({'blas': 1.0, 'onednn': 5.0}, {'blas': 3.0}) == {'blas': 3.0, 'onednn': 5.0}
