"""The Keras original's networks (SPEC-keras.md): its 12 released models, converted by keras_convert.py, give its
own outputs (../shared/golden/keras_outputs.npz) through testing.py and predict.py; the hard-sigmoid LSTM, the
CNN's time-axis batch norm and the multi-head head against loops written here; conversion refuses damaged files;
pretrained.py installs the sets given; the subset protocol against a computation written here."""
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from chunkser import checkpoint as CK
from chunkser import keras_convert
from chunkser import model as M
from chunkser.commands import predict
from chunkser.commands import pretrained
from chunkser import scoring
from chunkser.commands import testing
from chunkser.corpus import ATTRIBUTES
from chunkser.model import ModelSpec
from chunkser.normterm import NormTerms
from chunkser.utils import DynamicChunkSplitData, UserError, evaluation_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the Keras file's networks -> our converted checkpoints' names
NETWORKS = {('CNN', 'NonAtten'): ('CNN', 'NonAtten', 256), ('CNN', 'GatedVec'): ('CNN', 'GatedVec', 256),
            ('LSTM', 'RnnAttenVec'): ('KerasLSTM', 'RnnAttenVec', 128),
            ('LSTM', 'SelfAttenVec'): ('KerasLSTM', 'MultiHeadAttenVec', 128)}
TOL = 1e-5  # relative to max(1, |value|): float32 inference against tf-keras (measured: at most 3.8e-6, the same
#            with ATen, oneDNN and MKL on AVX-512 and limited to AVX2)
LOOP_ATOL = 2e-6  # float32 networks against the float64 loops below, outputs of order 1 (measured: at most 2.1e-7)


pytestmark = pytest.mark.usefixtures('one_thread')  # the 62-step recurrence: many small products


@pytest.fixture(scope='module')
def keras_src(shared):
    return os.path.join(shared, 'upstream-keras-v1.6')


@pytest.fixture(scope='module')
def kgolden(golden_npz):
    return golden_npz('keras_outputs')


@pytest.fixture(scope='module')
def installed(keras_src, tmp_path_factory):
    """pretrained.py --keras-from: the 12 .h5 files installed and converted; (DEST, printed output)."""
    dest = tmp_path_factory.mktemp('dest')
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert pretrained.main(['--dest', str(dest), '--keras-from', keras_src]) == 0
    return dest, buf.getvalue()


def converted(dest, enc, head, emo):
    ours, ours_head, batch = NETWORKS[enc, head]
    return str(dest / 'trained_model_keras_v1.6' / f'{ours}_epoch100_batch{batch}_ChunkSeq2One_{ours_head}_{emo}.pth.tar')


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


# ----------------------------------------------------------------------------------
# installing and converting

def test_pretrained_keras_from_installs_and_converts(installed, keras_src, capsys):
    dest, out = installed
    h5 = sorted(os.path.basename(k) for k in pretrained.KERAS_SHA256)
    assert len(h5) == 12 and sum(line.startswith('installed') for line in out.splitlines()) == 12
    assert sum(line.startswith('converted') for line in out.splitlines()) == 12
    ckpts = sorted(converted(dest, e, h, emo) for e, h in NETWORKS for emo in ATTRIBUTES)
    want = sorted(h5 + [os.path.basename(p) for p in ckpts] + [os.path.basename(CK.description_path(p)) for p in ckpts])
    assert files_under(dest) == ['trained_model_keras_v1.6/' + f for f in want]  # only the keras set
    for f in h5:
        assert filecmp.cmp(dest / 'trained_model_keras_v1.6' / f, os.path.join(keras_src, 'trained_model_v1.6', f),
                           shallow=False)
    assert pretrained.main(['--dest', str(dest), '--keras-from', keras_src]) == 0  # rerun: nothing to do
    again = capsys.readouterr().out
    assert '0 installed, 12 already present' in again and again.count('already converted') == 12


def test_pretrained_from_alone_installs_only_that_set(upstream, tmp_path):
    dest = tmp_path / 'dest'
    assert pretrained.main(['--dest', str(dest), '--from', os.path.dirname(upstream[0])]) == 0
    assert files_under(dest) == sorted(pretrained.SHA256)
    assert [s.name for s in pretrained.SETS] == ['pytorch', 'keras', 'retrieval']
    assert pretrained.KERAS_URL_BASE.endswith('c37badc0d73b0d10b6e458843628b449e00ea615')


def test_keras_sums_match_shared_list(keras_src):
    rows = [line.split() for line in open(os.path.join(keras_src, 'SHA256SUMS'))]
    assert {p: h for h, p in rows} == pretrained.KERAS_SHA256


def start_convert(*argv):
    return subprocess.Popen([sys.executable, '-m', 'chunkser.keras_convert', *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_convert_refuses_tampered_and_truncated(keras_src, tmp_path):
    """One stderr line naming the file, exit 2, no traceback, nothing written."""
    name = 'CNN_model[epoch100-batch256]_NonAtten_Act_weights.h5'
    data = bytearray(open(os.path.join(keras_src, 'trained_model_v1.6', name), 'rb').read())
    (tmp_path / 'tampered').mkdir()
    tampered = tmp_path / 'tampered' / name  # a flipped byte in an array passes any shape check: the sum catches it
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    truncated = tmp_path / 'cut.h5'  # not a released name: h5py itself must fail, in one line
    truncated.write_bytes(bytes(data[:len(data) // 2]))
    cases = ((tampered, (), 'sha256'),
             (truncated, ('--encoder', 'CNN', '--head', 'NonAtten', '--emo', 'Act'), 'not a readable'))
    runs = [start_convert(path, *flags, '--out-dir', tmp_path / 'out') for path, flags, _ in cases]  # side by side
    for (path, _, says), r in zip(cases, runs):
        _, err = r.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, err
        assert str(path) in lines[0] and says in lines[0] and 'Traceback' not in err
    assert not (tmp_path / 'out').exists() or os.listdir(tmp_path / 'out') == []


def test_convert_checks_every_shape_and_the_network(keras_src, tmp_path):
    import h5py
    src = os.path.join(keras_src, 'trained_model_v1.6', 'CNN_model[epoch100-batch256]_GatedVec_Act_weights.h5')
    odd = tmp_path / 'odd.h5'
    shutil.copyfile(src, odd)
    with h5py.File(odd, 'r+') as f:  # the output net's first kernel, one row short
        g = f['model_2']
        del g['dense_3/kernel:0']
        g.create_dataset('dense_3/kernel:0', data=np.zeros((129, 130), np.float32))
    with pytest.raises(UserError, match=r'dense_3/kernel:0 has shape \(129, 130\), expected \(130, 130\)'):
        keras_convert.main([str(odd), '--encoder', 'CNN', '--head', 'GatedVec', '--emo', 'Act'])
    with pytest.raises(UserError, match='38 weight arrays, but a Keras CNN NonAtten network has 36'):
        keras_convert.main([src, '--head', 'NonAtten', '--out-dir', str(tmp_path)])
    with pytest.raises(UserError, match='pass --encoder, --head and --emo'):
        keras_convert.main([str(odd)])
    assert sorted(os.listdir(tmp_path)) == ['odd.h5']
    assert keras_convert.main([src, '--out-dir', str(tmp_path)]) == 0
    spec = CK.read_spec(str(tmp_path / 'CNN_epoch100_batch256_ChunkSeq2One_GatedVec_Act.pth.tar'))
    assert (spec.encoder, spec.head, spec.emo) == ('CNN', 'GatedVec', 'Act')


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf], ids=['NaN', 'Inf', '-Inf'])
def test_convert_refuses_non_finite_weights(keras_src, tmp_path, bad):
    """One non-finite value in an array of the right shape is refused, naming the array; nothing is written."""
    import h5py
    src = os.path.join(keras_src, 'trained_model_v1.6', 'CNN_model[epoch100-batch256]_GatedVec_Act_weights.h5')
    odd = tmp_path / 'odd.h5'  # not a released name, so no sha256 stands in the way
    shutil.copyfile(src, odd)
    with h5py.File(odd, 'r+') as f:
        f['model_2']['dense_3/kernel:0'][5, 7] = bad
    out = tmp_path / 'out'
    with pytest.raises(UserError) as e:
        keras_convert.main([str(odd), '--encoder', 'CNN', '--head', 'GatedVec', '--emo', 'Act', '--out-dir', str(out)])
    assert str(e.value) == f'{odd}: array dense_3/kernel:0 holds NaN or Inf values (a damaged file)'
    assert not out.exists() or os.listdir(out) == []


# ----------------------------------------------------------------------------------
# the 12 released models through the scripts

def close(got, want):
    want = np.asarray(want, dtype=np.float64)
    err = np.abs(np.asarray(got, dtype=np.float64) - want) / np.maximum(1, np.abs(want))
    assert err.max() <= TOL, err.max()


@pytest.mark.numeric
@pytest.mark.parametrize('enc,head', list(NETWORKS))
def test_converted_models_through_testing_py(enc, head, installed, golden_corpus, upstream, kgolden, tmp_path, capsys):
    norm = NormTerms.load(upstream[1])
    for emo in ATTRIBUTES:
        out = tmp_path / f'{emo}.csv'
        assert testing.main(['--checkpoint', converted(installed[0], enc, head, emo), '--feat-dir', golden_corpus[0],
                             '--label-csv', golden_corpus[1], '--norm-dir', upstream[1], '--no-store', '--out', str(out)]) == 0
        pred = pd.read_csv(out)['pred'].to_numpy()
        close(pred, kgolden[f'{enc}_{head}_{emo}_pred'])
        close(norm.norm_label(pred, emo), kgolden[f'{enc}_{head}_{emo}_raw'])
        lines = capsys.readouterr().out.splitlines()
        assert lines[2:7] == ['Iterations: 100 epochs', f'Batch_Size: {NETWORKS[enc, head][2]}',
                              f'Model_Type: {NETWORKS[enc, head][0]}', f'Attention_Type: {NETWORKS[enc, head][1]}',
                              f'{emo}-CCC: {evaluation_metrics(pd.read_csv(out)["true"], pred)!r}']


@pytest.mark.numeric
@pytest.mark.parametrize('enc,head', list(NETWORKS))
def test_converted_models_through_predict_py(enc, head, installed, golden_corpus, upstream, kgolden, tmp_path, capsys):
    """The three attributes' checkpoints at once, on the .mat folder; each fills its own column."""
    argv = [golden_corpus[0], '--norm-dir', upstream[1], '--window', '0', '--out', str(tmp_path / 'p.csv')]
    for emo in ATTRIBUTES:
        argv += ['--checkpoint', converted(installed[0], enc, head, emo)]
    assert predict.main(argv) == 0
    df = pd.read_csv(tmp_path / 'p.csv')
    assert [os.path.basename(f) for f in df['file']] == [f'utt_{i:02d}.mat' for i in range(11)]
    for emo in ATTRIBUTES:
        close(df[emo].to_numpy(), kgolden[f'{enc}_{head}_{emo}_pred'])


def test_checkpoint_flags(installed, golden_corpus, upstream, tmp_path, capsys):
    """--checkpoint: one attribute's column only; a mismatching -emo, a second file for one attribute refused."""
    act = converted(installed[0], 'CNN', 'GatedVec', 'Act')
    assert predict.main([golden_corpus[0], '--checkpoint', act, '--norm-dir', upstream[1], '--out', str(tmp_path / 'p.csv')]) == 0
    df = pd.read_csv(tmp_path / 'p.csv')
    assert df['Act'].notna().all() and df['Val'].isna().all() and df['Dom'].isna().all()
    with pytest.raises(UserError, match='a second Act checkpoint'):
        predict.main([golden_corpus[0], '--checkpoint', act, '--checkpoint', act])
    base = ['--feat-dir', golden_corpus[0], '--label-csv', golden_corpus[1], '--norm-dir', upstream[1], '--no-store']
    with pytest.raises(UserError, match='predicts Act, not -emo Val'):
        testing.main(['--checkpoint', act, '-emo', 'Val'] + base)
    with pytest.raises(UserError, match='checkpoint not found'):
        testing.main(['--checkpoint', str(tmp_path / 'none.pth.tar')] + base)


@pytest.mark.numeric
def test_multihead_plot_weights(installed, golden_corpus, upstream, golden, tmp_path):
    """predict.py --plot draws the multi-head head's chunk weights: the attention each chunk receives."""
    ckpt = converted(installed[0], 'LSTM', 'SelfAttenVec', 'Act')
    net = CK.load_model(ckpt, CK.read_spec(ckpt))
    norm = NormTerms.load(upstream[1])
    x = norm.normalize(golden['lld_9'][:, 1:]).astype(np.float32)
    _, w, _, _ = scoring.predict_utterances(net, [x], return_chunks=True)
    assert w.shape == (1, 11) and abs(w.sum() - 1) < 1e-5 and w.std() > 1e-4  # sums to 1, not uniform
    mat = os.path.join(golden_corpus[0], 'utt_09.mat')
    assert predict.main([mat, '--checkpoint', ckpt, '--norm-dir', upstream[1], '--plot', str(tmp_path / 'plots')]) == 0
    assert os.path.getsize(tmp_path / 'plots' / 'utt_09_chunks.png') > 10_000


# ----------------------------------------------------------------------------------
# the networks against loops written here

def keras_lstm_loop(W, seq, masks=(None, None), gate_inputs=None):
    """The Keras LSTM of SPEC-keras.md on one sequence (m, F), one step and one gate at a time, in float64:
    its last h. masks[l]: (4 gates, inputs) dropout on layer l's input, one per gate, or None. gate_inputs, a list:
    receives every step's pre-activations of the hard-sigmoid gates i, f, o."""
    hs = lambda z: np.clip(0.2 * z + 0.5, 0, 1)  # noqa: E731
    seq = seq.astype(np.float64)
    for l, mask in enumerate(masks):
        K, R, b = W[f'kernel_l{l}'], W[f'recurrent_kernel_l{l}'], W[f'bias_l{l}']
        H = R.shape[0]
        h, c, outs = np.zeros(H), np.zeros(H), []
        for x_t in seq:
            xs = [x_t * mask[g] if mask is not None else x_t for g in range(4)]  # the input each gate sees
            z = np.concatenate([xs[g] @ K[:, g * H:(g + 1) * H] for g in range(4)]) + h @ R + b
            i, f, g, o = hs(z[:H]), hs(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), hs(z[3 * H:])
            if gate_inputs is not None:
                gate_inputs.append(np.concatenate([z[:2 * H], z[3 * H:]]))
            c = f * c + i * g
            h = o * np.tanh(c)
            outs.append(h)
        seq = np.array(outs)
    return h


@pytest.mark.numeric
def test_hard_sigmoid_lstm_against_step_loop():
    torch.manual_seed(0)
    spec = ModelSpec(encoder='KerasLSTM', feat_dim=5, hidden_dim=4, chunk_frames=7)
    enc = M.KerasLSTM(spec).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 1.5)  # large pre-activations: the clip of hard_sigmoid is reached
    x = torch.randn(3, 7, 5)
    with torch.no_grad():
        ours = enc(x).numpy()

    W = {n: p.detach().numpy().astype(np.float64) for n, p in enc.named_parameters()}
    z = []
    for n in range(3):
        np.testing.assert_allclose(ours[n], keras_lstm_loop(W, x[n].numpy(), gate_inputs=z), rtol=0, atol=LOOP_ATOL)
    z = np.concatenate(z)
    assert (z > 2.5).mean() > 0.05 and (z < -2.5).mean() > 0.05 and (np.abs(z) < 2.5).mean() > 0.05  # both clips


@pytest.mark.numeric
def test_keras_lstm_training_dropout_is_one_mask_per_gate_and_sequence():
    """Keras implementation 1: in training each gate's input product uses its own dropout mask on the layer's
    input, drawn once per sequence and the same at every step (inverted: kept values x 2)."""
    torch.manual_seed(0)
    spec = ModelSpec(encoder='KerasLSTM', feat_dim=5, hidden_dim=4, chunk_frames=7)
    enc = M.KerasLSTM(spec).train()
    x = torch.randn(3, 7, 5)
    torch.manual_seed(1)
    with torch.no_grad():
        ours = enc(x).numpy()
    torch.manual_seed(1)  # the same draws, in the order the layers take them: (4 gates, 1, N, inputs) each
    masks = [torch.empty(4, 1, 3, n).bernoulli_(0.5).numpy()[:, 0] * 2 for n in (5, 4)]  # [layer] (4, N, in)
    W = {n: p.detach().numpy().astype(np.float64) for n, p in enc.named_parameters()}
    for n in range(3):
        np.testing.assert_allclose(ours[n], keras_lstm_loop(W, x[n].numpy(), [m[:, n] for m in masks]),
                                   rtol=0, atol=LOOP_ATOL)
    assert 0 < sum(m.sum() for m in masks) < sum(m.size for m in masks) * 2  # some dropped, some kept


@pytest.mark.numeric
def test_cnn_batch_norm_over_time():
    torch.manual_seed(0)
    spec = ModelSpec(encoder='CNN', head='NonAtten')
    enc = M.build_model(spec).cnn.eval()
    assert [tuple(bn.weight.shape) for bn in enc.bn] == [(60,), (58,), (56,), (54,), (26,)]
    assert [tuple(bn.running_var.shape) for bn in enc.bn] == [(60,), (58,), (56,), (54,), (26,)]
    assert all(bn.eps == 1e-3 for bn in enc.bn) and enc.dense.weight.shape == (130, 832)
    with torch.no_grad():
        for bn in enc.bn:  # statistics and affine terms that differ per time position
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 62, 130)
    with torch.no_grad():
        ours = enc(x).numpy()
    # Keras's computation in its own layout: cross-correlation with K (3, in, out), batch norm indexed by time
    a = x.numpy().astype(np.float64).transpose(0, 2, 1)  # (N, 130, 62) channels first
    for conv, bn, s in zip(enc.conv, enc.bn, M.CNN1D.STRIDES):
        K = conv.weight.detach().numpy().transpose(2, 1, 0)  # (3, in, out)
        L = (a.shape[2] - 3) // s + 1
        out = np.stack([sum(a[:, :, t * s + k] @ K[k] for k in range(3)) for t in range(L)], axis=2)  # (N, out, L)
        out += conv.bias.detach().numpy()[None, :, None]
        g, b, mu, var = (v.detach().numpy()[None, None, :] for v in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
        a = np.maximum(g * (out - mu) / np.sqrt(var + 1e-3) + b, 0)
    flat = a.reshape(2, -1)  # channel-major: index = channel * 26 + t
    want = np.maximum(flat @ enc.dense.weight.detach().numpy().T + enc.dense.bias.detach().numpy(), 0)
    np.testing.assert_allclose(ours, want, rtol=0, atol=LOOP_ATOL)  # outputs up to 0.7 (measured: 1.4e-7)


def multihead_loop(head, h):
    """The Keras SelfAttenVec of SPEC-keras.md, one utterance and one head at a time, in float64: (u (B, H), attention
    received (B, C'), the residual's population std over the features (B, C'))."""
    K = head.kernel.detach().numpy().astype(np.float64)
    D, bias = head.dense.weight.detach().numpy().T.astype(np.float64), head.dense.bias.detach().numpy()
    gamma, beta = head.gamma.detach().numpy(), head.beta.detach().numpy()
    us, ws, stds = [], [], []
    for b in range(h.shape[0]):
        E = h[b].numpy().astype(np.float64)
        zs, recv = [], np.zeros(h.shape[1])
        for j in range(3):
            q, k, v = E @ K[j, 0], E @ K[j, 1], E @ K[j, 2]
            s = q @ k.T / np.sqrt(50)
            A = np.exp(s - s.max(1, keepdims=True))
            A /= A.sum(1, keepdims=True)
            zs.append(A @ v)
            recv += A.mean(0) / 3
        y = np.maximum(np.concatenate(zs, 1) @ D + bias, 0) + E
        std = y.std(1, keepdims=True)  # population std; Keras adds its 1e-6 to the std, not to the variance
        us.append((gamma * (y - y.mean(1, keepdims=True)) / (std + 1e-6) + beta).mean(0))
        ws.append(recv)
        stds.append(std[:, 0])
    return np.array(us), np.array(ws), np.array(stds)


@pytest.mark.numeric
@pytest.mark.parametrize('scale', [1, 1e-3], ids=['residual-std-1', 'residual-std-1e-3'])
def test_multihead_head_against_loop(scale):
    """Chunk vectors of std 1, and of std 1e-3 (a residual of std about 1e-3, where the layer norm's epsilon weighs:
    1/(std + 1e-6) and 1/sqrt(var + 1e-6) differ by 30 % there, by 5e-7 at std 1)."""
    torch.manual_seed(1)
    head = M.MultiHeadAttenVec(130).eval()
    with torch.no_grad():
        head.gamma.normal_(1, 0.3)
        head.beta.normal_(0, 0.3)
        head.kernel[:, :2] /= scale  # queries and keys of order 1: attention scores as at std 1
        head.dense.bias *= scale  # the dense output as small as the chunk vectors
    h = scale * torch.randn(2, 11, 130)
    with torch.no_grad():
        u, w = head(h)
    want_u, want_w, std = multihead_loop(head, h)
    assert (std > 0.5 * scale).all() and (std < 2 * scale).all(), std
    np.testing.assert_allclose(u.numpy(), want_u, rtol=0, atol=LOOP_ATOL)  # |u| < 2 (measured: 1.3e-7)
    np.testing.assert_allclose(w.numpy(), want_w, rtol=0, atol=2e-7)  # weights about 0.09 (measured: 1.2e-8)


@pytest.mark.numeric
def test_multihead_chunk_order_invariant_rnn_not(installed, upstream, golden):
    norm = NormTerms.load(upstream[1])
    x = torch.from_numpy(DynamicChunkSplitData([norm.normalize(golden['lld_9'][:, 1:]).astype(np.float32)]))
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    change = {}
    for head in ('SelfAttenVec', 'RnnAttenVec'):
        ckpt = converted(installed[0], 'LSTM', head, 'Act')
        net = CK.load_model(ckpt, CK.read_spec(ckpt))
        with torch.no_grad():
            (y, w, _), (yp, wp, _) = net(x, return_chunks=True), net(x[perm], return_chunks=True)
        change[head] = abs(y.item() - yp.item())
        if head == 'SelfAttenVec':  # the weights move with their chunks
            torch.testing.assert_close(wp[0], w[0][perm], rtol=1e-4, atol=1e-6)
    assert change['SelfAttenVec'] < 1e-5 and change['RnnAttenVec'] > 1e-3


def test_flops_counted():
    cnn = M.build_model(ModelSpec(encoder='CNN', head='GatedVec'))
    conv = 2 * 3 * (130 * 128 * 60 + 128 * 128 * 58 + 128 * 64 * 56 + 64 * 64 * 54 + 64 * 32 * 26)
    assert M.CNN1D.flops(cnn.spec) == conv + 2 * 832 * 130
    lstm = M.build_model(ModelSpec(encoder='KerasLSTM', head='MultiHeadAttenVec'))
    assert M.KerasLSTM.flops(lstm.spec) == M.LastStepLSTM.flops(lstm.spec)
    assert M.MultiHeadAttenVec.flops(130, 11) == 11 * 2 * 130 * 450 + 4 * 11 * 11 * 150 + 11 * 2 * 150 * 130
    assert lstm.estimate_flops(2) == 2 * (11 * M.KerasLSTM.flops(lstm.spec) + M.MultiHeadAttenVec.flops(130, 11)
                                          + 2 * 130 * 130 + 2 * 130)


# ----------------------------------------------------------------------------------
# the Keras evaluation protocol

def test_keras_subsets_are_the_legacy_shuffle():
    state = np.random.get_state()
    for n in (30, 100, 257, 1000):
        np.random.seed(99)
        idx = np.arange(n)
        np.random.shuffle(idx)
        np.random.seed(12345)
        before = np.random.get_state()[1].copy()
        subsets = scoring.keras_subsets(n)
        assert (np.random.get_state()[1] == before).all()  # the global generator is left alone
        step = int(round(n / 15))
        assert [len(s) for s in subsets[:-1]] == [step] * (len(subsets) - 1)
        np.testing.assert_array_equal(np.concatenate(subsets), idx)
    np.random.set_state(state)
    with pytest.raises(UserError, match='subset of 1 utterance'):
        scoring.keras_subsets(31)  # subsets of 2, the last of 1
    with pytest.raises(UserError, match='cannot be cut'):
        scoring.keras_subsets(7)


def test_subsets_through_testing_py(installed, upstream, tmp_path, capsys):
    from chunkser.synthetic import write_corpus
    feat_dir, label_csv = write_corpus(str(tmp_path / 'c'), size=40, seed=3, min_frames=50, max_frames=300,
                                       splits=(0, 0, 1))
    argv = ['--checkpoint', converted(installed[0], 'CNN', 'NonAtten', 'Dom'), '--feat-dir', feat_dir,
            '--label-csv', label_csv, '--norm-dir', upstream[1], '--no-store', '--out', str(tmp_path / 'o.csv')]
    assert testing.main(argv + ['--subsets', '5']) == 0
    lines = capsys.readouterr().out.splitlines()
    df = pd.read_csv(tmp_path / 'o.csv')
    y, p = df['true'].to_numpy(), df['pred'].to_numpy()
    idx = np.random.RandomState(99).permutation(40)  # the same permutation as seed(99) + shuffle
    cccs = []
    for s in (idx[0:8], idx[8:16], idx[16:24], idx[24:32], idx[32:40]):  # round(40 / 5) = 8
        ys, ps = y[s], p[s]
        cccs.append(2 * np.mean((ys - ys.mean()) * (ps - ps.mean())) / (ys.var() + ps.var() + (ys.mean() - ps.mean()) ** 2))
    got = {k: float(v) for k, v in (line.split(': ') for line in lines[8:12])}
    assert list(got) == ['Avg. CCC testing performance', 'Std. CCC testing performance',
                         'Avg. Prediction Time(ms/uttr)', 'Std. Prediction Time(ms/uttr)']
    assert got['Avg. CCC testing performance'] == pytest.approx(np.mean(cccs), abs=1e-9)
    assert got['Std. CCC testing performance'] == pytest.approx(np.std(cccs), abs=1e-9)
    assert got['Avg. Prediction Time(ms/uttr)'] > 0 and got['Std. Prediction Time(ms/uttr)'] >= 0
    assert re.match(r'Dom-CCC: ', lines[6]) and float(lines[6].split(': ')[1]) == pytest.approx(
        evaluation_metrics(y, p), abs=1e-12)
    with pytest.raises(UserError, match='--subsets 30: 40 utterances give a subset of 1 utterance'):
        testing.main(argv + ['--subsets', '30'])


@pytest.mark.numeric
def test_keras_lstm_gradients_against_a_step_loop():
    """The encoder's backward (the recurrence over unbound steps) gives the gradients of a plain per-step loop."""
    torch.manual_seed(3)
    spec = ModelSpec(encoder='KerasLSTM', feat_dim=5, hidden_dim=4, chunk_frames=6)
    enc = M.KerasLSTM(spec).double().eval()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    enc(x).pow(2).sum().backward()
    ours = {k: p.grad.clone() for k, p in enc.named_parameters()}
    W = {k: p.detach().clone().requires_grad_() for k, p in enc.named_parameters()}
    seq = x
    for l in range(spec.num_layers):
        K, R, b = W[f'kernel_l{l}'], W[f'recurrent_kernel_l{l}'], W[f'bias_l{l}']
        H = R.shape[0]
        h = c = torch.zeros(3, H, dtype=torch.float64)
        outs = []
        for t in range(seq.shape[1]):
            z = seq[:, t] @ K + h @ R + b
            i, f, o = (M.hard_sigmoid(z[:, g * H:(g + 1) * H]) for g in (0, 1, 3))
            c = f * c + i * torch.tanh(z[:, 2 * H:3 * H])
            h = o * torch.tanh(c)
            outs.append(h)
        seq = torch.stack(outs, 1)
    h.pow(2).sum().backward()
    for k in ours:
        torch.testing.assert_close(ours[k], W[k].grad, rtol=1e-12, atol=1e-12, msg=k)


# ----------------------------------------------------------------------------------
# training.py --recipe keras: the Keras original's CCC loss, Adam epsilon and batch-norm momentum

def population_ccc_loss(p, y):
    """1 - CCC with population (co)variances (Keras's K.var), in float64: the Keras recipe's loss by formula."""
    p, y = p.double(), y.double()
    cov = ((p - p.mean()) * (y - y.mean())).mean()
    return 1 - 2 * cov / (p.var(correction=0) + y.var(correction=0) + (p.mean() - y.mean()) ** 2)


def batch_norms(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize('encoder,head', [('LSTM', 'GatedVec'), ('KerasLSTM', 'RnnAttenVec'), ('CNN', 'NonAtten')])
def test_keras_recipe_reaches_loss_optimiser_and_batch_norms(small, tmp_path, monkeypatch, encoder, head):
    """--recipe keras, one iteration: every CCC loss computed (training and validation) is the population-variance
    formula; the optimiser's epsilon is 1e-7 (its saved state); every batch norm of the encoder's model moved its
    running statistics with momentum 0.01 (against the same run with --bn-momentum 0.1: one update from mean 0 and
    variance 1 gives m * batch mean and (1 - m) + m * batch variance, the batch statistics being the same); and the
    checkpoint loads back with momentum 0.01 on every batch norm (its JSON's bn_momentum)."""
    from chunkser import objectives
    from chunkser.commands import training
    losses = []

    def spy(output, target, population=False):
        value = real(output, target, population)
        losses.append((output.detach().clone(), target.detach().clone(), value.detach().clone()))
        return value
    real = objectives.cc_coef
    monkeypatch.setattr(objectives, 'cc_coef', spy)
    base = f'{encoder}_iter1_batch8_ChunkSeq2One_{head}_Act'
    sds = {}
    for m, extra in ((0.01, []), (0.1, ['--bn-momentum', '0.1'])):
        out = tmp_path / f'm{m}'
        assert training.main(['-iter', '1', '-batch', '8', '-model', encoder, '-atten', head, '--recipe', 'keras',
                              '--seed', '3', '--cpu-streams', '1', '--store', str(tmp_path / 'store'), '--out-dir',
                              str(out), '--feat-dir', small[0], '--label-csv', small[1], '--norm-dir', small[2],
                              *extra]) == 0
        sds[m] = torch.load(out / f'{base}.pth.tar', weights_only=True)
        cfg = json.load(open(out / f'{base}.json'))
        assert (cfg['recipe'], cfg['ccc_variance'], cfg['adam_eps'], cfg['bn_momentum']) == ('keras', 'population', 1e-7, m)
        state = torch.load(out / f'{base}.resume.pt', weights_only=True)
        assert [g['eps'] for g in state['optimizer']['param_groups']] == [1e-7]
        model = CK.load_model(str(out / f'{base}.pth.tar'), CK.read_spec(str(out / f'{base}.pth.tar')))
        bns = batch_norms(model)
        assert bns and all(b.momentum == m for b in bns.values()), {k: b.momentum for k, b in bns.items()}
    # the loss: one training batch and the validation batches, each the population formula (not the unbiased one)
    # (the float32 loss, near 1 after one step, rounds to about 6e-8; the unbiased formula is 2.7e-4 away here)
    assert len(losses) >= 4
    for p, y, value in losses:
        assert float(value) == pytest.approx(float(population_ccc_loss(p, y)), rel=0, abs=2e-6)
    p, y, value = losses[0]
    assert abs(float(value) - float(real(p.double(), y.double()))) > 1e-4  # the unbiased loss is far off
    # every batch norm of this encoder's model updated once, with momentum 0.01
    assert len(bns) == (len(model.encoder.bn) if encoder == 'CNN' else 1)  # the CNN's own; the LSTMs' one after them
    for name in bns:
        k, r = sds[0.01], sds[0.1]
        assert int(k[f'{name}.num_batches_tracked']) == int(r[f'{name}.num_batches_tracked']) == 1
        batch_mean = r[f'{name}.running_mean'].double() / 0.1
        torch.testing.assert_close(k[f'{name}.running_mean'].double() / 0.01, batch_mean, rtol=1e-4, atol=1e-5)
        batch_var = (r[f'{name}.running_var'].double() - 0.9) / 0.1
        torch.testing.assert_close((k[f'{name}.running_var'].double() - 0.99) / 0.01, batch_var, rtol=1e-3, atol=1e-4)
        assert batch_mean.abs().max() > 1e-3 and (batch_var - 1).abs().max() > 1e-3  # statistics that tell 0.01 from 0.1


def test_bn_momentum_json_round_trip(tmp_path):
    """A checkpoint's JSON keeps bn_momentum: saved at 0.01, it loads back at 0.01 on every batch norm of every
    encoder (not PyTorch's default 0.1)."""
    for encoder, head in (('LSTM', 'GatedVec'), ('KerasLSTM', 'RnnAttenVec'), ('CNN', 'NonAtten')):
        spec = ModelSpec(encoder=encoder, head=head, bn_momentum=0.01).check()
        again = ModelSpec.from_json(json.loads(json.dumps(spec.to_json())))
        assert again.bn_momentum == 0.01 and again == spec
        path = str(tmp_path / f'{encoder}.pth.tar')
        CK.save_checkpoint(path, M.build_model(spec), spec)
        bns = batch_norms(CK.load_model(path, CK.read_spec(path)))
        assert bns and all(b.momentum == 0.01 for b in bns.values()), encoder
