"""Fine-tuning's cost: one training step of an audio network (a self-supervised model inside the chunk-level
network, backbone.py) on a batch of random audio, the transformer fine-tuned or frozen; seconds per step and peak
memory. The network is built from a transformers config with random weights (the default: WavLMConfig()'s
defaults, WavLM-base: 12 layers, 768 wide); the step is the trainer's own (model.build_model, train.audio.prepare
and param_groups, Adam, train.step.forward_backward with the Regression objective).

Each variant runs in a process of its own, so its peak memory is its own:

    python -m benchmarking.finetune --one '{"variant": "finetune", "device": "cpu", ...}'

prints one JSON line. CPU memory: the process's peak resident set (VmHWM) and that peak less the resident set once
the model is built (what the step adds: activations, gradients, Adam's moments). CUDA memory: max_memory_allocated
after reset_peak_memory_stats, and that less the memory allocated once the model is built.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD = 'SelfAttenVec'  # training.py's default -atten, on the LSTM chunk encoder of hidden size 130
CHUNK_FRAMES = 50  # m: 1 s at the model's 20 ms hop (training.py's default for audio networks)
# name: (the transformer trains, autocast dtype or None, gradient checkpointing); the frozen backbone reads its
# last layer without autograd, so checkpointing (which only acts while its transformer trains) is not measured there
VARIANTS = {'finetune': (True, None, False), 'finetune-ckpt': (True, None, True),
            'finetune-bf16': (True, 'bf16', False), 'finetune-bf16-ckpt': (True, 'bf16', True),
            'frozen': (False, None, False), 'frozen-bf16': (False, 'bf16', False)}
DEVICE_VARIANTS = {'cpu': ('finetune', 'frozen'),  # the CPU path trains in fp32 only (training.py refuses --amp)
                   'cuda': tuple(VARIANTS)}


def base_config(path=None):
    """A transformers config as a dict (config.json's): the file's, or WavLMConfig()'s defaults (WavLM-base)."""
    if path:
        from chunkser.utils import UserError
        try:
            with open(path) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f'--ft-config {path}: expected a transformers config.json ({e.__class__.__name__})')
        if not isinstance(cfg, dict) or 'model_type' not in cfg:
            raise UserError(f'--ft-config {path}: expected a transformers config.json (an object with model_type)')
        return cfg
    import transformers
    return transformers.WavLMConfig().to_dict()


def audio_spec(config, finetune, head=HEAD):
    """The ModelSpec of an audio network on `config` that reads its last layer (fine-tuned or frozen)."""
    from chunkser.backbone import TRAINING_CHANGES
    from chunkser.spec import ModelSpec
    cfg = {k: v for k, v in {**config, **TRAINING_CHANGES}.items() if k != '_name_or_path'}
    return ModelSpec(head=head, feat_dim=cfg['hidden_size'], chunk_frames=CHUNK_FRAMES,
                     backbone=dict(config=cfg, layers=cfg['num_hidden_layers'], finetune=finetune,
                                   normalize=False)).check()


def resident():
    """(resident set now, its peak so far) of this process in bytes (Linux /proc; elsewhere ru_maxrss for both)."""
    try:
        with open('/proc/self/status') as f:
            kv = dict(l.split(':', 1) for l in f if ':' in l)
        return int(kv['VmRSS'].split()[0]) * 1024, int(kv['VmHWM'].split()[0]) * 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)
        return peak, peak


def build(s):
    """The network of settings `s` on its device, in training mode, and its Adam (the trainer's learning rates)."""
    import torch
    from chunkser.model import build_model
    from chunkser.streams import use_cpu_streams
    from chunkser.train import audio
    finetune, _, ckpt = VARIANTS[s['variant']]
    torch.manual_seed(0)
    model = build_model(audio_spec(s['config'], finetune))
    # the trainer's preparation: random weights, so the weights it copies in are the model's own
    same = SimpleNamespace(backbone=SimpleNamespace(model=model.backbone.model))
    model = audio.prepare(model, same, SimpleNamespace(grad_checkpointing=ckpt)).to(s['device'])
    use_cpu_streams(model, torch.device(s['device']))
    opt = torch.optim.Adam(audio.param_groups(model, 1e-4, 1e-5), lr=1e-4)  # training.py's --lr, --frontend-lr
    return model.train(), opt


def one(s):
    """In this process: s['steps'] + 1 training steps (the first a warm-up) of one variant: the figures."""
    import torch
    from chunkser.objectives import Regression
    from chunkser.train.step import forward_backward
    device = torch.device(s['device'])
    if s.get('threads'):
        torch.set_num_threads(s['threads'])
    model, opt = build(s)
    _, amp, _ = VARIANTS[s['variant']]
    amp = {'bf16': torch.bfloat16}.get(amp)
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    built = torch.cuda.memory_allocated() if cuda else resident()[0]
    gen = torch.Generator().manual_seed(1)
    x = (0.1 * torch.randn(s['batch'], int(s['seconds'] * 16000), 1, generator=gen)).to(device)  # (B, N, 1)
    y = torch.randn(s['batch'], generator=gen).to(device)  # (B,)
    objective, times = Regression(('Act',)), []
    for _ in range(s['steps'] + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = forward_backward(model, x, y, objective, amp=amp)
        opt.step()
        loss.item()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    peak = torch.cuda.max_memory_allocated() if cuda else resident()[1]
    count = lambda ps: sum(p.numel() for p in ps)
    walls, cpus = [t for t, _ in times], [c for _, c in times]
    return {'variant': s['variant'], 'device': s['device'], 'step_s': statistics.median(walls[1:]),
            'cpu_s': statistics.median(cpus[1:]), 'steps_s': walls, 'peak_bytes': peak,
            'step_peak_bytes': peak - built, 'built_bytes': built,
            'backbone_params': count(model.backbone.model.parameters()),
            'head_params': count(p for n, p in model.named_parameters() if not n.startswith('backbone.model.')),
            'trained_params': count(p for g in opt.param_groups for p in g['params']),
            'threads': torch.get_num_threads(), 'gpu': torch.cuda.get_device_name() if cuda else None}


def measure(c, env):
    """The section's figures (c: the run's settings: device, ft_batch, ft_seconds, ft_steps, ft_config, threads):
    each of the device's variants in a process of its own, in turn."""
    s = dict(device=c['device'], batch=c['ft_batch'], seconds=c['ft_seconds'], steps=c['ft_steps'],
             config=base_config(c.get('ft_config')), threads=c.get('threads') or 0)
    if c['device'] == 'cuda':
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError('--device cuda: no CUDA device')
    out = {k: s[k] for k in ('device', 'batch', 'seconds', 'steps')}
    spec = audio_spec(s['config'], True)
    out.update(model_type=s['config']['model_type'], layers=s['config']['num_hidden_layers'],
               hidden=s['config']['hidden_size'], head=spec.head, head_hidden=spec.hidden_dim,
               chunk_frames=spec.chunk_frames, config=c.get('ft_config') or 'WavLMConfig() defaults', variants={})
    for v in DEVICE_VARIANTS[c['device']]:
        r = subprocess.run([sys.executable, '-m', 'benchmarking.finetune', '--one', json.dumps(dict(s, variant=v))],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f'fine-tuning variant {v} failed (exit {r.returncode}):\n{r.stderr[-3000:]}')
        out['variants'][v] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def add_arguments(p):
    """bench.py's options of this section."""
    g = p.add_argument_group('fine-tuning (--only finetune: an audio network\'s training step, a process per variant)')
    g.add_argument('--ft-config', help='a transformers config.json of the self-supervised model (default '
                                       'WavLMConfig()\'s defaults: WavLM-base, random weights)')
    g.add_argument('--ft-batch', type=int, default=4, help='utterances per step (default 4)')
    g.add_argument('--ft-seconds', type=float, default=6.0, help='seconds of random audio each (default 6)')
    g.add_argument('--ft-steps', type=int, default=3, help='timed steps after a warm-up, the median counts (default 3)')


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog='python -m benchmarking.finetune', description=__doc__.split('\n')[0])
    p.add_argument('--one', required=True, help='the settings of one variant, JSON')
    a = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    print(json.dumps(one(json.loads(a.one))), flush=True)


if __name__ == '__main__':
    main()
