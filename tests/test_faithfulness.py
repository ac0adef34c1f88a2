"""Our pipeline against the reference implementation's own outputs (../shared/golden/)."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn

from chunkser import checkpoint as CK
from chunkser import model as M
from chunkser import scoring
from chunkser import streams as S
from chunkser.commands import testing
from chunkser.corpus import ATTRIBUTES
from chunkser.model import ModelSpec
from chunkser.normterm import NormTerms
from chunkser.utils import DynamicChunkSplitData, cc_coef, chunk_starts, evaluation_metrics, pad_to_chunk

pytestmark = pytest.mark.numeric  # every test here compares numbers: rerun under ONEDNN_MAX_CPU_ISA=AVX2

HEADS_RELEASED = ('RnnAttenVec', 'SelfAttenVec')


def run_testing(corpus, model_dir, norm_dir, atten, emo, tmp_path, extra=()):
    out = str(tmp_path / f'{atten}_{emo}.csv')
    argv = ['-iter', '5000', '-batch', '128', '-emo', emo, '-atten', atten, '--feat-dir', corpus[0],
            '--label-csv', corpus[1], '--model-dir', model_dir, '--norm-dir', norm_dir, '--out', out, *extra]
    assert testing.main(argv) == 0
    return pd.read_csv(out)


@pytest.mark.parametrize('atten', HEADS_RELEASED)
@pytest.mark.parametrize('emo', ATTRIBUTES)
def test_released_checkpoints_through_testing_py(atten, emo, golden, golden_corpus, upstream, tmp_path, capsys):
    """testing.py (.mat reading, normalisation, chunking, batched scoring) gives the reference's predictions."""
    df = run_testing(golden_corpus, *upstream, atten, emo, tmp_path)
    np.testing.assert_allclose(df['pred'].to_numpy(), golden[f'{atten}_{emo}_pred'], atol=1e-5, rtol=0)
    out = capsys.readouterr().out.splitlines()
    assert out[1:7] == ['ChunkSeq2One', 'Iterations: 5000', 'Batch_Size: 128', 'Model_Type: LSTM',
                        f'Attention_Type: {atten}', f'{emo}-CCC: {evaluation_metrics(df["true"], df["pred"])!r}']
    assert out[7].startswith('Avg. Time Cost(ms/uttr): ')


@pytest.mark.parametrize('atten', HEADS_RELEASED)
@pytest.mark.parametrize('emo', ATTRIBUTES)
def test_released_checkpoints_cpu_streams(atten, emo, golden, golden_corpus, upstream, tmp_path):
    """testing.py with the LSTM as 2 or 3 CPU streams (121 chunks: all of them used) gives the one-call numbers to
    fp32 rounding, 1e-6 relative to max(1, |value|) as the README says (not bit for bit: on AVX2-only CPUs oneDNN
    rounds a piece differently from the whole batch)."""
    plain = run_testing(golden_corpus, *upstream, atten, emo, tmp_path, extra=('--cpu-streams', '1'))
    one = plain['pred'].to_numpy()
    for k in ('2', '3'):
        df = run_testing(golden_corpus, *upstream, atten, emo, tmp_path, extra=('--cpu-streams', k))
        err = np.abs(df['pred'].to_numpy() - one) / np.maximum(1, np.abs(one))
        assert err.max() <= 1e-6, (k, err.max())
    np.testing.assert_allclose(plain['pred'].to_numpy(), golden[f'{atten}_{emo}_pred'], atol=1e-5, rtol=0)


@pytest.mark.parametrize('atten', ('NonAtten', 'GatedVec'))
def test_random_checkpoints_through_testing_py(atten, golden, golden_corpus, shared, upstream, tmp_path):
    """The two heads without a released checkpoint, on the reference's random-weight files."""
    model_dir = tmp_path / 'models'
    model_dir.mkdir()
    shutil.copy(os.path.join(shared, 'golden', f'{atten}_random.pth.tar'),
                model_dir / CK.checkpoint_name(ModelSpec(head=atten, emo='Act'), 128, iterations=5000))
    df = run_testing(golden_corpus, str(model_dir), upstream[1], atten, 'Act', tmp_path)
    want = NormTerms.load(upstream[1]).denorm_label(golden[f'{atten}_random_raw'], 'Act')
    np.testing.assert_allclose(df['pred'].to_numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('atten', HEADS_RELEASED)
def test_batched_equals_one_by_one(atten, golden, upstream):
    norm = NormTerms.load(upstream[1])
    feats = [norm.normalize(golden[f'lld_{i}'][:, 1:]).astype(np.float32) for i in range(len(golden['lengths']))]
    cfg = ModelSpec(head=atten)
    net = CK.load_model(os.path.join(upstream[0], CK.checkpoint_name(ModelSpec(head=atten, emo='Act'), 128, iterations=5000)), cfg)
    batched, _ = scoring.predict_utterances(net, feats, batch_size=64)
    single = np.concatenate([scoring.predict_utterances(net, [f], batch_size=1)[0] for f in feats])
    np.testing.assert_allclose(batched, single, atol=2e-6, rtol=0)
    np.testing.assert_allclose(batched, golden[f'{atten}_Act_raw'], atol=1e-5, rtol=0)


def test_chunk_starts_match_reference(golden):
    keys = [k for k in golden if k.startswith('chunk_starts_')]
    assert len(keys) >= 16
    for k in keys:
        T, m, C, n = (int(p[1:]) for p in k[len('chunk_starts_'):].split('_'))
        np.testing.assert_array_equal(chunk_starts(T, m, C, n), golden[k], err_msg=k)
    # one chunk (the reference divides by zero): it starts at frame 0, as in the store's gather
    assert chunk_starts(500, 62, 1, 1).tolist() == [0] and chunk_starts(30, 62, 1, 1).tolist() == [0]


def test_dynamic_chunk_split_contract(golden):
    x = [golden[f'lld_{i}'][:, 1:] for i in (0, 5, 10)]  # T = 62, 100, 1500, float64
    for n in (1, 2):
        out = DynamicChunkSplitData(x, 62, 11, n)
        assert out.shape == (3 * n * 11, 62, 130) and out.dtype == np.float64
        for u, xu in enumerate(x):
            for k, s in enumerate(golden[f'chunk_starts_T{len(xu)}_m62_C11_n{n}']):
                np.testing.assert_array_equal(out[u * n * 11 + k], xu[s:s + 62])
    assert DynamicChunkSplitData([a.astype(np.float32) for a in x]).dtype == np.float32


def test_short_utterances_are_front_padded():
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3) + 1
    out = DynamicChunkSplitData([x, np.ones((100, 3), np.float32)], 62, 11, 1)
    assert out.shape == (22, 62, 3)
    assert (out[:11, :22] == 0).all() and (out[:11, 22:] == x).all()
    assert pad_to_chunk(np.ones((1, 3))).shape == (62, 3)


def test_loss_and_metric_match_reference(golden):
    y, p = golden['metric_y'], golden['metric_p']
    assert evaluation_metrics(y, p) == pytest.approx(float(golden['evaluation_ccc']), abs=1e-10)
    loss = cc_coef(torch.tensor(p, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)).item()
    assert loss == pytest.approx(float(golden['cc_coef_loss']), abs=1e-5)


def test_selfatten_quirk_chunk_order_invariant(golden, upstream):
    """SelfAttenVec's chunks never interact (the reference's quirk); RnnAttenVec's order matters."""
    norm = NormTerms.load(upstream[1])
    x = torch.from_numpy(DynamicChunkSplitData([norm.normalize(golden['lld_9'][:, 1:]).astype(np.float32)]))
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    change = {}
    for atten in HEADS_RELEASED:
        net = CK.load_model(os.path.join(upstream[0], CK.checkpoint_name(ModelSpec(head=atten, emo='Act'), 128, iterations=5000)), ModelSpec(head=atten))
        with torch.no_grad():
            change[atten] = abs(net(x).item() - net(x[perm]).item())
    assert change['SelfAttenVec'] < 3e-6
    assert change['RnnAttenVec'] > 1e-3


def _reference_style_heads(net, h):
    """The reference's per-utterance aggregation loop, written out, for h (B, C', H)."""
    outs = []
    for b in range(h.shape[0]):
        hb = h[b:b + 1]  # (1, C', H)
        if net.spec.head == 'SelfAttenVec':
            outs.append(torch.nn.TransformerEncoderLayer.forward(net.attn, hb).mean(1))  # (1, C', H) read sequence-first
        elif net.spec.head == 'RnnAttenVec':
            e, _ = net.attn.attn_rnn(hb)
            h_t = e[:, -1]
            w = torch.softmax(torch.stack([net.attn.attn_dnn_score(e[:, c]) @ h_t[0] for c in range(h.shape[1])], 1), 1)
            ctx = (w[..., None] * e).sum(1)
            outs.append(torch.tanh(net.attn.attn_dnn_out(torch.cat([ctx, h_t], 1))))
        elif net.spec.head == 'GatedVec':
            outs.append((hb * torch.sigmoid(net.attn[0](hb))).mean(1))
        else:
            outs.append(hb.mean(1))
    return torch.cat(outs)


@pytest.mark.parametrize('atten', list(M.REFERENCE_CLASSES))  # the reference's four heads
def test_vectorised_heads_equal_looped(atten):
    torch.manual_seed(0)
    net = M.build_model(ModelSpec(head=atten)).eval()
    h = torch.randn(5, 11, 130)
    with torch.no_grad():
        ours, w = net.attn(h)
        ref = _reference_style_heads(net, h)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-5)
    assert w.shape == (5, 11) and ((w > 0) & (w < 1)).all()
    if atten in ('NonAtten', 'SelfAttenVec'):
        assert torch.allclose(w, torch.full_like(w, 1 / 11))
    if atten == 'RnnAttenVec':
        assert torch.allclose(w.sum(1), torch.ones(5))


def test_selfatten_dropouts_act_in_training():
    """The training-mode layer keeps the reference's dropouts (two passes differ), eval mode is deterministic."""
    torch.manual_seed(0)
    net = M.build_model(ModelSpec(head='SelfAttenVec'))
    h = torch.randn(4, 11, 130)
    net.train()
    assert not torch.allclose(net.attn(h)[0], net.attn(h)[0])
    net.eval()
    assert torch.equal(net.attn(h)[0], net.attn(h)[0])


@pytest.mark.parametrize('k,piece_rows', [(2, 128), (3, 128), (2, 40), (1, 40)])
@pytest.mark.parametrize('atten', list(M.REFERENCE_CLASSES))  # the reference's four heads
def test_cpu_streams_same_numbers(atten, k, piece_rows):
    """The LSTM as k parallel streams (streams.CpuStreams) of pieces of at most piece_rows chunks (132 chunks:
    2, 3, 4 and 4 pieces) against one fused call. Inference and the training loss agree to fp32 rounding,
    1e-6 relative to max(1, |value|) (not bit for bit: on AVX2-only CPUs oneDNN rounds a piece of 40 rows
    differently from one call on 132), the dropout masks are the same draws (the RNG is left in the same
    state); the gradients of training.forward_backward differ only by rounding and summation order."""
    from chunkser.train import step as train_step
    torch.manual_seed(0)
    net = M.build_model(ModelSpec(head=atten))
    x, y = torch.randn(12 * 11, 62, 130), torch.randn(12)
    streams = S.CpuStreams(k)
    streams.piece_rows = piece_rows
    assert streams.parts(x) == {(2, 128): 2, (3, 128): 3, (2, 40): 4, (1, 40): 4}[k, piece_rows]
    runs = {}
    for s in (None, streams):  # inference first: training-mode passes move the batch norm's running statistics
        net.streams = s
        net.eval()
        with torch.no_grad():
            runs[s] = [net(x)]
    for s in (None, streams):
        net.streams = s
        net.train()
        torch.manual_seed(5)
        net.zero_grad(set_to_none=True)
        loss = train_step.forward_backward(net, x, y)
        runs[s] += [loss.item(), torch.rand(4), {n: p.grad.clone() for n, p in net.named_parameters()}]
    (p1, l1, r1, g1), (pk, lk, rk, gk) = runs[None], runs[streams]
    torch.testing.assert_close(pk, p1, rtol=1e-6, atol=1e-6)
    assert lk == pytest.approx(l1, rel=1e-6, abs=1e-6) and torch.equal(r1, rk)
    for n in g1:
        # a bias gradient sums a mean-centred CCC gradient over 132 x 62 chunk steps: heavy cancellation, so
        # the order of that sum shows at about 1e-4 of the result; weight gradients agree to fp32 rounding
        tol = (1e-3 if 'lstm.bias' in n else 1e-5) * g1[n].abs().max().item() + 1e-9
        assert (gk[n] - g1[n]).abs().max().item() <= tol, n


def test_cpu_streams_parts():
    """Up to k streams of at least min_rows (32) chunks, each stream's share in pieces of at most piece_rows
    (128); one call when that makes one piece, with --cpu-streams 1, or off the CPU."""
    s = S.CpuStreams(8)
    assert [s.parts(torch.empty(n, 1, 1)) for n in (40, 63, 64, 132, 1024, 1408)] == [1, 1, 2, 4, 8, 16]
    lstm = M.build_model(ModelSpec()).encoder
    assert not s.applies(torch.empty(63, 1, 1), lstm) and s.applies(torch.empty(64, 1, 1), lstm)
    one = S.CpuStreams(1)  # auto on one torch thread: pieces, one after another
    assert [one.parts(torch.empty(n, 1, 1)) for n in (128, 129, 704, 1408)] == [1, 2, 6, 11]
    net = M.build_model(ModelSpec(head='GatedVec'))
    assert S.use_cpu_streams(net, 'cpu', 1).streams is None and S.use_cpu_streams(net, 'cuda', 4).streams is None
    assert S.use_cpu_streams(net, 'cpu', 0).streams.k == torch.get_num_threads()  # auto: one per torch thread
    with pytest.raises(M.UserError, match='--cpu-streams must be 0'):
        S.use_cpu_streams(net, 'cpu', -1)
    import copy  # a model with streams still deep-copies (its pool is made anew) and computes the same
    net = S.use_cpu_streams(net, 'cpu', 2).eval()
    twin = copy.deepcopy(net)
    assert twin.streams is not net.streams and twin.streams.k == 2
    x = torch.randn(8 * 11, 62, 130)
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))


@pytest.mark.parametrize('encoder', ['CNN', 'KerasLSTM'])
def test_cpu_streams_other_encoders_in_inference_only(encoder):
    """The Keras original's encoders run in the streams when scoring (rows independent: batch norm on running
    statistics, no dropout), to fp32 rounding of one call; in training they run as one call (batch statistics
    and dropout are the whole batch's)."""
    torch.manual_seed(0)
    net = M.build_model(ModelSpec(encoder=encoder, head='GatedVec'))
    streams = S.CpuStreams(2)
    x = torch.randn(12 * 11, 62, 130)
    with torch.no_grad():
        net.eval()
        one = net(x)
        net.streams = streams
        assert streams.applies(x, net.encoder) and streams.parts(x) == 2
        torch.testing.assert_close(net(x), one, rtol=1e-6, atol=1e-6)
        net.train()
        assert not streams.applies(x, net.encoder)
    net.eval()
    assert not streams.applies(x, net.encoder)  # autograd on: a training step's forward


@pytest.mark.parametrize('alias,atten', [('LSTMnet_MeanAtten', 'NonAtten'), ('LSTMnet_GateAtten', 'GatedVec'),
                                         ('LSTMnet_RnnAtten', 'RnnAttenVec'), ('LSTMnet_SelfAtten', 'SelfAttenVec')])
def test_reference_class_names(alias, atten):
    net = getattr(M, alias)(130, 130, 1, 2)
    assert set(net.state_dict()) == set(M.build_model(ModelSpec(head=atten)).state_dict())
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(3 * 11, 62, 130)).shape == (3,)


def test_released_state_dict_keys(upstream):
    for atten in HEADS_RELEASED:
        sd = CK.load_state_dict(os.path.join(upstream[0], CK.checkpoint_name(ModelSpec(head=atten, emo='Dom'), 128, iterations=5000)))
        assert list(sd) == list(M.build_model(ModelSpec(head=atten)).state_dict())
    common = [k for k in sd if not k.startswith('attn.')]
    assert len(common) == 17

