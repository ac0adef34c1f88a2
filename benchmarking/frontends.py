"""What a front end costs on CPU: CPU seconds per second of audio, openSMILE's IS13 LLDs against base-sized
self-supervised models (random weights, built from transformers' default configs: 12 layers, 768 wide), and what
the windows of long recordings change in the features.

    python -m benchmarking.frontends [--seconds 10] [--repeat 3] [--window-seconds 40]

Each measurement runs in a fresh process (so its peak RSS is its own): one untimed call, then --repeat timed calls
on the same audio; the least CPU time (process_time: every thread of the process) counts. Prints one line per
front end: `[bench] frontend: name=... cpu_s_per_audio_s=... wall_s_per_audio_s=... peak_rss_mb=...`, and
`[bench] frontend-window: ...` for the windowing.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ('is13', 'wavlm-base', 'wav2vec2-base')


def audio(seconds, seed=0):
    """Speech-like test audio at 16 kHz: chirps under an envelope, and noise."""
    from chunkser.utils import SAMPLE_RATE
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return 0.3 * env * np.sin(2 * np.pi * (140 + 60 * np.sin(2 * np.pi * 0.5 * t)) * t) + 0.02 * rng.standard_normal(len(t))


def base_model(kind, folder):
    """A random-weight base-sized model saved in `folder` (the default config of its class)."""
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = {'wavlm-base': transformers.WavLMConfig, 'wav2vec2-base': transformers.Wav2Vec2Config}[kind]()
    transformers.AutoModel.from_config(cfg).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
    return folder


def one(kind, seconds, repeat):
    """In this process: the front end's least CPU time over `repeat` calls on `seconds` of audio."""
    sys.path.insert(0, ROOT)
    x = audio(seconds)
    if kind == 'is13':
        from chunkser.features import lld
        run = lld.features_from_signal
    else:
        from chunkser.features import frontend
        front = frontend.SSLFrontEnd(base_model(kind, tempfile.mkdtemp()), device='cpu')
        run = front.features
    run(x)  # untimed: first-call set-up
    best = None
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        run(x)
        c, w = time.process_time() - c, time.perf_counter() - w
        best = (c, w) if best is None or c < best[0] else best
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({'name': kind, 'cpu_s_per_audio_s': round(best[0] / seconds, 4),
                      'wall_s_per_audio_s': round(best[1] / seconds, 4), 'peak_rss_mb': round(peak),
                      'audio_s': seconds, 'threads': __import__('torch').get_num_threads()}))


def window_change(seconds):
    """Base-sized WavLM on `seconds` of audio: the default windows (frontend.WINDOW_S, OVERLAP_S) against one
    pass over the whole recording, relative to the features' spread; overall and within 1 s of a cut."""
    sys.path.insert(0, ROOT)
    from chunkser.features import frontend
    front = frontend.SSLFrontEnd(base_model('wavlm-base', tempfile.mkdtemp()), device='cpu')
    x = audio(seconds)
    whole = front.features(x, window_s=seconds + 1)
    win = front.features(x)
    spans = frontend.window_spans(len(x), front.hop_samples, round(frontend.WINDOW_S / front.hop),
                                  round(frontend.OVERLAP_S / front.hop))
    d = np.abs(win - whole).mean(axis=1) / whole.std()  # (T,) per frame
    near = np.zeros(len(d), bool)
    for c in spans[1:, 2]:
        near[max(c - 50, 0):c + 50] = True
    print(json.dumps({'name': 'wavlm-base windows', 'audio_s': seconds, 'window_s': frontend.WINDOW_S,
                      'overlap_s': frontend.OVERLAP_S, 'windows': len(spans),
                      'mean_rel_change': round(float(d.mean()), 4), 'near_cut_rel_change': round(float(d[near].mean()), 4),
                      'far_rel_change': round(float(d[~near].mean()), 4)}))


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog='python -m benchmarking.frontends', description=__doc__.split('\n')[0])
    p.add_argument('--seconds', type=float, default=10.0, help='audio per call (default 10)')
    p.add_argument('--repeat', type=int, default=3, help='timed calls, the least counts (default 3)')
    p.add_argument('--window-seconds', type=float, default=40.0, help='recording for the windowing (0: skip)')
    p.add_argument('--one', choices=KINDS + ('window',), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one == 'window':
        return window_change(a.window_seconds)
    if a.one:
        return one(a.one, a.seconds, a.repeat)
    for kind in KINDS + (('window',) if a.window_seconds else ()):
        r = subprocess.run([sys.executable, '-m', 'benchmarking.frontends', '--one', kind, '--seconds', str(a.seconds),
                            '--repeat', str(a.repeat), '--window-seconds', str(a.window_seconds)],
                           cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            print(f'[bench] frontend: name={kind} failed: {r.stderr.strip().splitlines()[-1:]}')
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        tag = 'frontend-window' if kind == 'window' else 'frontend'
        print(f'[bench] {tag}: ' + ' '.join(f'{k}={v}' for k, v in row.items()), flush=True)


if __name__ == '__main__':
    main()
