"""Exported ONNX models (chunkser export, onnx_model.py): every released model (6 PyTorch, 12 Keras converted, 3
seq2seq) and every encoder x head x task gives its checkpoint's outputs through onnxruntime at batch sizes 1, 7 and
64; predict with .onnx models alone imports no torch; batched = one-at-a-time scoring; the .onnx errors (one line,
exit 2, nothing written); --int8 stays close."""
import contextlib
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch

from chunkser import onnx_export
from chunkser.checkpoint import load_model, read_spec, save_checkpoint
from chunkser.commands import export as export_cmd
from chunkser.commands import predict
from chunkser.commands import pretrained
from chunkser.commands.predict import predict_files
from chunkser.model import ENCODERS, FRAME_HEADS, HEADS, ModelSpec, build_model
from chunkser.normterm import NormTerms
from chunkser.onnx_model import load_onnx, predict_onnx
from chunkser.scoring import predict_utterances
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5  # relative to max(1, |value|): onnxruntime's float32 kernels against torch's
BATCHES = {1: 3, 7: 14, 64: 64}  # batch size -> utterances scored at it (the first ones of the 64)


def close(got, want, tol=TOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= tol, f'max relative error {err.max():.2e}'


def outputs(net, utts, batch):
    """predict_utterances at `batch`: (values, weights, chunk values or None)."""
    y, w, v, _ = predict_utterances(net, utts, batch_size=batch, return_chunks=True)
    return y, w, v


def same_as_checkpoint(ckpt, onnx_path, utts):
    spec = read_spec(ckpt)
    torch_net, onnx_net = load_model(ckpt, spec), load_onnx(onnx_path, read_spec(onnx_path), threads=1)
    if spec.task == 'ranker':
        x = torch.randn(5 * spec.chunks_per_utterance, spec.chunk_frames, spec.feat_dim)
        with torch.no_grad():
            close(onnx_net.chunk_scores(x), torch_net.chunk_scores(x))
        return
    want = outputs(torch_net, utts, 64)
    for b, n in BATCHES.items():
        got = outputs(onnx_net, utts[:n], b)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if w is not None:
                close(g, w[:n])
    if spec.emo == 'Class':
        x = np.random.default_rng(0).standard_normal((7, spec.chunks_per_utterance, spec.chunk_frames, spec.feat_dim))
        p = onnx_net.run(x.astype(np.float32))['probabilities']
        assert p.shape == (7, len(spec.classes)) and np.allclose(p.sum(1), 1, atol=1e-6)


@pytest.fixture(scope='module')
def golden_utts(golden, upstream):
    """The 11 golden utterances z-normalised, cycled to 64 (float32, (T, F) each)."""
    norm = NormTerms.load(upstream[1])
    utts = [norm.normalize(golden[f'lld_{i}'][:, 1:]).astype(np.float32) for i in range(len(golden['lengths']))]
    return [utts[i % len(utts)] for i in range(64)]


@pytest.fixture(scope='module')
def released(shared, upstream, tmp_path_factory):
    """The 21 released models as pretrained.py installs them (12 Keras converted, 3 seq2seq with their JSON), and
    their ONNX exports in one folder: [(checkpoint, onnx)]."""
    dest = tmp_path_factory.mktemp('released')
    with contextlib.redirect_stdout(io.StringIO()):
        assert pretrained.main(['--dest', str(dest), '--keras-from', os.path.join(shared, 'upstream-keras-v1.6'),
                                '--retrieval-from', os.path.join(shared, 'upstream-retrieval-v1.6')]) == 0
    ckpts = sorted(os.path.join(upstream[0], f) for f in os.listdir(upstream[0]) if f.endswith('.pth.tar'))
    for sub in ('trained_model_keras_v1.6', 'trained_seq2seq_model_v1.6'):
        ckpts += sorted(str(p) for p in (dest / sub).glob('*.pth.tar'))
    out = str(tmp_path_factory.mktemp('onnx'))
    return list(zip(ckpts, onnx_export.export(ckpts, out)))


@pytest.mark.numeric
@pytest.mark.usefixtures('one_thread')
def test_released_models_equal_their_checkpoints(released, golden_utts):
    assert len(released) == 21
    with torch.inference_mode(False):
        for ckpt, onnx_path in released:
            same_as_checkpoint(ckpt, onnx_path, golden_utts)
    desc = json.load(open(released[0][1][:-len('.onnx')] + '.json'))
    assert desc['onnx']['opset'] == onnx_export.OPSET and desc['encoder'] == 'LSTM' and len(desc['onnx']['sha256']) == 64


def small_specs():
    """Every encoder x chunk-level head (utterance task), the per-chunk tasks of each encoder, and the other
    objectives (the utterance-level heads read whole utterances: export refuses them, test below)."""
    base = dict(feat_dim=6, hidden_dim=8, chunk_frames=20, chunks=3, scale=1)
    specs = [ModelSpec(encoder=e, head=h, **base) for e in ENCODERS for h in HEADS if h not in FRAME_HEADS]
    specs += [ModelSpec(encoder=e, head=None, task=t, **base) for e in ENCODERS for t in ('chunk', 'ranker')]
    specs += [ModelSpec(head='RnnAttenVec', emo='Class', classes=['A', 'H', 'N'], **base),
              ModelSpec(encoder='CNN', head='GatedVec', emo='ActValDom', **base)]
    return specs


@pytest.mark.numeric
@pytest.mark.usefixtures('one_thread')
def test_every_encoder_head_and_task(tmp_path):
    """Random weights (batch norm statistics too) of every network: the export gives the checkpoint's outputs."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    utts = [rng.standard_normal((int(rng.integers(30, 90)), 6)).astype(np.float32) for _ in range(64)]
    ckpts = []
    for i, spec in enumerate(small_specs()):
        net = build_model(spec).eval()
        for mod in net.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        ckpts.append(str(tmp_path / f'm{i}.pth.tar'))
        save_checkpoint(ckpts[-1], net, spec)
    exported = onnx_export.export(ckpts, str(tmp_path / 'onnx'))
    for ckpt, path in zip(ckpts, exported):
        same_as_checkpoint(ckpt, path, utts)


def test_utterance_level_head_is_refused(tmp_path):
    """An utterance-level head (its input the whole utterance's frames) is refused in one line; nothing is written."""
    spec = ModelSpec(head='AttnStatsPool', feat_dim=6, hidden_dim=8, chunk_frames=20, chunks=3, scale=1)
    ckpt = str(tmp_path / 'm.pth.tar')
    save_checkpoint(ckpt, build_model(spec), spec)
    with pytest.raises(UserError, match='head AttnStatsPool reads whole utterances') as e:
        onnx_export.export([ckpt], str(tmp_path / 'onnx'))
    assert '\n' not in str(e.value)
    assert not os.path.exists(tmp_path / 'onnx') or os.listdir(tmp_path / 'onnx') == []


# ----------------------------------------------------------------------------------
# predict with exported models: no torch, the CSV of the checkpoints, batched = alone

NO_TORCH = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, {root!r}); "
            "from chunkser.entry import run_cli; from chunkser.commands.predict import main; "
            "sys.argv = ['predict.py'] + {argv!r}; run_cli(main)")


def predict_without_torch(argv):
    code = NO_TORCH.format(root=ROOT, argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope='module')
def upstream_onnx(released, upstream):
    """The folder of the 6 released PyTorch models' exports."""
    return os.path.dirname(next(p for c, p in released if c.startswith(upstream[0])))


def test_predict_imports_no_torch(shared, upstream, upstream_onnx, tmp_path):
    """A .wav and a .mat to the CSV with torch impossible to import: the checkpoints' CSV, to 1e-5."""
    inputs = [os.path.join(shared, 'golden', 'audio', n) for n in ('calm.wav', 'excited.mat')]
    out = tmp_path / 'onnx.csv'
    r = predict_without_torch([*inputs, '--model-dir', upstream_onnx, '--norm-dir', upstream[1], '--out', out])
    assert r.returncode == 0, r.stderr
    want = predict_files(inputs, model_dir=upstream[0], norm_dir=upstream[1])
    got = list(csv.DictReader(open(out)))
    assert [g['file'] for g in got] == list(want['file'])
    for col in ('Act', 'Val', 'Dom', 'start', 'end', 'voiced'):
        close([float(g[col]) for g in got], want[col].to_numpy())


def test_batched_equals_one_at_a_time(golden, upstream, upstream_onnx, tmp_path):
    """predict_files on 9 files of different lengths gives each file's lone prediction, .pth.tar and .onnx."""
    paths = []
    for i in range(9):
        paths.append(str(tmp_path / f'u{i}.mat'))
        scipy.io.savemat(paths[-1], {'Audio_data': golden[f'lld_{i}']})
    lens = {golden[f'lld_{i}'].shape[0] for i in range(9)}
    assert len(lens) > 5
    for model_dir in (upstream[0], upstream_onnx):
        together = predict_files(paths, model_dir=model_dir, norm_dir=upstream[1])
        for i, p in enumerate(paths):
            alone = predict_files([p], model_dir=model_dir, norm_dir=upstream[1])
            for col in ('Act', 'Val', 'Dom'):
                # to 1e-6, and the CSV's sixth decimal may round either way
                assert abs(together[col][i] - alone[col][0]) <= 1e-6 + 1e-9, (model_dir, p, col)


# ----------------------------------------------------------------------------------
# errors: one line, exit 2, nothing written

@pytest.fixture
def one_model(upstream_onnx, tmp_path):
    """A copy of one exported model and its JSON: (onnx path, json path)."""
    name = 'LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Act'
    d = tmp_path / 'model'
    d.mkdir()
    for ext in ('.onnx', '.json'):
        (d / (name + ext)).write_bytes(open(os.path.join(upstream_onnx, name + ext), 'rb').read())
    return str(d / (name + '.onnx')), str(d / (name + '.json'))


def edit_json(path, **fields):
    d = json.load(open(path))
    for k, v in fields.items():
        if k == 'sha256':
            d['onnx']['sha256'] = v
        else:
            d[k] = v
    json.dump(d, open(path, 'w'))


def resum(onnx_path, json_path):
    import hashlib
    edit_json(json_path, sha256=hashlib.sha256(open(onnx_path, 'rb').read()).hexdigest())


def break_opset(onnx_path, json_path):
    import onnx
    m = onnx.load(onnx_path)
    for o in m.opset_import:
        if o.domain in ('', 'ai.onnx'):
            o.version = 99
    onnx.save(m, onnx_path)
    resum(onnx_path, json_path)


def truncate(onnx_path, json_path):
    data = open(onnx_path, 'rb').read()
    open(onnx_path, 'wb').write(data[:len(data) // 3])
    resum(onnx_path, json_path)


CASES = {
    'no json': (lambda o, j: os.remove(j), 'no LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Act.json beside it'),
    'json of no export': (lambda o, j: edit_json(j, onnx=None), 'not the description of an exported model'),
    'another NormTerm': (lambda o, j: edit_json(j, norm_fingerprint='0' * 16, norm_dir='/elsewhere'), 'holds other terms'),
    'another front end': (lambda o, j: edit_json(j, frontend={'frontend': 'facebook/wav2vec2-base', 'layer': 6,
                          'normalize': False, 'hop': 0.02, 'weights_sha256': 'a' * 64, 'config_sha256': 'b' * 64}),
                          'not of --frontend is13', ['--frontend', 'is13']),
    'bytes changed': (lambda o, j: open(o, 'ab').write(b'\0'), 'the file is corrupt or not the one exported'),
    'corrupt': (truncate, 'cannot load this model'),
    'unknown opset': (break_opset, 'opset 99, newer than it knows'),
}


@pytest.mark.parametrize('case', list(CASES))
def test_onnx_errors_one_line_exit_2(case, shared, upstream, one_model, tmp_path):
    damage, words, *extra = CASES[case]
    damage(*one_model)
    out = tmp_path / 'out.csv'
    r = predict_without_torch([os.path.join(shared, 'golden', 'audio', 'short.mat'), '--checkpoint', one_model[0],
                               '--norm-dir', upstream[1], '--out', out, *(extra[0] if extra else [])])
    assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and words in lines[0], r.stderr
    assert not out.exists()


def test_export_refuses_and_writes_nothing(upstream, tmp_path, capsys):
    good = os.path.join(upstream[0], 'LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Act.pth.tar')
    bad = tmp_path / 'LSTM_iter5000_batch128_ChunkSeq2One_GatedVec_Act.pth.tar'
    bad.write_bytes(b'not a pickle')
    out = tmp_path / 'out'
    with pytest.raises(UserError, match='not a readable PyTorch checkpoint'):
        export_cmd.main([good, str(bad), '--out-dir', str(out)])
    assert not out.exists() or os.listdir(out) == []
    with pytest.raises(UserError, match='its own folder'):
        export_cmd.main([good, '--out-dir', upstream[0]])


@pytest.mark.numeric
def test_int8_stays_close_and_is_smaller(upstream, golden_utts, tmp_path):
    ckpt = os.path.join(upstream[0], 'LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Act.pth.tar')
    f32, = onnx_export.export([ckpt], str(tmp_path / 'f32'))
    i8, = onnx_export.export([ckpt], str(tmp_path / 'i8'), int8=True)
    assert os.path.getsize(i8) < 0.5 * os.path.getsize(f32)
    assert json.load(open(i8[:-5] + '.json'))['onnx']['int8'] is True
    a = predict_onnx(load_onnx(f32, read_spec(f32)), golden_utts[:11])[0]
    b = predict_onnx(load_onnx(i8, read_spec(i8)), golden_utts[:11])[0]
    assert np.abs(a - b).max() < 0.1 and np.corrcoef(a, b)[0, 1] > 0.99  # z-scored values, spread ~1


def test_testing_takes_an_onnx_model(upstream, upstream_onnx, golden_corpus, tmp_path, capsys):
    """testing.py --checkpoint X.onnx (batched and --subsets, one at a time): the .pth.tar's CSV and CCC, to 1e-5;
    found by its name in --model-dir too."""
    from chunkser.commands import testing
    import pandas as pd
    feat_dir, label_csv = golden_corpus
    name = 'LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Val'
    base = ['-emo', 'Val', '-atten', 'RnnAttenVec', '--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir',
            upstream[1], '--store', str(tmp_path / 'store')]
    runs = {}
    for key, where in (('pth', ['--checkpoint', os.path.join(upstream[0], name + '.pth.tar')]),
                       ('onnx', ['--checkpoint', os.path.join(upstream_onnx, name + '.onnx'), '--subsets', '3']),
                       ('found', ['--model-dir', upstream_onnx])):
        assert testing.main(base + where + ['--out', str(tmp_path / f'{key}.csv')]) == 0
        runs[key] = (capsys.readouterr().out, pd.read_csv(tmp_path / f'{key}.csv'))
    assert f'{name}.onnx' in runs['found'][0]
    for key in ('onnx', 'found'):
        close(runs[key][1]['pred'], runs['pth'][1]['pred'])
    ccc = lambda out: float(next(l for l in out.splitlines() if 'CCC' in l).split(':')[-1])
    assert ccc(runs['onnx'][0]) == pytest.approx(ccc(runs['pth'][0]), abs=1e-5)


def test_benchmark_deploy_section():
    """bench.py --only deploy's section: the speed-ups and the cold-start ratio follow from the times measured."""
    from benchmarking import report
    D = {'utts': 300, 'batch': 128, 'threads': 2, 'size_pth': 3 * 2**20, 'size_f32': 3 * 2**20, 'size_int8': 2**20,
         'features_cpu_per_audio_s': 0.016, 'torch': {'ms': 20.0, 'cpu_ms': 8.0, 'audio_h_per_cpu_h': 55.0},
         'onnx': {'ms': 10.0, 'cpu_ms': 6.0, 'audio_h_per_cpu_h': 56.0},
         'int8': {'ms': 8.0, 'cpu_ms': 4.0, 'audio_h_per_cpu_h': 57.0},
         'cold': {'runs': {'pth': [9.0, 8.0, 10.0], 'onnx': [3.0, 4.0, 2.0]}, 'pth_s': 9.0, 'onnx_s': 3.0, 'ratio': 3.0}}
    text = '\n'.join(report.deploy_section({'deploy': D}))
    assert '| torch | 20.00 | 1.00x | 8.000 | 55.00 |' in text and '| onnx | 10.00 | 2.00x | 6.000 | 56.00 |' in text
    assert '| int8 | 8.000 | 2.50x | 4.000 | 57.00 |' in text and '| **.pth.tar / .onnx** | **3.00x** |' in text
    assert '9.000, 8.000, 10.00' in text and 'int8 1.00 MiB' in text
    assert 'Not measured' in report.deploy_section({'deploy': {'missing': '/x'}})[2]
