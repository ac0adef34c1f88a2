"""Audio networks: a self-supervised model inside the network, trained from audio (training.py --wav-dir --frontend
[--finetune]), on tiny WavLM and wav2vec 2.0 models built here from configs, and a synthetic corpus whose arousal is
carried by the sound's pitch."""
import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from conftest import need_transformers
from test_onnx import close, predict_without_torch
from chunkser import onnx_export
from chunkser.checkpoint import load_model, read_spec, save_checkpoint
from chunkser.commands import predict, testing, training
from chunkser.features.frontend import SSLFrontEnd
from chunkser.model import build_model
from chunkser.scoring import predict_utterances
from chunkser.spec import ModelSpec
from chunkser.train import loop as train_loop
from chunkser.utils import DynamicChunkSplitData, UserError, frame_batch, run_cli

transformers = need_transformers(module_level=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# hidden size 4: a random frozen model keeps little of what its convolutions see, so what fine-tuning adds shows
TINY = dict(hidden_size=4, num_hidden_layers=2, num_attention_heads=1, intermediate_size=8, conv_dim=(16,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, feat_proj_dropout=0.0)
# WavLM as the large models (a layer norm per frame in the convolutions: batched with an attention mask), wav2vec 2.0
# as the base ones (a group norm over the whole input: each utterance alone); one normalises the waveform
KINDS = {'wavlm': (transformers.WavLMConfig, 'layer', False), 'wav2vec2': (transformers.Wav2Vec2Config, 'group', True)}
SPLITS = (('Train', 48), ('Validation', 24), ('Test', 48))


def save_model(folder, kind, seed=0, **over):
    cls, norm, do_normalize = KINDS[kind]
    torch.manual_seed(seed)
    cfg = cls(**{**TINY, **over}, feat_extract_norm=norm, do_stable_layer_norm=norm == 'layer')
    transformers.AutoModel.from_config(cfg).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
    return str(folder)


def write_corpus(folder, seed=0):
    """Harmonic tones of 1.2-3 s: EmoAct rises with the pitch (100-320 Hz), EmoVal with the loudness; a little noise."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder / 'wav')
    rows = []
    for split, n in SPLITS:
        for i in range(n):
            f0, loud, dur = rng.uniform(100, 320), rng.uniform(0.05, 0.5), rng.uniform(1.2, 3.0)
            t = np.arange(int(dur * 16000)) / 16000
            x = loud * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) + 0.01 * rng.standard_normal(len(t))
            name = f'{split}_{i:03d}.wav'
            sf.write(folder / 'wav' / name, x.astype(np.float32), 16000, subtype='FLOAT')
            act, val = 1 + 6 * (f0 - 100) / 220, 1 + 6 * (loud - 0.05) / 0.45
            rows.append(dict(FileName=name, EmoAct=act, EmoVal=val, EmoDom=(act + val) / 2, Split_Set=split))
    pd.DataFrame(rows).to_csv(folder / 'labels.csv', index=False)
    return str(folder / 'wav'), str(folder / 'labels.csv')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('audio')
    wav, labels = write_corpus(d)
    return dict(wav=wav, labels=labels, store=str(d / 'store'), **{k: save_model(d / k, k) for k in KINDS})


def train_argv(corpus, kind, out, *extra, iters=80, head='RnnAttenVec', layers='2', seed=2):
    """training.py's arguments; `extra` last (argparse keeps an option's last value)."""
    return ['-iter', str(iters), '-batch', '8', '-emo', 'Act', '-atten', head, '--hidden-dim', '32', '--lr', '1e-3',
            '--wav-dir', corpus['wav'], '--label-csv', corpus['labels'], '--frontend', corpus[kind], '--layers', layers,
            '--frontend-lr', '1e-3', '--val-every', '20', '--seed', str(seed), '--store', corpus['store'],
            '--out-dir', str(out), *extra]


def checkpoint(out):
    return glob.glob(os.path.join(out, '*.pth.tar'))[0]


def test_ccc(capsys, ckpt, corpus, out_csv=None):
    """testing.py's Act-CCC of a checkpoint on the Test split (and its per-file CSV with out_csv)."""
    capsys.readouterr()
    argv = ['--checkpoint', ckpt, '--wav-dir', corpus['wav'], '--label-csv', corpus['labels'], '--store', corpus['store']]
    assert testing.main(argv + (['--out', out_csv] if out_csv else [])) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('Act-CCC: '))
    return float(line.split()[1])


test_ccc.__test__ = False  # a helper, not a test


def command(monkeypatch, capsys, main, *argv):
    """A command as its __main__ runs it -> (exit code, stderr lines)."""
    monkeypatch.setattr(sys, 'argv', ['cmd', *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def audio_spec(corpus, kind, head='RnnAttenVec', layers='all', finetune=True, normalize=True):
    cfg = json.load(open(os.path.join(corpus[kind], 'config.json')))
    return ModelSpec(head=head, feat_dim=cfg['hidden_size'], hidden_dim=16, chunk_frames=50,
                     backbone=dict(config=cfg, layers=layers, finetune=finetune, normalize=normalize)).check()


# ----------------------------------------------------------------------------------
# the network: the frozen front end's frames, batched = alone

@pytest.mark.parametrize('kind', list(KINDS))
@pytest.mark.parametrize('normalize', [False, True])
def test_backbone_gives_the_front_ends_frames(corpus, kind, normalize):
    """The backbone of a fresh audio network, the pretrained weights copied in, gives for one utterance the frames
    feature_extraction.py's front end gives (frontend.SSLFrontEnd, itself tested against transformers)."""
    x = sf.read(os.path.join(corpus['wav'], 'Train_000.wav'))[0]
    front = SSLFrontEnd(corpus[kind], layer=1, normalize=normalize)
    net = build_model(audio_spec(corpus, kind, layers=1, normalize=normalize)).eval()
    net.backbone.model.load_state_dict(front.model.state_dict())
    with torch.no_grad():
        h, frames = net.backbone(torch.from_numpy(frame_batch([x.astype(np.float32)[:, None]], [0])))
    want = front.features(x)  # (T, D)
    assert int(frames[0]) == len(want) == h.shape[1]
    np.testing.assert_allclose(h[0].numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('kind', list(KINDS))
@pytest.mark.parametrize('head', ['RnnAttenVec', 'AttnStatsPool'])
def test_batched_equals_alone_and_chunks_follow_the_rule(corpus, kind, head):
    """Utterances of 0.02 s (under one receptive field), 0.7 s (under a chunk), 1.5, 3 and 6 s scored in one batch
    give each one's lone outputs; the chunks cut from the hidden states are utils.DynamicChunkSplitData's."""
    rng = np.random.default_rng(1)
    utts = [0.1 * rng.standard_normal((n, 1)).astype(np.float32) for n in (320, 11200, 24000, 48000, 96000)]
    torch.manual_seed(0)
    net = build_model(audio_spec(corpus, kind, head=head)).eval()
    with torch.no_grad():
        batched, w, _ = net(torch.from_numpy(frame_batch(utts, range(len(utts)))), return_chunks=True)
        alone = torch.cat([net(torch.from_numpy(frame_batch(utts, [i]))) for i in range(len(utts))])
        h, frames = net.backbone(torch.from_numpy(frame_batch(utts, range(len(utts)))))
    np.testing.assert_allclose(batched.numpy(), alone.numpy(), atol=1e-5, rtol=0)
    assert w.shape == (len(utts), 11)
    np.testing.assert_allclose(w.sum(1).numpy(), 1.0, atol=1e-5)
    from chunkser.backbone import chunks_of
    want = DynamicChunkSplitData([h[b, :int(frames[b])].numpy() for b in range(len(utts))], 50, 11, 1)
    np.testing.assert_array_equal(chunks_of(h, frames, 50, 11).numpy(), want)


def test_hostile_backbone_descriptions_are_refused(corpus):
    """A checkpoint JSON's backbone is data: code (auto_map), unknown model types and absurd sizes are refused in
    one line before transformers sees them."""
    good = audio_spec(corpus, 'wavlm').to_json()
    for change, word in ((dict(auto_map={'AutoModel': 'evil.Model'}), 'auto_map'), (dict(model_type='bert'), 'bert'),
                         (dict(hidden_size=10 ** 9), 'hidden_size'), (dict(conv_stride='320'), 'conv_stride')):
        bad = json.loads(json.dumps(good))
        bad['backbone']['config'].update(change)
        with pytest.raises(UserError, match=word):
            ModelSpec.from_json(bad, 'x.json')
    bad = json.loads(json.dumps(good))
    bad['backbone']['config']['feat_extract_activation'] = 'no-such-activation'
    with pytest.raises(UserError, match='transformers cannot build'):
        build_model(ModelSpec.from_json(bad, 'x.json'))
    bad = json.loads(json.dumps(good))
    bad['labels'] = {'Act': [4.0, float('nan')]}
    with pytest.raises(UserError, match='labels'):
        ModelSpec.from_json(bad, 'x.json')


# ----------------------------------------------------------------------------------
# training: fine-tuned against frozen, what trains, the JSON

@pytest.fixture(scope='module')
def runs(corpus, tmp_path_factory):
    """kind -> {'frozen' | 'finetuned': folder} of 80 updates from the same seed."""
    out = {}
    for kind in KINDS:
        for name, extra in (('frozen', []), ('finetuned', ['--finetune'])):
            folder = tmp_path_factory.mktemp(f'{kind}_{name}')
            assert training.main(train_argv(corpus, kind, folder, *extra)) == 0
            out.setdefault(kind, {})[name] = str(folder)
    return out


@pytest.mark.parametrize('kind', list(KINDS))
def test_finetuning_learns_and_beats_the_frozen_model(runs, corpus, kind, capsys):
    """The training loss falls; the fine-tuned model's Test CCC is above the frozen copy's after the same updates
    (seen, seed 2: WavLM 0.56 against 0.42, wav2vec 2.0 0.33 against 0.00, the same to 4 digits with the kernels
    limited to AVX2; seeds 1 and 3: WavLM ahead by 0.14 and 0.08, wav2vec 2.0 by 0.36 and 0.37)."""
    hist = pd.read_csv(glob.glob(os.path.join(runs[kind]['finetuned'], '*.history.csv'))[0])
    assert hist.train_loss.iloc[-1] < hist.train_loss.iloc[0] - 0.2
    ccc = {name: test_ccc(capsys, checkpoint(folder), corpus) for name, folder in runs[kind].items()}
    print(f'{kind}: Test Act-CCC fine-tuned {ccc["finetuned"]:.4f}, frozen {ccc["frozen"]:.4f}')
    assert ccc['finetuned'] > ccc['frozen'] + 0.05, ccc


@pytest.mark.parametrize('kind', list(KINDS))
def test_what_trains(runs, corpus, kind):
    """Fine-tuned: the convolutional feature encoder's weights are the pretrained ones, bit for bit, the
    transformer's changed; frozen: every backbone weight is the pretrained one. The JSON records both."""
    origin = transformers.AutoModel.from_pretrained(corpus[kind]).state_dict()
    for name, folder in runs[kind].items():
        sd = torch.load(checkpoint(folder), weights_only=True)
        back = {k[len('backbone.model.'):]: v for k, v in sd.items() if k.startswith('backbone.model.')}
        assert back.keys() == origin.keys()
        conv = [k for k in back if k.startswith('feature_extractor.')]
        layers = [k for k in back if k.startswith('encoder.layers.')]
        assert conv and layers
        assert all(torch.equal(back[k], origin[k]) for k in conv)
        changed = [k for k in layers if not torch.equal(back[k], origin[k])]
        assert (len(changed) > len(layers) // 2) if name == 'finetuned' else not changed, changed
        js = json.load(open(checkpoint(folder)[:-len('.pth.tar')] + '.json'))
        assert js['fine_tuned'] == (name == 'finetuned') and js['backbone']['finetune'] == (name == 'finetuned')
        assert js['norm_dir'] is None and set(js['labels']) == {'Act', 'Val', 'Dom'}


def test_freeze_frontend_steps_holds_the_transformer(corpus, tmp_path):
    """--freeze-frontend-steps K: no transformer weight moves in the first K updates; after them it trains."""
    origin = transformers.AutoModel.from_pretrained(corpus['wavlm']).state_dict()
    moved = {}
    for k in (4, 2):
        out = tmp_path / f'k{k}'
        argv = train_argv(corpus, 'wavlm', out, '--finetune', '--freeze-frontend-steps', str(k), iters=4)
        assert training.main([*argv, '--val-every', '4']) == 0
        sd = torch.load(checkpoint(out), weights_only=True)
        moved[k] = [n for n in origin if n.startswith('encoder.layers.') and
                    not torch.equal(sd['backbone.model.' + n], origin[n])]
    assert moved[4] == [] and len(moved[2]) > 0


@pytest.fixture(scope='module')
def layers_all(corpus, tmp_path_factory):
    """wav2vec 2.0, --layers all, the challenge's utterance-level head, fine-tuned."""
    out = tmp_path_factory.mktemp('all')
    argv = train_argv(corpus, 'wav2vec2', out, '--finetune', head='AttnStatsPool', layers='all', iters=40)
    assert training.main(argv) == 0
    return str(out)


def test_layers_all_weights_recorded_and_plotted(layers_all, corpus):
    """The learned layer weights: one per hidden state, a softmax (sum 1), moved from uniform, in the JSON and
    plotted beside the checkpoint."""
    ckpt = checkpoint(layers_all)
    js = json.load(open(ckpt[:-len('.pth.tar')] + '.json'))
    w = np.array(js['layer_weights'])
    assert len(w) == TINY['num_hidden_layers'] + 1 and abs(w.sum() - 1) < 1e-5
    raw = torch.load(ckpt, weights_only=True)['backbone.layer_weights']
    np.testing.assert_allclose(w, torch.softmax(raw, 0).numpy(), atol=1e-6)
    assert np.ptp(w) > 0  # trained
    assert os.path.isfile(ckpt[:-len('.pth.tar')] + '.layers.png')


def test_layers_all_on_a_frozen_model(corpus, tmp_path):
    """--layers all without --finetune: the layer weights learn on the frozen model's hidden states (no feature
    store of every layer), every backbone weight stays the pretrained one."""
    assert training.main(train_argv(corpus, 'wav2vec2', tmp_path, layers='all', iters=6)) == 0
    sd = torch.load(checkpoint(tmp_path), weights_only=True)
    origin = transformers.AutoModel.from_pretrained(corpus['wav2vec2']).state_dict()
    assert all(torch.equal(sd['backbone.model.' + k], v) for k, v in origin.items())
    w = sd['backbone.layer_weights']
    assert w.max() > w.min()  # trained from the uniform start


@pytest.mark.parametrize('which', ['chunk', 'utterance'])
def test_predict_from_audio_equals_testing(runs, layers_all, corpus, tmp_path, capsys, which):
    """predict.py on the Test wavs with the fine-tuned checkpoint gives testing.py's per-file predictions (1e-5): the
    chunk-level head and the challenge's pooling head."""
    ckpt = checkpoint(runs['wavlm']['finetuned'] if which == 'chunk' else layers_all)
    test_ccc(capsys, ckpt, corpus, str(tmp_path / 't.csv'))
    t = pd.read_csv(tmp_path / 't.csv')
    files = [os.path.join(corpus['wav'], f) for f in t.file]
    assert predict.main([*files, '--checkpoint', ckpt, '--out', str(tmp_path / 'p.csv')]) == 0
    p = pd.read_csv(tmp_path / 'p.csv')
    assert len(p) == len(t)
    np.testing.assert_allclose(p.Act.to_numpy(), t.pred.to_numpy(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------
# resume and torchrun

def resume_argv(corpus, out):
    return train_argv(corpus, 'wavlm', out, '--finetune', '--val-every', '2', iters=8, seed=4)


def test_resume_after_sigkill_equals_uninterrupted(corpus, tmp_path, capsys):
    """A fine-tuning run killed (SIGKILL) after its first state file and resumed ends with the uninterrupted run's
    checkpoint, bit for bit, backbone included."""
    full = tmp_path / 'full'
    assert training.main(resume_argv(corpus, full)) == 0
    out = tmp_path / 'cut'
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'training.py'), *resume_argv(corpus, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = None
    for _ in range(6000):  # a hang guard, not a speed check
        state = glob.glob(str(out / '*.resume.pt'))
        if state or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    assert state and proc.returncode == -signal.SIGKILL
    assert training.main(resume_argv(corpus, out) + ['--resume']) == 0
    a, b = (torch.load(checkpoint(d), weights_only=True) for d in (full, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (pd.read_csv(glob.glob(str(d / '*.history.csv'))[0]) for d in (full, out))
    np.testing.assert_array_equal(ha.val_loss, hb.val_loss)


TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']


@pytest.mark.numeric
def test_two_processes_same_gradients_as_one(corpus, tmp_path):
    """One step of a fine-tuned audio network (--layers all) on a fixed batch of waveforms under torchrun: the loss
    and every gradient, the backbone's included, are those of one process with the whole batch."""
    from ddp_grad_check import step_grads
    which = 'audio:' + os.path.join(corpus['wavlm'], 'config.json')
    r = subprocess.run([*TORCHRUN, os.path.join(ROOT, 'tests', 'ddp_grad_check.py'), str(tmp_path / 'g.pt'), which],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    two_grads, two_loss = torch.load(tmp_path / 'g.pt', weights_only=True)[which]
    one_grads, one_loss = step_grads(which)
    assert two_loss == pytest.approx(one_loss, abs=1e-6)
    assert one_grads.keys() == two_grads.keys()
    assert sum(k.startswith('backbone.model.encoder.layers.') for k in one_grads) > 10
    for k in one_grads:
        torch.testing.assert_close(two_grads[k], one_grads[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.numeric
def test_two_processes_train_as_one(corpus, tmp_path, monkeypatch):
    """training.py under torchrun with 2 processes (every dropout off), fine-tuning: the validation losses of one
    process."""
    from train_no_dropout import build_model_without_dropout
    argv = lambda out: train_argv(corpus, 'wavlm', out, '--finetune', '--val-every', '2', iters=4, seed=5)  # noqa: E731
    r = subprocess.run([*TORCHRUN, os.path.join(ROOT, 'tests', 'train_no_dropout.py'), *argv(tmp_path / 'two')],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'x 2 processes' in r.stdout
    monkeypatch.setattr(train_loop, 'build_model', build_model_without_dropout)
    assert training.main(argv(tmp_path / 'one')) == 0
    one, two = (pd.read_csv(glob.glob(str(tmp_path / d / '*.history.csv'))[0]) for d in ('one', 'two'))
    np.testing.assert_allclose(two.val_loss, one.val_loss, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------
# errors: one line, exit 2

def test_option_errors(corpus, monkeypatch, capsys):
    base = ['-iter', '2', '-batch', '4', '--label-csv', corpus['labels']]
    for argv, words in ((['--finetune'], '--finetune'), (['--finetune', '--wav-dir', corpus['wav']], '--finetune'),
                        (['--wav-dir', corpus['wav']], '--frontend go together'),
                        (['--feat-dir', corpus['wav'], '--layers', 'all'], '--layers is for training from audio'),
                        (['--wav-dir', corpus['wav'], '--frontend', corpus['wavlm'], '--freeze-frontend-steps', '3'],
                         'is for --finetune'),
                        (['--wav-dir', corpus['wav'], '--frontend', corpus['wavlm'], '--layers', 'top'], '--layers top')):
        code, err = command(monkeypatch, capsys, training.main, *base, *argv)
        assert code == 2 and len(err) == 1 and words in err[0], err


def test_hop_that_does_not_fit_the_chunk_rule(corpus, tmp_path, monkeypatch, capsys):
    """A model whose frames are 0.625 s apart gives one frame per ~1 s chunk: refused, nothing written."""
    folder = save_model(tmp_path / 'coarse', 'wavlm', conv_dim=(16,) * 3, conv_kernel=(25, 20, 20),
                        conv_stride=(25, 20, 20))
    code, err = command(monkeypatch, capsys, training.main, *train_argv(corpus, 'wavlm', tmp_path / 'M', '--frontend',
                                                                       folder, iters=2))
    assert code == 2 and len(err) == 1 and '0.625 s' in err[0] and 'chunk' in err[0], err
    assert not glob.glob(str(tmp_path / 'M' / '*.pth.tar'))


def test_missing_wav_is_named(corpus, tmp_path, monkeypatch, capsys):
    labels = pd.read_csv(corpus['labels'])
    labels.loc[len(labels)] = dict(FileName='Train_999.wav', EmoAct=4, EmoVal=4, EmoDom=4, Split_Set='Train')
    labels.to_csv(tmp_path / 'l.csv', index=False)
    argv = train_argv(corpus, 'wavlm', tmp_path / 'M', iters=2)
    argv[argv.index('--label-csv') + 1] = str(tmp_path / 'l.csv')
    code, err = command(monkeypatch, capsys, training.main, *argv)
    assert code == 2 and len(err) == 1 and os.path.join(corpus['wav'], 'Train_999.wav') in err[0], err


def test_checkpoint_given_another_backbone(runs, corpus, tmp_path, monkeypatch, capsys):
    """A WavLM-fine-tuned checkpoint with --frontend of the wav2vec 2.0 model (testing and predict), or with
    features instead of audio: one line, exit 2, nothing written."""
    ckpt = checkpoint(runs['wavlm']['finetuned'])
    code, err = command(monkeypatch, capsys, testing.main, '--checkpoint', ckpt, '--wav-dir', corpus['wav'],
                        '--label-csv', corpus['labels'], '--frontend', corpus['wav2vec2'], '--out', tmp_path / 'o.csv')
    assert code == 2 and len(err) == 1 and 'another model' in err[0], err
    code, err = command(monkeypatch, capsys, predict.main, os.path.join(corpus['wav'], 'Test_000.wav'),
                        '--checkpoint', ckpt, '--frontend', corpus['wav2vec2'], '--out', tmp_path / 'p.csv')
    assert code == 2 and len(err) == 1 and 'another model' in err[0], err
    code, err = command(monkeypatch, capsys, testing.main, '--checkpoint', ckpt, '--feat-dir', corpus['wav'],
                        '--label-csv', corpus['labels'], '--norm-dir', tmp_path)
    assert code == 2 and len(err) == 1, err
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------------
# export: the backbone inside the ONNX model, one utterance a call, scored without torch

def audio_checkpoint(corpus, folder, kind, head, seed=0):
    """A fresh audio network of random weights (its layer weights too), with label terms, saved -> its path. WavLM
    reads the waveform as it is, wav2vec 2.0 normalised (as their preprocessors)."""
    spec = dataclasses.replace(audio_spec(corpus, kind, head=head, normalize=KINDS[kind][2]),
                               labels={'Act': [4.0, 1.5]}).check()
    torch.manual_seed(seed)
    net = build_model(spec)
    with torch.no_grad():
        net.backbone.layer_weights.normal_()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{kind}_{head}.pth.tar')
    save_checkpoint(path, net, spec)
    return path


@pytest.mark.parametrize('kind', list(KINDS))
@pytest.mark.parametrize('head', ['RnnAttenVec', 'AttnStatsPool'])
def test_exported_audio_network_equals_its_checkpoint(corpus, tmp_path, kind, head):
    """Exported once, the ONNX model scores utterances of 0.02 s (under one receptive field), 0.5, 0.7 (under a
    chunk), 1.5 and 6 s, one call each, to the checkpoint's outputs scored in one batch (1e-5 relative to
    max(1, |value|)): the utterance values and the chunk weights."""
    ckpt = audio_checkpoint(corpus, tmp_path, kind, head)
    path, = onnx_export.export([ckpt], str(tmp_path / 'onnx'))
    record = json.load(open(path[:-len('.onnx')] + '.json'))
    assert record['onnx']['inputs'] == {'waveform': [1, 'samples']} and record['backbone']['layers'] == 'all'
    rng = np.random.default_rng(1)
    utts = [0.1 * rng.standard_normal((n, 1)).astype(np.float32) for n in (320, 8000, 11200, 24000, 96000)]
    want = predict_utterances(load_model(ckpt, read_spec(ckpt)), utts, batch_size=64, return_chunks=True)
    got = predict_utterances(load_model(path, read_spec(path)), utts, return_chunks=True)
    for g, w in zip(got[:2], want[:2]):
        close(g, w)
    assert got[1].shape == (len(utts), 11) and got[2] is None and want[2] is None


@pytest.mark.parametrize('kind,head', [('wavlm', 'RnnAttenVec'), ('wav2vec2', 'AttnStatsPool')])
def test_predict_with_exported_audio_network_imports_no_torch(corpus, tmp_path, kind, head):
    """predict.py on Test wavs with X.onnx, torch impossible to import: the CSV of X.pth.tar, to 1e-5."""
    ckpt = audio_checkpoint(corpus, tmp_path, kind, head)
    path, = onnx_export.export([ckpt], str(tmp_path / 'onnx'))
    files = [os.path.join(corpus['wav'], f'Test_{i:03d}.wav') for i in range(4)]
    assert predict.main([*files, '--checkpoint', ckpt, '--out', str(tmp_path / 'pth.csv')]) == 0
    r = predict_without_torch([*files, '--checkpoint', path, '--out', tmp_path / 'onnx.csv'])
    assert r.returncode == 0, r.stderr
    want, got = pd.read_csv(tmp_path / 'pth.csv'), pd.read_csv(tmp_path / 'onnx.csv')
    assert list(got.columns) == list(want.columns) and list(got.file) == list(want.file)
    for col in ('Act', 'start', 'end', 'voiced'):
        close(got[col].to_numpy(), want[col].to_numpy())
