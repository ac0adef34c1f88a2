"""The chunk-level pipeline on self-supervised features (a tiny wav2vec 2.0 built here): feature_extraction.py
--frontend -> norm_para -> training -> testing -> predict on the audio, as make demo runs it. The width comes
from the data, m = 50 frames from the 0.02 s hop, the ModelSpec records the front end, predict.py equals
testing.py, a front-end mismatch is one line, and the float16 store's accuracy cost is stated."""
import csv
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from chunkser.commands import feature_extraction
from chunkser.inference import predict_files
from chunkser.commands import norm_para
from chunkser.commands import predict
from chunkser.commands import testing
from chunkser.commands import training
from chunkser.store import FeatureStore
from test_frontend import command, save_tiny, speechlike, write_wav
from chunkser.utils import UserError, evaluation_metrics
from conftest import need_transformers

need_transformers(module_level=True)
SPLITS = ['Train'] * 8 + ['Validation'] * 3 + ['Test'] * 4


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A 15-utterance corpus (1.2..4 s, 16 and 44.1 kHz), its features, NormTerm and a model trained 6 iterations."""
    d = tmp_path_factory.mktemp('ssl')
    model = save_tiny(d / 'w2v', 'wav2vec2', do_normalize=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(SPLITS):
        sr = 44100 if i % 3 == 0 else 16000
        act = rng.uniform(1, 7)
        x = speechlike(rng.uniform(1.2, 4.0), sr, seed=i) * (0.3 + 0.1 * act)  # louder: more aroused
        write_wav(d / 'wav' / f'u{i:02d}.wav', x, sr)
        rows.append({'FileName': f'u{i:02d}.wav', 'EmoAct': act, 'EmoVal': 4.0, 'EmoDom': 8 - act, 'Split_Set': split})
    pd.DataFrame(rows).to_csv(d / 'labels.csv', index=False)
    corpus = ['--feat-dir', str(d / 'feat'), '--label-csv', str(d / 'labels.csv'), '--norm-dir', str(d / 'norm')]
    assert feature_extraction.main(['--wav-dir', str(d / 'wav'), '--out-dir', str(d / 'feat'), '--frontend', model,
                                    '--device', 'cpu']) == 0
    assert norm_para.main(corpus) == 0
    assert training.main(['-iter', '6', '-batch', '4', '-emo', 'Act', '-atten', 'GatedVec', '--hidden-dim', '16',
                          '--val-every', '3', '--seed', '0', '--device', 'cpu', '--out-dir', str(d / 'models'),
                          '--store', str(d / 'store'), *corpus]) == 0
    ckpt = str(d / 'models' / 'LSTM_iter6_batch4_ChunkSeq2One_GatedVec_Act.pth.tar')
    return {'dir': d, 'model': model, 'corpus': corpus, 'ckpt': ckpt}


def test_training_reads_the_front_end(run):
    """The JSON: width 32 from the data, m = 50 (1 s at 0.02 s), H from --hidden-dim, the front end's record."""
    spec = json.load(open(run['ckpt'][:-len('.pth.tar')] + '.json'))
    rec = json.load(open(run['dir'] / 'feat' / 'frontend.json'))
    assert (spec['feat_dim'], spec['chunk_frames'], spec['hidden_dim']) == (32, 50, 16)
    assert spec['frontend'] == rec and rec['hop'] == 0.02


def score(run, capsys, *more):
    """testing.py on the Test split -> (its stdout, file -> predicted Act)."""
    out = run['dir'] / 'test.csv'
    assert testing.main(['--checkpoint', run['ckpt'], *run['corpus'], '--store', str(run['dir'] / 'store'),
                         '--out', str(out), '--device', 'cpu', *more]) == 0
    text = capsys.readouterr().out
    return text, {r['file']: float(r['pred']) for r in csv.DictReader(open(out))}


@pytest.mark.numeric
def test_predict_from_audio_equals_testing(run, capsys):
    """predict.py on the Test wavs runs the recorded front end: its values are testing.py's (float32 features,
    same device), start/end in 0.02 s frames, `voiced` empty (no pitch tracker)."""
    text, tested = score(run, capsys)
    assert 'Act-CCC:' in text
    wavs = [str(run['dir'] / 'wav' / f) for f in tested]
    assert predict.main([*wavs, '--checkpoint', run['ckpt'], '--device', 'cpu', '--segments', 'fixed']) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [os.path.basename(r['file']) for r in rows] == list(tested)
    np.testing.assert_allclose([float(r['Act']) for r in rows], list(tested.values()), rtol=0, atol=1e-5)
    for r in rows:
        T = len(__import__('scipy.io').io.loadmat(run['dir'] / 'feat' / (os.path.basename(r['file'])[:-4] + '.mat'))['Audio_data'])
        assert (float(r['start']), float(r['end']), r['voiced']) == (0.0, pytest.approx(T * 0.02, abs=1e-3), '')


def test_chunk_times_use_the_hop(run, tmp_path, capsys):
    """A 12 s recording: windows of at most 11 s = 550 frames, chunk times in seconds of 0.02 s frames, plots."""
    x = speechlike(12.0, 16000)
    write_wav(tmp_path / 'long.wav', x, 16000)
    df = predict_files([str(tmp_path / 'long.wav')], checkpoints=run['ckpt'], device='cpu', segments='fixed')
    T = (len(x) - 400) // 320 + 1  # 599 frames
    assert len(df) == 2 and df['end'].iloc[-1] == pytest.approx(T * 0.02, abs=1e-3)
    assert df['start'].iloc[1] == pytest.approx(round(T / 2) * 0.02, abs=1e-3) and df['voiced'].isna().all()
    assert predict.main([str(tmp_path / 'long.wav'), '--checkpoint', run['ckpt'], '--plot', str(tmp_path / 'p'),
                         '--device', 'cpu', '--segments', 'fixed']) == 0
    assert sorted(os.listdir(tmp_path / 'p')) == ['long_chunks.png', 'long_timeline.png']


def test_front_end_mismatch_refused(run, tmp_path, monkeypatch, capsys):
    """Another model (other sha256) given to predict.py, or features of another front end given to testing.py:
    one line naming both."""
    other = save_tiny(tmp_path / 'other', 'wav2vec2', do_normalize=True, seed=1)
    wav = str(run['dir'] / 'wav' / 'u00.wav')
    code, lines = command(monkeypatch, capsys, predict.main, wav, '--checkpoint', run['ckpt'], '--frontend', other,
                          '--device', 'cpu')
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f'error: {other}: another front end (weights sha256 ') and run['ckpt'] in lines[0]
    with pytest.raises(UserError, match=r'trained on features of .*w2v layer 2 .*, not of --frontend is13'):
        predict.main([wav, '--checkpoint', run['ckpt'], '--frontend', 'is13'])
    mat = str(run['dir'] / 'feat' / 'u00.mat')  # the features themselves: scored, and with an IS13 model refused
    assert predict.main([mat, '--checkpoint', run['ckpt'], '--device', 'cpu']) == 0
    capsys.readouterr()
    feat = tmp_path / 'feat'
    shutil.copytree(run['dir'] / 'feat', feat)
    rec = json.load(open(feat / 'frontend.json'))
    json.dump(dict(rec, layer=1), open(feat / 'frontend.json', 'w'))
    corpus = list(run['corpus'])
    corpus[1] = str(feat)
    with pytest.raises(UserError, match=r'trained on features of .* layer 2 .*, but the features in .* are of .* layer 1'):
        testing.main(['--checkpoint', run['ckpt'], *corpus, '--no-store', '--device', 'cpu'])
    with pytest.raises(UserError, match=r'u00.mat: features of .* layer 1 .*, but the checkpoints were trained on those '
                                        r'of .* layer 2'):
        predict_files([str(feat / 'u00.mat')], checkpoints=run['ckpt'], device='cpu')


@pytest.mark.numeric
def test_float16_store_accuracy_cost(run, capsys):
    """The same model scored from a float16 store and from the float32 one. The stored z-scores (clipped to +-3)
    move by at most 2**-10 each (float16's half spacing in [2, 4)); measured here, the predictions by 1.3e-6 on the
    1..7 scale and the Test CCC by 4e-8 (this 6-iteration model; the assertions leave 100x room), for half the
    store's disk."""
    _, p32 = score(run, capsys)
    _, p16 = score(run, capsys, '--store-dtype', 'float16')
    assert list(p16) == list(p32)
    diff = np.abs(np.array(list(p16.values())) - np.array(list(p32.values())))
    assert 0 < diff.max() < 1e-4, diff.max()
    truth = pd.read_csv(run['dir'] / 'labels.csv').set_index('FileName').loc[list(p32), 'EmoAct'].to_numpy()
    assert abs(evaluation_metrics(truth, list(p16.values())) - evaluation_metrics(truth, list(p32.values()))) < 1e-5
    store = run['dir'] / 'store'
    half = {s.split('-')[0]: os.path.getsize(store / s / 'features.f16') for s in os.listdir(store)
            if os.path.isfile(store / s / 'features.f16')}  # list key -> size
    full = {s.split('-')[0]: os.path.getsize(store / s / 'features.f32') for s in os.listdir(store)
            if os.path.isfile(store / s / 'features.f32')}
    assert len(half) == 1 and all(2 * n == full[k] for k, n in half.items())  # the Test split's, beside float32's
    (key,) = half
    a, b = (FeatureStore(str(store / next(s for s in os.listdir(store) if s.startswith(key) and
                                          os.path.isfile(store / s / f)))) for f in ('features.f16', 'features.f32'))
    assert a.dtype == 'float16' and b.dtype == 'float32' and a[0].dtype == np.float32
    err = max(np.abs(a[i] - b[i]).max() for i in range(len(a)))
    assert 0 < err <= 2 ** -10, err


def test_resume_with_another_hidden_dim_refused(run, tmp_path):
    """--hidden-dim is a setting a resumed run must share (refused in one line, not a state-dict traceback)."""
    argv = ['-iter', '6', '-batch', '4', '-emo', 'Act', '-atten', 'GatedVec', '--val-every', '3', '--device', 'cpu',
            '--out-dir', str(run['dir'] / 'models'), '--store', str(run['dir'] / 'store'), *run['corpus'], '--resume']
    with pytest.raises(UserError, match=r'saved with hidden_dim=16, this run has 8'):
        training.main(argv + ['--hidden-dim', '8'])
    assert training.main(argv + ['--hidden-dim', '16']) == 0  # the finished run: nothing to resume


@pytest.mark.numeric
def test_retrieval_of_audio_runs_the_rankers_front_end(run, tmp_path, capsys):
    """retrieval.py PATH with a ranker trained on these features: the wavs go through the recorded front end, so the
    ranks equal those of the extracted .mat features."""
    import torch
    from chunkser.commands import retrieval
    from chunkser.checkpoint import save_checkpoint
    from chunkser.model import ModelSpec, build_model
    from chunkser.normterm import NormTerms
    from chunkser.utils import chunk_batch
    spec_json = json.load(open(run['ckpt'][:-len('.pth.tar')] + '.json'))
    spec = ModelSpec(task='ranker', head=None, feat_dim=32, hidden_dim=16, chunk_frames=20, chunks=4, scale=1,
                     frontend=spec_json['frontend'], norm_fingerprint=spec_json['norm_fingerprint']).check()
    torch.manual_seed(0)
    model = build_model(spec).eval()
    ckpt = str(tmp_path / 'ranker.pth.tar')
    save_checkpoint(ckpt, model, spec)
    wavs = [str(run['dir'] / 'wav' / f'u{i:02d}.wav') for i in range(11, 15)]
    capsys.readouterr()
    assert retrieval.main(['--checkpoint', ckpt, *wavs, '--norm-dir', str(run['dir'] / 'norm'), '--device', 'cpu']) == 0
    got = json.loads(capsys.readouterr().out)
    norm = NormTerms.load(str(run['dir'] / 'norm'))
    mats = [str(run['dir'] / 'feat' / f'u{i:02d}.mat') for i in range(11, 15)]
    from chunkser.corpus import load_features
    want, margins = [], []
    for mat in mats:  # the reference's way, one chunk pair at a time: f of each chunk alone, then every pair
        chunks = chunk_batch([norm.normalize(load_features(mat)).astype(np.float32)], [0], 20, 4, 1)  # (4, 20, 32)
        with torch.no_grad():
            f = [model.chunk_scores(torch.from_numpy(c[None]))[0].double() for c in chunks]  # C' x (2,)
        wins = [sum(int(torch.softmax(f[p] - f[q], 0).argmax()) for q in range(len(f)) if q != p) for p in range(len(f))]
        want.append(pd.Series(wins).rank(method='min', ascending=False).astype(int).tolist())
        margins += [abs(float((f[p] - f[q])[1] - (f[p] - f[q])[0])) for p in range(len(f)) for q in range(p)]
    assert [v['ChunkRankSeq'] for v in got.values()] == want
    assert min(margins) > 1e-4  # no pair within rounding of a tie, where batching could flip it
    assert any(len(set(r)) > 1 for r in want)  # ranks that say something
