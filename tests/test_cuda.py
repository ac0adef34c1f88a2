"""The CUDA paths, where a GPU exists (skipped, with the reason, everywhere else, CI included): TF32 stays off; the
released checkpoints give the reference's predictions to 1e-5 on CUDA as on the CPU; scoring and a training step on
CUDA agree with the CPU; a short training runs in fp32 and with --amp bf16 / fp16, and its checkpoint scores the same
on CUDA and on the CPU.

The GPU machine has no opensmile: nothing here imports it, or feature_extraction, at module level
(tests/test_harness.py checks). None of these tests has run on a GPU yet: the tolerances are the README's claims (1e-5
for scoring), not measured margins (README, Tests)."""

import numpy as np
import pandas as pd
import pytest
import torch

from chunkser import checkpoint as CK
from chunkser import model as M
from chunkser.commands import testing
from chunkser.commands import training
from chunkser.device import select_device
from chunkser.train import step as train_step
from chunkser.model import ModelSpec
from chunkser.scoring import predict_utterances

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device here (these tests need a GPU)')

HEADS_RELEASED = ('RnnAttenVec', 'SelfAttenVec')


@pytest.fixture
def tf32_on():
    """TF32 switched on before the test (cuDNN's default): the scripts must switch it off on CUDA."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def assert_tf32_off():
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def close(got, want, tol=1e-5):
    """|got - want| <= tol * max(1, |want|) everywhere."""
    want = np.asarray(want, np.float64)
    err = np.abs(np.asarray(got, np.float64) - want) / np.maximum(1, np.abs(want))
    assert err.max() <= tol, err.max()


def score(corpus, norm_dir, out, extra):
    """testing.py --out on the corpus; the predictions."""
    assert testing.main(['--feat-dir', corpus[0], '--label-csv', corpus[1], '--norm-dir', norm_dir, '--no-store',
                         '--out', str(out), *extra]) == 0
    return pd.read_csv(out)['pred'].to_numpy()


@pytest.mark.numeric
@pytest.mark.parametrize('atten', HEADS_RELEASED)
def test_cuda_scores_the_reference_to_1e5(atten, golden, golden_corpus, upstream, tmp_path, tf32_on):
    """testing.py --device cuda with the released checkpoints: the reference's predictions to 1e-5 (the README's
    claim, as on the CPU), TF32 off."""
    pred = score(golden_corpus, upstream[1], tmp_path / 'p.csv',
                 ['-iter', '5000', '-batch', '128', '-emo', 'Act', '-atten', atten, '--model-dir', upstream[0],
                  '--device', 'cuda'])
    assert_tf32_off()
    np.testing.assert_allclose(pred, golden[f'{atten}_Act_pred'], atol=1e-5, rtol=0)


@pytest.mark.numeric
@pytest.mark.parametrize('encoder,head', [('LSTM', 'NonAtten'), ('LSTM', 'GatedVec'), ('LSTM', 'RnnAttenVec'),
                                          ('LSTM', 'SelfAttenVec'), ('LSTM', 'MultiHeadAttenVec'),
                                          ('KerasLSTM', 'RnnAttenVec'), ('CNN', 'GatedVec')])
def test_cuda_scoring_equals_cpu(encoder, head, tf32_on):
    """Batched scoring of utterances of several lengths (shorter than a chunk, too) on CUDA and on the CPU: the same
    raw outputs and chunk weights to 1e-5."""
    torch.manual_seed(0)
    net = M.build_model(ModelSpec(encoder=encoder, head=head)).eval()
    rng = np.random.default_rng(0)
    utts = [rng.normal(size=(T, 130)).astype(np.float32) for T in (40, 62, 100, 257, 700)]
    cpu, w_cpu, _, _ = predict_utterances(net, utts, 'cpu', return_chunks=True)
    select_device('cuda')  # what the scripts call: TF32 off
    assert_tf32_off()
    gpu, w_gpu, _, _ = predict_utterances(net.to('cuda'), utts, 'cuda', return_chunks=True)
    close(gpu, cpu)
    close(w_gpu, w_cpu)


@pytest.mark.numeric
@pytest.mark.parametrize('atten', ['GatedVec', 'RnnAttenVec', 'SelfAttenVec'])
def test_cuda_training_step_equals_cpu(atten, tf32_on):
    """One training step's loss and gradients (dropout off, the fixed batch of the torchrun check) on CUDA and on
    the CPU. Gradients to 1e-4 of each parameter's largest (LSTM biases 1e-3: their sum over 143 x 62 chunk steps
    cancels heavily, see test_cpu_streams_same_numbers)."""
    from ddp_grad_check import global_batch, no_dropout
    select_device('cuda')
    assert_tf32_off()
    runs = {}
    for device in ('cpu', 'cuda'):
        torch.manual_seed(0)
        net = no_dropout(M.build_model(ModelSpec(head=atten))).to(device).train()
        x, y = (t.to(device) for t in global_batch())
        loss = train_step.forward_backward(net, x, y)
        runs[device] = loss.item(), {n: p.grad.cpu() for n, p in net.named_parameters() if p.grad is not None}
    (l_cpu, g_cpu), (l_gpu, g_gpu) = runs['cpu'], runs['cuda']
    assert l_gpu == pytest.approx(l_cpu, abs=1e-5)
    assert g_cpu.keys() == g_gpu.keys()
    for n in g_cpu:
        tol = (1e-3 if 'lstm.bias' in n else 1e-4) * g_cpu[n].abs().max().item() + 1e-9
        assert (g_gpu[n] - g_cpu[n]).abs().max().item() <= tol, n


@pytest.mark.numeric
@pytest.mark.parametrize('amp', [None, 'bf16', 'fp16'], ids=['fp32', 'amp-bf16', 'amp-fp16'])
def test_cuda_short_training_then_scoring_equals_cpu(amp, small, tmp_path, tf32_on):
    """training.py --device cuda (fp32, --amp bf16, --amp fp16): 6 iterations, finite losses, an fp32 checkpoint,
    TF32 off; testing.py scores that checkpoint on CUDA as on the CPU (1e-5)."""
    out = tmp_path / 'M'
    argv = ['-iter', '6', '-batch', '8', '-atten', 'RnnAttenVec', '--val-every', '3', '--seed', '1', '--feat-dir',
            small[0], '--label-csv', small[1], '--norm-dir', small[2], '--out-dir', str(out), '--device', 'cuda',
            '--no-store'] + (['--amp', amp] if amp else [])
    assert training.main(argv) == 0
    assert_tf32_off()
    ckpt = out / CK.checkpoint_name(ModelSpec(head='RnnAttenVec', emo='Act'), 8, iterations=6)
    hist = pd.read_csv(str(ckpt)[:-len('.pth.tar')] + '.history.csv')
    assert list(hist.iter) == [3, 6] and np.isfinite(hist[['train_loss', 'val_loss']].to_numpy()).all()
    sd = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert all(v.dtype == torch.float32 and v.device.type == 'cpu' for v in sd.values() if v.is_floating_point())
    labels = pd.read_csv(small[1])
    labels['Split_Set'] = 'Test'  # score every utterance
    labels.to_csv(tmp_path / 'all.csv', index=False)
    corpus = (small[0], str(tmp_path / 'all.csv'))
    on = {d: score(corpus, small[2], tmp_path / f'{d}.csv', ['--checkpoint', str(ckpt), '--device', d])
          for d in ('cpu', 'cuda')}
    assert len(on['cpu']) == len(labels)
    close(on['cuda'], on['cpu'])


@pytest.mark.numeric
@pytest.mark.parametrize('amp', [None, 'bf16'], ids=['fp32', 'amp-bf16'])
def test_cuda_audio_network_step_and_scoring(amp, tmp_path, tf32_on):
    """An audio network (a tiny WavLM inside, fine-tuned, gradient checkpointing on): its outputs on CUDA are the
    CPU's (1e-5) on waveforms of three lengths; one training step (fp32 or bf16 autocast) gives a finite loss and
    gradients in the transformer."""
    from conftest import need_transformers
    transformers = need_transformers()
    from ddp_grad_check import audio_batch, no_dropout
    from chunkser.objectives import Regression
    cfg = transformers.WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                   feat_extract_norm='layer', do_stable_layer_norm=True).to_dict()
    spec = ModelSpec(head='RnnAttenVec', feat_dim=32, hidden_dim=16, chunk_frames=50,
                     backbone=dict(config=cfg, layers='all', finetune=True, normalize=True))
    select_device('cuda')
    torch.manual_seed(0)
    net = no_dropout(M.build_model(spec)).eval()
    x, y = audio_batch(3)
    with torch.no_grad():
        cpu = net(x).numpy()
        gpu = net.to('cuda')(x.to('cuda')).cpu().numpy()
    close(gpu, cpu)
    net.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    net.train()
    loss = train_step.forward_backward(net, x.to('cuda'), y.to('cuda'), Regression(('Act',)),
                                       amp={'bf16': torch.bfloat16}.get(amp))
    assert np.isfinite(loss.item())
    grads = [p.grad for n, p in net.named_parameters() if n.startswith('backbone.model.encoder.layers.')]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
