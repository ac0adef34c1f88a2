"""Deploying: the released LSTM SelfAttenVec models through onnxruntime (float and int8) against our torch scoring
(CPU streams on), on synthetic utterances; predict.py's cold start on one 5 s wav with .onnx models against the same
with .pth.tar models (whole processes, interleaved, the medians); audio hours per CPU hour of IS13 + each model."""
import os
import statistics
import sys
import time

import numpy as np

from benchmarking.startup import ROOT, SHARED, timed_run

MODELS = [f'LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_{e}.pth.tar' for e in ('Act', 'Val', 'Dom')]
WAV_S = 5.0


def utterances(n, feat_dim, min_frames, max_frames, seed=0):
    """n synthetic z-normalised utterances (T, F) float32 of min_frames..max_frames frames."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(min_frames, max_frames + 1)), feat_dim)).astype(np.float32)
            for _ in range(n)]


def score_rounds(nets, utts, batch, rounds=3):
    """{name: (best wall s, its CPU s)} of scoring `utts` with each net, in turn, `rounds` times."""
    from chunkser.scoring import predict_utterances
    best = {}
    for _ in range(rounds):
        for name, net in nets.items():
            t0, c0 = time.perf_counter(), time.process_time()
            predict_utterances(net, utts, 'cpu', batch)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    return best


def five_second_wav(path, seed=0):
    """A 5 s 16 kHz wav of voiced-like sound (harmonics of a gliding 120-220 Hz pitch, with noise)."""
    import soundfile
    t = np.arange(int(WAV_S * 16000)) / 16000
    f0 = 170 + 50 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = 0.2 * x / np.abs(x).max() + 0.005 * np.random.default_rng(seed).standard_normal(len(t))
    soundfile.write(path, x.astype(np.float32), 16000)
    return path


def features_cpu_s(wav):
    """CPU seconds of openSMILE's IS13 LLDs on the wav (the best of 3)."""
    from chunkser.features import lld
    x = lld.load_audio(wav)
    out = []
    for _ in range(3):
        c0 = time.process_time()
        lld.features_from_signal(x)
        out.append(time.process_time() - c0)
    return min(out)


def measure(c, work, env):
    """The figures (c: model_dir, norm_dir, test_utts, min_frames, max_frames, batch, startup_runs)."""
    import torch
    from chunkser.checkpoint import load_model, read_spec
    from chunkser.onnx_export import export
    from chunkser.onnx_model import load_onnx
    from chunkser.streams import use_cpu_streams
    model_dir = c.get('model_dir') or os.path.join(SHARED, 'trained_model_v1.6')
    norm_dir = c.get('norm_dir') or os.path.join(SHARED, 'NormTerm')
    ckpts = [os.path.join(model_dir, m) for m in MODELS]
    if not all(map(os.path.isfile, ckpts)):
        return {'missing': next(p for p in ckpts if not os.path.isfile(p))}
    d = os.path.join(work, 'deploy')
    f32, i8 = export(ckpts, os.path.join(d, 'onnx')), export(ckpts[:1], os.path.join(d, 'int8'), int8=True)
    spec = read_spec(ckpts[0])
    nets = {'torch': use_cpu_streams(load_model(ckpts[0], spec), 'cpu'), 'onnx': load_onnx(f32[0], spec),
            'int8': load_onnx(i8[0], spec)}
    utts = utterances(c['test_utts'], spec.feat_dim, c['min_frames'], c['max_frames'])
    best = score_rounds(nets, utts, c['batch'])
    audio_s = sum(len(u) for u in utts) * 0.016
    wav = five_second_wav(os.path.join(d, 'five.wav'))
    feat_cpu = features_cpu_s(wav) / WAV_S  # CPU s per audio s
    out = {'utts': len(utts), 'audio_s': audio_s, 'threads': torch.get_num_threads(), 'batch': c['batch'],
           'size_f32': os.path.getsize(f32[0]), 'size_int8': os.path.getsize(i8[0]),
           'size_pth': os.path.getsize(ckpts[0]), 'features_cpu_per_audio_s': feat_cpu}
    for k, (wall, cpu) in best.items():
        out[k] = {'ms': 1000 * wall / len(utts), 'cpu_ms': 1000 * cpu / len(utts),
                  'audio_h_per_cpu_h': audio_s / (cpu + feat_cpu * audio_s)}  # IS13 + this model, per CPU
    out['cold'] = cold_start(wav, model_dir, os.path.dirname(f32[0]), norm_dir, c['startup_runs'], d, env)
    return out


def cold_start(wav, model_dir, onnx_dir, norm_dir, runs, cwd, env):
    """predict.py on the wav with each model folder: an untimed warm-up of each, then `runs` rounds of one run of
    each (which goes first alternates); the medians and their ratio."""
    cmd = lambda m: [sys.executable, os.path.join(ROOT, 'predict.py'), wav, '--model-dir', m, '--norm-dir', norm_dir]
    cmds = {'pth': cmd(model_dir), 'onnx': cmd(onnx_dir)}
    outs = {k: timed_run(v, cwd, env)[1] for k, v in cmds.items()}
    walls = {k: [] for k in cmds}
    for i in range(runs):
        for k in (list(cmds) if i % 2 == 0 else list(cmds)[::-1]):
            walls[k].append(timed_run(cmds[k], cwd, env)[0])
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {'runs': walls, 'pth_s': med['pth'], 'onnx_s': med['onnx'], 'ratio': med['pth'] / med['onnx'],
            'rows': {k: o.strip().splitlines()[-1] for k, o in outs.items()}}
