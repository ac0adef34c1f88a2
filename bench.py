"""Benchmark our pipeline against a reference-style one on a synthetic corpus (CPU, or CUDA).

    python bench.py [--utts 1200] [--batch 128] [--iters 5] [--heads all] [--out .] [--quick] [--rss-scaling]

It writes a synthetic corpus (synthetic.write_corpus: 2.75-11 s utterances, 172-688 frames), its
NormTerm and feature stores, then measures each figure in its own process, so each peak RssAnon
(anonymous memory: the store's file pages do not count, as they are not the process's memory) is
that figure's alone:

  ours       store.FeatureStore (memory-mapped float32) with vectorised chunk gather, the
             vectorised heads of model.py, no-grad batched validation and scoring.
  reference  the costs of the published code, reproduced here in our own words: a torch Dataset
             that scipy.io.loadmat's the whole .mat file for every item and normalises in float64,
             a DataLoader whose collate cuts chunks in Python loops into a float64 array (cast to
             float32 at the model input), a Python loop over utterances in the aggregation head,
             validation with autograd on, and scoring one utterance at a time (autograd on too).

It also runs whole processes, cold start included: our training.py / testing.py against the
reference-style scripts `python bench.py ref-train|ref-test ...` (the published procedure, with
its 12 DataLoader workers, patched only to run on --device) on the same corpus; CPU speed-up
experiments (threads, torch.compile, the LSTM's share, oneDNN); and projections to the seed's
headline run (-iter 5000 -batch 128, validation every 50) and to testing at v1.6 split sizes.
Prints a table and writes <out>/BENCHMARKS.md and <out>/images/benchmark.png.

CPU timings on a shared machine are noisy: compare only figures of one run. To make its comparisons
fair under load, both pipelines of a head run in one process, interleaved step by step, and each time
is the best of its repetitions. On a busy 2-core machine torch's two OpenMP threads can stall for
seconds (a spinning thread waits for one that is descheduled); OMP_WAIT_POLICY=PASSIVE in the
environment avoids that for every process this script starts, at some cost on a quiet machine (the
report measures both).
"""
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import scipy.io
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import ChunkLevelSER, checkpoint_name, use_cpu_streams
from store import default_workers, open_store
from training import forward_backward
from utils import (ATTRIBUTES, DEFAULT_C, DEFAULT_M, DEFAULT_N, LABEL_COLUMN, ArgParser, NormTerms, UserError,
                   cc_coef, evaluation_metrics, iter_batches, read_label_table, run_cli, select_device)

ROOT = os.path.dirname(os.path.abspath(__file__))
HEADS = ('NonAtten', 'GatedVec', 'RnnAttenVec', 'SelfAttenVec')
V16 = {'train': 34000, 'validation': 6000, 'test': 10000}  # MSP-Podcast v1.6 split sizes, roughly
HEADLINE = {'iterations': 5000, 'batch': 128, 'val_every': 50}  # the seed's README run
CHILD_ENV = {}  # added to the environment of every process started here (--threads sets OMP_NUM_THREADS)


# ----------------------------------------------------------------------------------
# memory: peak anonymous RSS, sampled

def rss_anon(pid='self'):
    """RssAnon of a process in bytes (0 where /proc is missing or the process is gone)."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('RssAnon:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss(threading.Thread):
    """Samples RssAnon of `pid` every `interval` s and keeps the maximum (there is no kernel peak for RssAnon)."""

    def __init__(self, pid='self', interval=0.01):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self._done = pid, interval, rss_anon(pid), threading.Event()
        self.start()

    def run(self):
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, rss_anon(self.pid))

    def stop(self):
        self._done.set()
        self.join()
        self.peak = max(self.peak, rss_anon(self.pid))
        return self.peak


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------
# the reference-style path (the published code's costs, rewritten here)

class RefDataset(torch.utils.data.Dataset):
    """Per item: load the whole .mat file, drop the time column, z-normalise in float64 with boolean
    index assignments (NaN -> 0, > 3 -> 3, < -3 -> -3), normalise the label. NormTerm read from its .mat files."""

    def __init__(self, feat_dir, fnames, labels, norm_dir, emo):
        self.feat_dir, self.fnames, self.labels = feat_dir, list(fnames), np.asarray(labels)
        term = lambda name: scipy.io.loadmat(os.path.join(norm_dir, name + '.mat'))['normal_para']
        self.mean, self.std = term('feat_norm_means'), term('feat_norm_stds')  # (1, F) float64
        self.label_mean, self.label_std = term(f'{emo.lower()}_norm_means')[0][0], term(f'{emo.lower()}_norm_stds')[0][0]

    def __len__(self):
        return len(self.fnames)

    def __getitem__(self, i):
        x = scipy.io.loadmat(os.path.join(self.feat_dir, self.fnames[i].replace('.wav', '.mat')))['Audio_data']
        x = x[:, 1:]
        x = (x - self.mean) / self.std  # (T, F) float64
        x[np.isnan(x)] = 0
        x[x > 3] = 3
        x[x < -3] = -3
        return x, (self.labels[i] - self.label_mean) / self.label_std


def ref_chunk_split(batch, m=DEFAULT_M, C=DEFAULT_C, n=DEFAULT_N):
    """The published chunk split: start/end lists built in a loop per utterance, one slice per chunk,
    stacked by np.array (float64 in, float64 out). Only defined for T >= m, like the original."""
    shifts = n * C - 1
    pieces = []
    for x in batch:
        step = int(int(len(x) - m) / shifts)
        starts, ends = [0], [m]
        for k in range(shifts):
            starts.append(starts[0] + (k + 1) * step)
            ends.append(ends[0] + (k + 1) * step)
        for s, e in zip(starts, ends):
            pieces.append(x[s:e])
    return np.array(pieces)  # (B*n*C, m, F)


def ref_collate(batch):
    xs, ys = zip(*batch)
    return torch.from_numpy(ref_chunk_split(xs)), torch.from_numpy(np.array(ys))


class LoopedHeadNet(ChunkLevelSER):
    """Our network's modules (same state dict, same initialisation for a seed) with the published
    forward: the C' chunk vectors of each utterance are aggregated in a Python loop, one utterance at a time."""

    def forward(self, x):  # x: (B*C', m, F)
        out, _ = self.lstm(x)
        h = self.bn(out[:, -1])  # (B*C', H)
        u = torch.stack([self.aggregate(h[s:s + self.chunks]) for s in np.arange(0, len(h), self.chunks)])  # (B, H)
        return self.fc2(F.relu(self.fc1(u))).squeeze(1)

    def aggregate(self, hc):  # hc: (C', H), one utterance -> (H,)
        if self.atten == 'NonAtten':
            return hc.mean(0)
        if self.atten == 'GatedVec':
            return (hc * nn.Sequential.forward(self.attn, hc)).mean(0)  # sigmoid gate (C', 1)
        if self.atten == 'RnnAttenVec':
            a = self.attn
            e, _ = a.attn_rnn(hc.unsqueeze(0))  # (1, C', H)
            h_T = e[:, -1, :].transpose(0, 1)  # (H, 1)
            w = F.softmax(torch.matmul(a.attn_dnn_score(e), h_T), dim=1)  # (1, C', 1)
            context = torch.matmul(e.transpose(1, 2), w).squeeze(2)  # (1, H)
            return torch.tanh(a.attn_dnn_out(torch.cat((context, h_T.transpose(0, 1)), dim=1))).squeeze(0)
        # SelfAttenVec: (1, C', H) in the layer's sequence-first layout: C' sequences of length one
        return nn.TransformerEncoderLayer.forward(self.attn, hc.unsqueeze(0)).squeeze(0).mean(0)


def ref_split_items(label_csv, split, emo):
    """File names and raw labels of a split, read row by row like the published getPaths."""
    import pandas as pd
    table = pd.read_csv(label_csv)
    names, sets, values = (table['FileName'].values.astype(str), table['Split_Set'].values.astype(str),
                           table[LABEL_COLUMN[emo]].values)
    paths, labels = [], []
    for i in range(len(names)):
        if sets[i] == split:
            paths.append(names[i])
            labels.append(values[i])
    return np.array(paths), np.array(labels)


def ref_args(prog, argv, train):
    p = ArgParser(prog=f'bench.py {prog}', description=f'reference-style {"training" if train else "testing"}.py')
    p.add_argument('-iter', '--iterations', type=int, required=True)
    p.add_argument('-batch', '--batch_size', type=int, required=True)
    p.add_argument('-emo', '--emo_attr', choices=ATTRIBUTES, required=True)
    p.add_argument('-atten', '--atten_type', choices=HEADS, required=True)
    p.add_argument('--feat-dir', required=True)
    p.add_argument('--label-csv', required=True)
    p.add_argument('--norm-dir', required=True)
    p.add_argument('--model-dir', default='./Models', help='checkpoints (default ./Models)')
    p.add_argument('--workers', type=int, default=12, help='DataLoader workers (default 12, the published value)')
    p.add_argument('--split', default='Test', help='split to score (default Test)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='(default cpu)')
    return p.parse_args(argv)


def ref_train_main(argv):
    """The published training.py: epochs of a shuffled DataLoader, validation with autograd on every 50
    iterations, save on improvement, stop only between epochs, loss plot at the end."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from tqdm import tqdm
    a = ref_args('ref-train', argv, True)
    device = torch.device(a.device)
    model = LoopedHeadNet(a.atten_type, 130, 130, 2, chunks=11).to(device)
    os.makedirs(a.model_dir, exist_ok=True)
    train = RefDataset(a.feat_dir, *ref_split_items(a.label_csv, 'Train', a.emo_attr), a.norm_dir, a.emo_attr)
    valid = RefDataset(a.feat_dir, *ref_split_items(a.label_csv, 'Validation', a.emo_attr), a.norm_dir, a.emo_attr)
    train_idx, valid_idx = list(range(len(train))), list(range(len(valid)))
    np.random.shuffle(train_idx)
    loader = lambda ds, idx: torch.utils.data.DataLoader(
        ds, batch_size=a.batch_size, sampler=torch.utils.data.SubsetRandomSampler(idx), num_workers=a.workers,
        pin_memory=device.type == 'cuda', collate_fn=ref_collate)
    train_loader, valid_loader = loader(train, train_idx), loader(valid, valid_idx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ckpt = os.path.join(a.model_dir, checkpoint_name(a.iterations, a.batch_size, a.atten_type, a.emo_attr))
    train_losses, valid_losses, best, it = [], [], 0.0, 0
    while it < a.iterations:
        for x, y in train_loader:
            model.train()
            it += 1
            x, y = x.to(device).float(), y.to(device).float()
            loss = cc_coef(model(x), y)
            train_losses.append(loss.data.cpu().numpy())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if it % 50 == 0:
                model.eval()
                losses = []
                for vx, vy in tqdm(valid_loader, file=sys.stdout):  # autograd on, as published
                    losses.append(cc_coef(model(vx.to(device).float()), vy.to(device).float()).data.cpu().numpy())
                val = np.mean(losses)
                valid_losses.append(val)
                print(f'Iteration: {it} ,Training-loss: {train_losses[-1]} ,Validation-loss: {val}')
                if it == 50 or val < best:
                    best = val
                    torch.save(model.state_dict(), ckpt)
    n = len(valid_losses) * 50
    plt.plot(np.mean(np.array(train_losses[:n]).reshape(-1, 50), axis=1).tolist() if n else [])
    plt.plot(valid_losses)
    plt.savefig(ckpt[:-len('.pth.tar')] + '.png')
    return 0


def ref_test_main(argv):
    """The published testing.py: per test utterance load the .mat, normalise in float64, split, score
    (autograd on, timing only the model call), then the CCC and the mean time per utterance."""
    from tqdm import tqdm
    a = ref_args('ref-test', argv, False)
    device = torch.device(a.device)
    term = lambda name: scipy.io.loadmat(os.path.join(a.norm_dir, name + '.mat'))['normal_para']
    mean, std = term('feat_norm_means'), term('feat_norm_stds')
    label_mean, label_std = term(f'{a.emo_attr.lower()}_norm_means')[0][0], term(f'{a.emo_attr.lower()}_norm_stds')[0][0]
    model = LoopedHeadNet(a.atten_type, 130, 130, 2, chunks=11)
    model.load_state_dict(torch.load(os.path.join(a.model_dir, checkpoint_name(
        a.iterations, a.batch_size, a.atten_type, a.emo_attr)), map_location='cpu'))
    model.to(device).eval()
    paths, labels = ref_split_items(a.label_csv, a.split, a.emo_attr)
    preds, costs = [], []
    for i in tqdm(range(len(paths))):
        x = scipy.io.loadmat(os.path.join(a.feat_dir, paths[i].replace('.wav', '.mat')))['Audio_data'][:, 1:]
        x = (x - mean) / std
        x[np.isnan(x)] = 0
        x[x > 3] = 3
        x[x < -3] = -3
        chunks = torch.from_numpy(ref_chunk_split([x])).to(device).float()
        t0 = time.time()
        p = model(chunks)
        sync(device)
        costs.append((time.time() - t0) * 1000)
        preds.append(p.data.cpu().numpy())
    preds = np.array(preds).reshape(-1) * label_std + label_mean
    print('ChunkSeq2One')
    print(f'Iterations: {a.iterations}')
    print(f'Batch_Size: {a.batch_size}')
    print('Model_Type: LSTM')
    print(f'Attention_Type: {a.atten_type}')
    print(f'{a.emo_attr}-CCC: {evaluation_metrics(labels, preds)!r}')
    print(f'Avg. Time Cost(ms/uttr): {float(np.mean(costs))!r}')
    return 0


# ----------------------------------------------------------------------------------
# FLOPs: the matrix products of one step, counted from the shapes (multiply-add = 2 FLOPs)

def step_flops(head, B, m=DEFAULT_M, chunks=DEFAULT_C * DEFAULT_N, feat=130, hidden=130, train=True):
    """FLOPs of a forward pass (train=False) or forward + backward (train=True, ~3x forward) on B utterances."""
    N, H = B * chunks, hidden
    f = N * m * 2 * 4 * H * ((feat + H) + (H + H))  # LSTM: two layers, 4 gates, input + recurrent products
    f += B * (2 * H * H + 2 * H)  # fc1, fc2
    f += {'NonAtten': 0, 'GatedVec': N * 2 * H,
          'RnnAttenVec': N * (2 * H * 2 * H + 2 * H * H + 2 * H) + B * 2 * 2 * H * H,
          'SelfAttenVec': N * 2 * H * (3 * H + H + 2 * 2048)}[head]  # in_proj (all of q, k, v), out_proj, FFN
    return f * (3 if train else 1)


def matmul_peak(n=2048, reps=10, device='cpu'):
    """Best fp32 GFLOPS of an n x n matrix product with the current thread count, per library: on the CPU torch
    has two, its BLAS (torch.mm, nn.Linear: MKL in the x86 wheels, which takes its AVX2 path on the AMD CPUs
    of this project's machines) and oneDNN (nn.LSTM's kernels; AVX-512 where the CPU has it), which differ
    up to 2x there; on CUDA torch.mm with TF32 off.
    Returns {library: GFLOPS, 'gflops': the highest}."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    runs = {}
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False

        def cuda_mm():
            torch.mm(a, b)
            torch.cuda.synchronize()
        runs['cublas'] = cuda_mm
    else:
        runs['blas'] = lambda: torch.mm(a, b)
        try:  # oneDNN's own product (an inner product primitive on oneDNN tensors)
            am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
            torch.ops.aten.mkldnn_linear(am, bm)
            runs['onednn'] = lambda: torch.ops.aten.mkldnn_linear(am, bm)
        except (RuntimeError, AttributeError):  # a torch built without oneDNN
            pass
    out = {}
    for name, fn in runs.items():
        fn()
        out[name] = 2 * n ** 3 / min(timed(fn) for _ in range(reps)) / 1e9
    out['gflops'] = max(out.values())
    return out


LIBS = {'blas': f'torch.mm ({"MKL" if "BLAS_INFO=mkl" in torch.__config__.show() else "BLAS"})', 'onednn': 'oneDNN',
        'cublas': 'cuBLAS (torch.mm)'}


def merge_peaks(*peaks):
    """The highest of each library's figure over repeated peak measurements (the least disturbed)."""
    return {k: max(p[k] for p in peaks if k in p) for k in set().union(*peaks)}


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------
# measurement tasks: each runs in its own process (`bench.py task NAME JSON`), or inline with --inline

class Corpus:
    """The bench corpus as both paths see it: all its utterances, in label-table order."""

    def __init__(self, c):
        self.c = c
        df = read_label_table(c['label_csv'])
        self.fnames = [str(f) for f in df['FileName']]
        self.labels = df[LABEL_COLUMN['Act']].to_numpy(np.float64)
        self.norm = NormTerms.load(c['norm_dir'])

    def store(self):
        return open_store(self.c['store_dir'], self.c['feat_dir'], self.fnames, self.norm, progress=False)

    def ref_dataset(self):
        return RefDataset(self.c['feat_dir'], self.fnames, self.labels, self.c['norm_dir'], 'Act')


def task_data(c):
    """Utterances per second of the data pipeline alone: batches of c['batch'] random utterances -> float32
    chunk tensor + targets. c['pipeline'] 'both' alternates the two pipelines batch by batch (timing, both
    under the same load); 'ref' or 'ours' runs one alone (its own peak RssAnon)."""
    corpus, B = Corpus(c), c['batch']
    rng = np.random.default_rng(0)
    pipes = ('ref', 'ours') if c['pipeline'] == 'both' else (c['pipeline'],)
    nb = c['data_batches'] if c['pipeline'] == 'both' else 2
    fetch = {}
    if 'ours' in pipes:
        s = corpus.store()
        y_all = corpus.norm.norm_label(corpus.labels, 'Act').astype(np.float32)
        buf = np.empty((B * DEFAULT_C, DEFAULT_M, s.feat_dim), np.float32)  # reused every batch

        def ours():
            idx = rng.choice(len(s), B, replace=False)
            return torch.from_numpy(s.gather(idx, DEFAULT_M, DEFAULT_C, DEFAULT_N, out=buf)), torch.from_numpy(y_all[idx])
        fetch['ours'] = ours
    if 'ref' in pipes:
        ds = corpus.ref_dataset()
        loader = torch.utils.data.DataLoader(ds, batch_size=B, sampler=torch.utils.data.RandomSampler(ds),
                                             num_workers=c['ref_workers'], collate_fn=ref_collate)
        state = {'it': iter(loader)}

        def ref():
            try:
                x, y = next(state['it'])
            except StopIteration:
                state['it'] = iter(loader)
                x, y = next(state['it'])
            return x.float(), y.float()  # the published model input cast
        fetch['ref'] = ref
    times = {p: [] for p in pipes}
    for i in range(nb + 1):  # the first round warms up
        for p in pipes:
            t = timed(fetch[p])
            if i > 0:
                times[p].append(t)
    out = {p: {'utt_per_s': B / min(times[p]), 'batch_ms': 1000 * min(times[p])} for p in pipes}
    return out if c['pipeline'] == 'both' else out[c['pipeline']]


class Pipeline:
    """One head on one pipeline, as steps that can be timed one by one. Both pipelines start from the same
    seeded weights, so their scores can be compared.
      ours       store gather, vectorised head, no-grad validation, scoring in batches of 64;
      reference  Dataset + collate (float64, cast at the model), looped head, validation with autograd on,
                 scoring one utterance at a time with autograd on."""

    def __init__(self, c, corpus, pipeline):
        self.c, self.corpus, self.ours, self.B = c, corpus, pipeline == 'ours', c['batch']
        self.device = torch.device(c['device'])
        torch.manual_seed(0)
        self.model = (ChunkLevelSER if self.ours else LoopedHeadNet)(c['head'], 130, 130, 2, chunks=DEFAULT_C).to(self.device)
        if self.ours:  # our scripts' default: the LSTM as parallel streams on CPU (one per torch thread)
            use_cpu_streams(self.model, self.device, c.get('cpu_streams', 0))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.y = corpus.norm.norm_label(corpus.labels, 'Act').astype(np.float32)
        if self.ours:
            self.store = corpus.store()
        else:
            self.ds = corpus.ref_dataset()
        self.train_it = None

    def batch(self, idx):
        """ours: (b*C', m, F) float32 gathered from the store (pinned on CUDA), (b,) targets, on the device."""
        buf = torch.empty((len(idx) * DEFAULT_C, DEFAULT_M, self.store.feat_dim), pin_memory=self.device.type == 'cuda')
        self.store.gather(idx, DEFAULT_M, DEFAULT_C, DEFAULT_N, out=buf.numpy())
        return buf.to(self.device, non_blocking=True), torch.from_numpy(self.y[idx]).to(self.device, non_blocking=True)

    def loader(self, idx):
        return torch.utils.data.DataLoader(self.ds, batch_size=self.B, sampler=torch.utils.data.SubsetRandomSampler(idx),
                                           num_workers=self.c['ref_workers'], collate_fn=ref_collate)

    def score(self, part):
        """Scores utterances `part`: (wall s, model s, predictions)."""
        self.model.eval()
        model_s, preds, t0 = 0.0, [], time.perf_counter()
        if self.ours:
            with torch.no_grad():
                for idx in (part[i:i + 64] for i in range(0, len(part), 64)):
                    x, _ = self.batch(idx)
                    t1 = time.perf_counter()
                    p = self.model(x)
                    sync(self.device)
                    model_s += time.perf_counter() - t1
                    preds.append(p.cpu().numpy())
        else:
            for i in part:
                x, _ = self.ds[i]
                x = torch.from_numpy(ref_chunk_split([x])).to(self.device).float()
                t1 = time.perf_counter()
                p = self.model(x)
                sync(self.device)
                model_s += time.perf_counter() - t1
                preds.append(p.data.cpu().numpy().reshape(-1))
        return time.perf_counter() - t0, model_s, np.concatenate(preds)

    def validate(self, idx):
        """One validation batch (eval mode; ours no-grad, the reference with autograd on): seconds."""
        self.model.eval()
        t0 = time.perf_counter()
        if self.ours:
            with torch.no_grad():
                x, y = self.batch(idx)
                cc_coef(self.model(x), y).item()
        else:
            x, y = next(iter(self.loader(idx)))
            cc_coef(self.model(x.to(self.device).float()), y.to(self.device).float()).data.cpu().numpy()
        return time.perf_counter() - t0

    def train_step(self, idx):
        """One training iteration on a batch of B utterances: (data s, model step s)."""
        self.model.train()
        t0 = time.perf_counter()
        if self.ours:
            x, y = self.batch(idx)
        else:
            if self.train_it is None:  # the published loop: one DataLoader over the whole set, random order
                self.train_it = iter(self.loader(np.arange(len(self.ds))))
            try:
                x, y = next(self.train_it)
            except StopIteration:
                self.train_it = iter(self.loader(np.arange(len(self.ds))))
                x, y = next(self.train_it)
            x, y = x.to(self.device).float(), y.to(self.device).float()
        t1 = time.perf_counter()
        if self.ours:  # training.py's step
            self.opt.zero_grad(set_to_none=True)
            loss = forward_backward(self.model, x, y)
        else:
            loss = cc_coef(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
        self.opt.step()
        loss.item()
        sync(self.device)
        return t1 - t0, time.perf_counter() - t1


def task_head(c):
    """One head, both pipelines in this process, interleaved step by step (reference, ours, reference, ...)
    so both see the same load on a shared machine; each figure is the best of its repetitions.
    Scoring first (fresh seeded weights: predictions comparable), then validation, then training."""
    corpus = Corpus(c)
    N, B = len(corpus.fnames), c['batch']
    pipes = {p: Pipeline(dict(c), corpus, p) for p in ('ref', 'ours')}
    out = {p: {} for p in pipes}
    rng = np.random.default_rng(0)

    rounds = {p: [] for p in pipes}
    preds = {p: [] for p in pipes}
    for part in np.array_split(np.arange(min(c['test_utts'], N)), 3):
        for p, pipe in pipes.items():
            wall, model_s, pr = pipe.score(part)
            rounds[p].append((wall / len(part), model_s / len(part)))
            preds[p].append(pr)
    val_idx = rng.permutation(N)[:c['val_utts']]
    val = {p: [] for p in pipes}
    for idx in iter_batches(val_idx, B):
        for p, pipe in pipes.items():
            val[p].append(pipe.validate(idx) / len(idx))
    order = rng.permutation(N)
    steps = {p: [] for p in pipes}
    for i in range(c['iters'] + 1):  # the first is a warm-up
        idx = order[(i * B) % N:(i * B) % N + B]
        for p, pipe in pipes.items():
            t = pipe.train_step(idx)
            if i > 0:
                steps[p].append(t)
    for p in pipes:
        o = out[p]
        o['score_ms'], o['score_model_ms'] = (1000 * min(r[k] for r in rounds[p]) for k in (0, 1))
        o['val_utts'] = len(val_idx)
        o['val_s'] = min(val[p]) * len(val_idx)
        o['data_s'], o['step_s'] = min(t[0] for t in steps[p]), min(t[1] for t in steps[p])
        o['it_s'] = o['data_s'] + o['step_s']
        o['gflops'] = step_flops(c['head'], B) / o['step_s'] / 1e9
    out['max_pred_diff'] = float(np.max(np.abs(np.concatenate(preds['ref']) - np.concatenate(preds['ours']))))
    return out


def task_rss(c):
    """Peak RssAnon of one pipeline alone: two training iterations, a validation batch, a few scores."""
    corpus = Corpus(c)
    pipe = Pipeline(c, corpus, c['pipeline'])
    idx = np.arange(min(c['batch'], len(corpus.fnames)))
    pipe.score(idx[:16])
    pipe.validate(idx)
    for _ in range(2):
        pipe.train_step(idx)
    return {}


def best_of(results):
    """Merge repeated task results: the fastest of each time, the largest peak RssAnon."""
    out = dict(results[0])
    for k, v in out.items():
        if isinstance(v, (int, float)) and k != 'val_utts':
            out[k] = (max if k in ('peak_rss', 'gflops') else min)(r[k] for r in results)
    return out


def task_build(c):
    """Build a store of the whole corpus from scratch: utterances per second of the one-off pass."""
    corpus = Corpus(c)
    d = tempfile.mkdtemp(dir=os.path.dirname(c['store_dir']))
    try:
        t0 = time.perf_counter()
        s = open_store(d, c['feat_dir'], corpus.fnames, corpus.norm, workers=c['build_workers'], progress=False)
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        open_store(d, c['feat_dir'], corpus.fnames, corpus.norm, progress=False)  # the check of a current store
        check = time.perf_counter() - t0
        size = os.path.getsize(os.path.join(s.path, 'features.f32'))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {'build_s': seconds, 'utt_per_s': len(corpus.fnames) / seconds, 'check_ms': 1000 * check,
            'bytes': size, 'utts': len(corpus.fnames), 'workers': c['build_workers']}


def task_peak(c):
    return dict(matmul_peak(c['peak_size'], device=c['device']), threads=torch.get_num_threads())


def task_cpu(c):
    """Our SelfAttenVec training step (one LSTM call) under thread counts and torch.compile, and with the LSTM
    as CPU streams; the LSTM forward + backward alone, and with oneDNN off. The variants run in turn, round after round, so all
    see the same load; each keeps its best round."""
    corpus, B = Corpus(c), c['batch']
    s = corpus.store()
    idx = np.random.default_rng(0).choice(len(s), B, replace=False)
    x = torch.from_numpy(s.gather(idx, DEFAULT_M, DEFAULT_C, DEFAULT_N))  # (B*C', m, F)
    y = torch.from_numpy(corpus.norm.norm_label(corpus.labels[idx], 'Act').astype(np.float32))
    torch.manual_seed(0)
    model = ChunkLevelSER('SelfAttenVec', 130, 130, 2, chunks=DEFAULT_C).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    default_threads = torch.get_num_threads()

    def step(net):
        loss = cc_coef(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def lstm_fwd_bwd():
        model.zero_grad(set_to_none=True)
        model.lstm(x)[0][:, -1].sum().backward()

    def lstm_fwd():
        with torch.no_grad():
            model.lstm(x)

    def lstm_native():
        with torch.backends.mkldnn.flags(enabled=False):
            lstm_fwd_bwd()

    k_streams = max(2, default_threads)  # the streams of model.CpuStreams (2 when torch runs one thread)

    def streams_step():  # training.py's step with the LSTM as k single-threaded streams
        use_cpu_streams(model, 'cpu', k_streams)
        opt.zero_grad(set_to_none=True)
        forward_backward(model, x, y)
        opt.step()
        model.streams = None

    variants = {f'threads_{t}': (t, lambda: step(model)) for t in sorted({1, 2, default_threads, os.cpu_count() or 1})}
    variants.update({'lstm': (default_threads, lstm_fwd_bwd), 'lstm_fwd': (default_threads, lstm_fwd),
                     'lstm_nomkldnn': (default_threads, lstm_native), 'streams_step': (default_threads, streams_step)})
    out = {}
    if c['compile']:
        try:
            import importlib
            importlib.import_module('torch._dynamo').reset()
            compiled = torch.compile(model)
            out['compile_first_s'] = timed(lambda: step(compiled))  # compiles forward and backward
            variants['compile_step'] = (default_threads, lambda: step(compiled))
        except Exception as e:  # report, do not fail the benchmark
            out['compile_error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
    times = {k: [] for k in variants}
    for r in range(c['cpu_reps']):
        for k, (threads, fn) in variants.items():
            torch.set_num_threads(threads)
            fn()  # a warm-up after each thread-count change: oneDNN rebuilds its kernels for the new count
            times[k].append(timed(fn))
    torch.set_num_threads(default_threads)
    best = {k: min(v) for k, v in times.items()}
    out['threads'] = {int(k.split('_')[1]): v for k, v in best.items() if k.startswith('threads_')}
    out['default_threads'] = default_threads
    out['step_s'] = out['threads'][default_threads]
    out['k_streams'] = k_streams
    for k in ('lstm', 'lstm_fwd', 'lstm_nomkldnn', 'streams_step', 'compile_step'):
        if k in best:
            out[k + '_s'] = best[k]
    out['peak'] = matmul_peak(c['peak_size'])
    return out


def task_step(c):
    """Our SelfAttenVec training step at batch B and at batch 4, every call timed: best and worst. Run under
    different OMP_WAIT_POLICY settings (which must be set before the OpenMP runtime starts, i.e. per process)."""
    corpus = Corpus(c)
    s = corpus.store()
    torch.manual_seed(0)
    model = ChunkLevelSER('SelfAttenVec', 130, 130, 2, chunks=DEFAULT_C).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    out = {}
    for name, B in (('big', c['batch']), ('small', 4)):
        idx = np.random.default_rng(0).choice(len(s), B, replace=False)
        x = torch.from_numpy(s.gather(idx, DEFAULT_M, DEFAULT_C, DEFAULT_N))
        y = torch.from_numpy(corpus.norm.norm_label(corpus.labels[idx], 'Act').astype(np.float32))

        def step():
            loss = cc_coef(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ts = [timed(step) for _ in range(c['cpu_reps'] + 1 if name == 'big' else 20)]
        out[name] = {'best_s': min(ts), 'worst_s': max(ts), 'median_s': float(np.median(ts))}
    return out


TASKS = {'data': task_data, 'head': task_head, 'rss': task_rss, 'step': task_step, 'build': task_build, 'peak': task_peak, 'cpu': task_cpu}


def task_main(argv):
    """`bench.py task NAME JSON`: run one task, print its result (with the process's peak RssAnon) as JSON."""
    name, c = argv[0], json.loads(argv[1])
    if c.get('threads'):
        torch.set_num_threads(c['threads'])
    rss = PeakRss()
    t0 = time.perf_counter()
    out = TASKS[name](c)
    out['peak_rss'], out['task_s'] = rss.stop(), time.perf_counter() - t0
    print('RESULT ' + json.dumps(out))
    return 0


def run_task(name, c, inline=False, env=None):
    if inline:  # tests: no new process, so the RSS figure is the test process's
        threads = torch.get_num_threads()
        if c.get('threads'):
            torch.set_num_threads(c['threads'])
        rss = PeakRss()
        try:
            out = TASKS[name](c)
        finally:
            torch.set_num_threads(threads)
        out['peak_rss'] = rss.stop()
        return out
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'bench.py'), 'task', name, json.dumps(c)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, **CHILD_ENV, **(env or {})})
    line = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode != 0 or not line:
        raise RuntimeError(f'bench task {name} failed (exit {r.returncode}):\n{r.stderr[-3000:]}')
    return json.loads(line[-1][len('RESULT '):])


# ----------------------------------------------------------------------------------
# whole processes: our scripts and the reference-style ones, timed and RSS-sampled from outside

def run_process(cmd, cwd):
    """Run a command; wall seconds, the peak RssAnon of its main process, its output."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, TQDM_DISABLE='1', **CHILD_ENV))
    rss = PeakRss(p.pid, interval=0.02)
    text, _ = p.communicate()
    wall = time.perf_counter() - t0
    rss._done.set()
    rss.join()
    if p.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {p.returncode}):\n{text[-3000:]}')
    return {'wall_s': wall, 'peak_rss': rss.peak, 'output': text}


def script_knows(script, flag):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), '--help'], capture_output=True, text=True, cwd=ROOT)
    return flag in r.stdout


def process_floor(repeat=2):
    """Seconds a bare `python -c "import torch, scipy.io, pandas"` takes: the start-up every script pays."""
    return min(run_process([sys.executable, '-c', 'import torch, scipy.io, pandas'], ROOT)['wall_s'] for _ in range(repeat))


def acceptance(c, work, iters, batch, repeat=2):
    """Our training.py/testing.py against the reference-style scripts, whole processes from a cold start
    (where our scripts take --store, the store is deleted first and built inside the timed run). Ours and
    the reference alternate `repeat` times; each keeps its fastest run. Both testing runs score our
    checkpoint, so their CCCs must agree."""
    py = sys.executable
    corpus = ['--feat-dir', c['feat_dir'], '--label-csv', c['label_csv'], '--norm-dir', c['norm_dir']]
    seed = ['-iter', str(iters), '-batch', str(batch), '-emo', 'Act', '-atten', 'SelfAttenVec']
    store = os.path.join(work, 'accept_store')
    ours_dir, ref_dir = os.path.join(work, 'accept_ours'), os.path.join(work, 'accept_ref')
    for d in (ours_dir, ref_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    extra_train = ['--store', store] if script_knows('training.py', '--store') else []
    extra_test = ['--store', store] if script_knows('testing.py', '--store') else []
    cmds = {
        'ours_train': ([py, os.path.join(ROOT, 'training.py')] + seed + corpus +
                       ['--out-dir', ours_dir, '--device', c['device'], '--seed', '0'] + extra_train, ours_dir),
        'ref_train': ([py, os.path.join(ROOT, 'bench.py'), 'ref-train'] + seed + corpus +
                      ['--model-dir', ref_dir, '--workers', str(c['accept_workers']), '--device', c['device']], ref_dir),
        'ours_test': ([py, os.path.join(ROOT, 'testing.py')] + seed + corpus +
                      ['--model-dir', ours_dir, '--device', c['device']] + extra_test, ours_dir),
        'ref_test': ([py, os.path.join(ROOT, 'bench.py'), 'ref-test'] + seed + corpus +
                     ['--model-dir', ours_dir, '--device', c['device']], ref_dir),  # our checkpoint: same weights
    }
    runs = {k: [] for k in cmds}
    for _ in range(repeat):
        for k, (cmd, cwd) in cmds.items():
            if k.startswith('ours'):
                shutil.rmtree(store, ignore_errors=True)  # cold: the store is built inside the run
            runs[k].append(run_process(cmd, cwd))
    res = {'iters': iters, 'batch': batch, 'repeat': repeat, 'floor_s': process_floor(),
           'store_used': {'training': bool(extra_train), 'testing': bool(extra_test)}}
    if extra_test:  # and once more with the Test store in place, as every later testing run finds it
        runs['ours_test_warm'] = [run_process(*cmds['ours_test'])]
    for k, rs in runs.items():
        best = min(rs, key=lambda r: r['wall_s'])
        res[k] = {'wall_s': best['wall_s'], 'walls': [r['wall_s'] for r in rs], 'peak_rss': max(r['peak_rss'] for r in rs)}
        if k.endswith('test') or k.endswith('warm'):
            res[k]['ccc'] = float(re.search(r'Act-CCC: (\S+)', best['output']).group(1))
            res[k]['model_ms'] = float(re.search(r'Avg\. Time Cost\(ms/uttr\): (\S+)', best['output']).group(1))
    return res


def rss_scaling(c, work, sizes, iters, batch):
    """Peak RssAnon of our training.py on corpora of different sizes (same lengths distribution)."""
    from norm_para import compute_terms
    from synthetic import write_corpus
    out = {}
    for n in sizes:
        d = os.path.join(work, f'rss_{n}')
        feat_dir, label_csv = write_corpus(d, size=n, seed=1)
        norm_dir = os.path.join(d, 'NormTerm')
        compute_terms(read_label_table(label_csv), feat_dir, label_csv).save(norm_dir)
        extra = ['--store', os.path.join(d, 'store')] if script_knows('training.py', '--store') else []
        r = run_process([sys.executable, os.path.join(ROOT, 'training.py'), '-iter', str(iters), '-batch', str(batch),
                         '-emo', 'Act', '-atten', 'SelfAttenVec', '--feat-dir', feat_dir, '--label-csv', label_csv,
                         '--norm-dir', norm_dir, '--out-dir', os.path.join(d, 'Models'), '--device', c['device'],
                         '--seed', '0'] + extra, d)
        out[n] = {'peak_rss': r['peak_rss'], 'wall_s': r['wall_s'], 'store': bool(extra)}
        shutil.rmtree(d, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------
# projections to MSP-Podcast v1.6 sizes

def project(head_res, build=None):
    """Headline run (-iter 5000 -batch 128, validation every 50 iterations on 6k utterances) and testing
    of 10k utterances, from per-iteration, per-validation-utterance and per-scored-utterance figures.
    `build`: store build rate, charged once for the Train + Validation (training) and Test (testing) stores."""
    it_s = head_res['it_s']
    val_per_utt = head_res['val_s'] / head_res['val_utts']
    n_val = HEADLINE['iterations'] // HEADLINE['val_every']
    train = HEADLINE['iterations'] * it_s + n_val * V16['validation'] * val_per_utt
    test = V16['test'] * head_res['score_ms'] / 1000
    if build:
        train += (V16['train'] + V16['validation']) / build['utt_per_s']
        test += V16['test'] / build['utt_per_s']
    return {'train_h': train / 3600, 'test_min': test / 60}


# ----------------------------------------------------------------------------------
# report

def mib(b):
    return b / 2**20


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
    except OSError:
        pass
    mem = ''
    try:
        with open('/proc/meminfo') as f:
            mem = f'{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM'
    except OSError:
        pass
    return f'{cpu}, {os.cpu_count()} cores, {mem}'.rstrip(', ')


def ratio(a, b):
    return f'{a / b:.2f}x' if b else 'n/a'


def summary(R):
    """The issue's CPU targets against this run's figures."""
    rows = []
    d = R['data']
    rows.append(('data pipeline', '>= 20x', ratio(d['ours']['utt_per_s'], d['ref']['utt_per_s'])))
    h = R['heads'].get('SelfAttenVec')
    if h:
        rows.append(('training per iteration, SelfAttenVec, components (data + step)', '>= 1.3x',
                     ratio(h['ref']['it_s'], h['ours']['it_s'])))
        rows.append(('projected headline run, SelfAttenVec', '>= 1.5x', ratio(h['ref']['proj']['train_h'], h['ours']['proj']['train_h'])))
    x = R.get('accept')
    if x:
        rows.append((f'training.py -iter {x["iters"]}, whole process', '>= 1.3x', ratio(x['ref_train']['wall_s'], x['ours_train']['wall_s'])))
        rows.append(('testing.py, whole process', '>= 2.5x, same CCC to 1e-6',
                     f'{ratio(x["ref_test"]["wall_s"], x["ours_test"]["wall_s"])}, CCC difference '
                     f'{abs(x["ref_test"]["ccc"] - x["ours_test"]["ccc"]):.1e}'))
    sc = R.get('rss_scaling')
    if sc:
        rows.append(('peak RssAnon of training, ' + ' vs '.join(str(n) for n in sc) + ' utterances', 'independent of size',
                     ' vs '.join(f'{mib(v["peak_rss"]):.0f} MiB' for v in sc.values())))
    return ['## Targets of issue 5 (CPU)', '', '| what | target | this run |', '|---|---|---|'] + \
        [f'| {a} | {b} | {c} |' for a, b, c in rows] + ['']


def baseline_check(R):
    """The reference-style figures beside the ones issue 5 measured with the published code on this machine type."""
    rows = [('data pipeline, utterances/s', '670-860', f'{R["data"]["ref"]["utt_per_s"]:.0f}')]
    h = R['heads'].get('SelfAttenVec')
    x = R.get('accept')
    if x:
        rows.append(('training.py SelfAttenVec, s/iteration (whole process / iterations)', '2.2-4.5',
                     f'{x["ref_train"]["wall_s"] / x["iters"]:.2f}'))
        rows.append(('testing.py, ms/utterance (whole process / utterances), model share', '12.7-17.5, about half',
                     f'{1000 * x["ref_test"]["wall_s"] / R["corpus"]["test"]:.1f}, '
                     f'{100 * x["ref_test"]["model_ms"] / (1000 * x["ref_test"]["wall_s"] / R["corpus"]["test"]):.0f} %'))
    if h:
        rows.append(('SelfAttenVec step: share of the per-utterance head loop (reference step - our step)', '10-15 %',
                     f'{100 * (h["ref"]["step_s"] - h["ours"]["step_s"]) / h["ref"]["step_s"]:.0f} %'))
        if R.get('cpu'):  # (LSTM / our step) x (our step / reference step): two ratios, each from one process
            share = R['cpu']['lstm_s'] / R['cpu']['step_s'] * h['ours']['step_s'] / h['ref']['step_s']
            rows.append(('SelfAttenVec reference step: share of the fused LSTM forward + backward', 'about 70 %',
                         f'{100 * share:.0f} %'))
        rows.append(('scoring: batched model / one-at-a-time model', 'about 1.5x',
                     ratio(h['ref']['score_model_ms'], h['ours']['score_model_ms'])))
    return ['## Reference-style baseline against the figures of issue 5', '',
            'Issue 5 measured the published code on this 2-core machine type, whose speed varies up to 2x from day '
            'to day; a strawman baseline would come out slower than these, a faithful one near them or faster on a fast day.', '',
            '| figure | issue 5 | this run |', '|---|---|---|'] + [f'| {a} | {b} | {c} |' for a, b, c in rows] + ['']


def make_report(R):
    """Markdown text of the whole result dict R."""
    a = R['args']
    L = ['# Benchmarks', '',
         f'- date: {R["date"]}', f'- machine: {R["machine"]}', f'- device: {a["device"]}, torch {torch.__version__}, '
         f'numpy {np.__version__}, {a["threads"] or torch.get_num_threads()} torch threads'
         f'{" (--threads: OMP_NUM_THREADS in every process, the whole-process runs included)" if a["threads"] else ""}, '
         f'OMP_WAIT_POLICY {os.environ.get("OMP_WAIT_POLICY", "not set")}, python {platform.python_version()}',
         f'- command: `{R["command"]}`',
         f'- load average before / after: {R["load_before"]} / {R["load_after"]} (other processes share this machine: '
         'its timings are noisy, compare only figures of one run)',
         f'- corpus: {R["corpus"]["utts"]} synthetic utterances of {a["min_frames"]}-{a["max_frames"]} frames '
         f'(Train {R["corpus"]["train"]} / Validation {R["corpus"]["validation"]} / Test {R["corpus"]["test"]}); '
         f'batch {a["batch"]}, {a["iters"]} timed training iterations per head after one warm-up, validation of '
         f'{a["val_utts"]} and scoring of {a["test_utts"]} utterances (3 rounds); reference-style DataLoader with '
         f'{a["ref_workers"]} workers in the component figures. Both pipelines of a head run in one process, '
         f'interleaved step by step (reference, ours, reference, ...) so that both see the same load, and each time is '
         f'the best of its repetitions (iterations, batches, rounds; {a["repeat"]} process(es) per head): the least '
         f'disturbed by the other processes on this machine. Peak RssAnon per head: each pipeline alone in its own '
         f'process (two training iterations, a validation batch, 16 scores).', '']
    peak = R.get('peak', {}).get('gflops')
    L += summary(R) + baseline_check(R)
    L += ['## Training, validation, scoring per head', '',
          '| head | pipeline | s/iter | data s | model step s | GFLOPS (% of matmul peak) | validation s | '
          'scoring ms/utt (model) | peak RssAnon MiB | projected headline run h | projected v1.6 testing min |',
          '|---|---|---|---|---|---|---|---|---|---|---|']
    for head, hr in R['heads'].items():
        for pipe in ('ref', 'ours'):
            h = hr[pipe]
            pct = f' ({100 * h["gflops"] / peak:.0f} %)' if peak else ''
            L.append(f'| {head} | {"reference-style" if pipe == "ref" else "ours"} | {h["it_s"]:.3f} | {h["data_s"]:.3f} | '
                     f'{h["step_s"]:.3f} | {h["gflops"]:.1f}{pct} | {h["val_s"]:.2f} | {h["score_ms"]:.2f} '
                     f'({h["score_model_ms"]:.2f}) | {mib(h["peak_rss"]):.0f} | {h["proj"]["train_h"]:.2f} | '
                     f'{h["proj"]["test_min"]:.1f} |')
        r, o = hr['ref'], hr['ours']
        L.append(f'| {head} | **speed-up** | **{ratio(r["it_s"], o["it_s"])}** | {ratio(r["data_s"], o["data_s"])} | '
                 f'{ratio(r["step_s"], o["step_s"])} | | {ratio(r["val_s"], o["val_s"])} | '
                 f'**{ratio(r["score_ms"], o["score_ms"])}** ({ratio(r["score_model_ms"], o["score_model_ms"])}) | | '
                 f'**{ratio(r["proj"]["train_h"], o["proj"]["train_h"])}** | {ratio(r["proj"]["test_min"], o["proj"]["test_min"])} |')
    L += ['', 'Same function: with the same seeded initial weights, both pipelines\' predictions on the scored '
          'utterances agree to ' + ', '.join(f'{h} {v["max_pred_diff"]:.1e}' for h, v in R['heads'].items()) +
          ' (max abs difference).', '']
    d = R['data']
    L += ['## Data pipeline and store', '',
          'Both pipelines alternate batch by batch in one process, best batch of each; peak RssAnon: each alone.', '',
          '| path | utterances/s | ms per batch | peak RssAnon MiB |', '|---|---|---|---|',
          f'| reference-style (Dataset + collate, {a["ref_workers"]} workers, float64 -> float32) | '
          f'{d["ref"]["utt_per_s"]:.0f} | {d["ref"]["batch_ms"]:.1f} | {mib(d["ref"]["peak_rss"]):.0f} |',
          f'| ours (store gather into a reused float32 buffer) | {d["ours"]["utt_per_s"]:.0f} | '
          f'{d["ours"]["batch_ms"]:.1f} | {mib(d["ours"]["peak_rss"]):.0f} |',
          f'| **speed-up** | **{ratio(d["ours"]["utt_per_s"], d["ref"]["utt_per_s"])}** | | |', '']
    b = R['build']
    L += [f'Store build (one pass, {b["workers"]} processes): {b["utts"]} utterances in {b["build_s"]:.1f} s '
          f'({b["utt_per_s"]:.0f} utt/s, {mib(b["bytes"]):.0f} MiB); the check of a current store took {b["check_ms"]:.0f} ms. '
          f'At v1.6 sizes the one-off build would take about {sum(V16.values()) / b["utt_per_s"] / 60:.1f} min, '
          'charged in the projections above (Train + Validation to the training run, Test to testing).', '']
    if peak:
        libs = ', '.join(f'{LIBS.get(k, k)} {v:.0f}' for k, v in R['peak'].items() if k in LIBS)
        L += [f'Matmul peak (fp32 {a["peak_size"]}x{a["peak_size"]}, best of 10, measured three times in the run, the highest kept; '
              f'{R["peak"]["threads"]} threads): {peak:.1f} GFLOPS ({libs}); the percentages count against the highest. '
              'GFLOPS of a step count the matrix products of forward and backward (3x forward) from the shapes.', '']
    if R.get('accept'):
        x = R['accept']
        ot, rt, os_, rs, fl = x['ours_train'], x['ref_train'], x['ours_test'], x['ref_test'], x['floor_s']
        L += ['## Whole processes (cold start included)', '',
              f'`training.py -iter {x["iters"]} -batch {x["batch"]} -emo Act -atten SelfAttenVec` on the '
              f'{R["corpus"]["utts"]}-utterance corpus and `testing.py` on its {R["corpus"]["test"]}-utterance Test split, '
              f'against the reference-style scripts (`bench.py ref-train|ref-test`, {a["accept_workers"]} DataLoader '
              f'workers); ours and the reference alternate {x["repeat"]} times, the fastest run of each counts. Our scripts '
              + ('took --store: the store was deleted before each run and built inside it.' if any(x['store_used'].values())
                 else 'do not take --store yet, so they read the .mat files.'), '',
              '| process | reference-style s | ours s | speed-up | without the start-up floor | peak RssAnon MiB ref / ours |',
              '|---|---|---|---|---|---|',
              f'| training (whole process) | {rt["wall_s"]:.1f} | {ot["wall_s"]:.1f} | **{ratio(rt["wall_s"], ot["wall_s"])}** | '
              f'{ratio(rt["wall_s"] - fl, ot["wall_s"] - fl)} | {mib(rt["peak_rss"]):.0f} / {mib(ot["peak_rss"]):.0f} |',
              f'| training per iteration (wall / iterations) | {rt["wall_s"] / x["iters"]:.2f} | {ot["wall_s"] / x["iters"]:.2f} | | | |',
              f'| testing (whole process) | {rs["wall_s"]:.1f} | {os_["wall_s"]:.1f} | **{ratio(rs["wall_s"], os_["wall_s"])}** | '
              f'{ratio(rs["wall_s"] - fl, os_["wall_s"] - fl)} | {mib(rs["peak_rss"]):.0f} / {mib(os_["peak_rss"]):.0f} |']
        if 'ours_test_warm' in x:
            w = x['ours_test_warm']
            L.append(f'| testing, store already built | {rs["wall_s"]:.1f} | {w["wall_s"]:.1f} | {ratio(rs["wall_s"], w["wall_s"])} | '
                     f'{ratio(rs["wall_s"] - fl, w["wall_s"] - fl)} | |')
        L += [f'| testing ms/utt (wall / utterances) | {1000 * rs["wall_s"] / R["corpus"]["test"]:.2f} | '
              f'{1000 * os_["wall_s"] / R["corpus"]["test"]:.2f} | | | |',
              f'| testing, printed model ms/utt | {rs["model_ms"]:.2f} | {os_["model_ms"]:.2f} | {ratio(rs["model_ms"], os_["model_ms"])} | | |',
              '', f'Start-up floor: a bare `python -c "import torch, scipy.io, pandas"` took {fl:.1f} s. All runs (s): '
              + '; '.join(f'{k} {", ".join(f"{v:.1f}" for v in x[k]["walls"])}' for k in ('ref_train', 'ours_train', 'ref_test', 'ours_test')) + '.',
              '', f'Test CCC of the same checkpoint: reference-style {rs["ccc"]!r}, ours {os_["ccc"]!r} '
              f'(difference {abs(rs["ccc"] - os_["ccc"]):.1e}).', '']
    if R.get('rss_scaling'):
        L += ['## Peak RssAnon of training against corpus size', '', '| utterances | peak RssAnon MiB | wall s | store |',
              '|---|---|---|---|']
        for n, v in R['rss_scaling'].items():
            L.append(f'| {n} | {mib(v["peak_rss"]):.0f} | {v["wall_s"]:.1f} | {"yes" if v["store"] else "no (.mat path)"} |')
        L.append('')
    if R.get('cpu'):
        cp = R['cpu']
        lstm_fb = step_flops('NonAtten', a['batch']) / cp['lstm_s'] / 1e9
        lstm_f = step_flops('NonAtten', a['batch'], train=False) / cp['lstm_fwd_s'] / 1e9
        L += ['## CPU experiments (our SelfAttenVec training step, batch %d; variants in turn, %d rounds, each timed '
              'after its own warm-up call; best round)' % (a['batch'], a['cpu_reps']), '',
              f'The fused LSTM runs forward + backward at {lstm_fb:.0f} GFLOPS, forward alone at {lstm_f:.0f} GFLOPS: '
              f'{100 * lstm_fb / R["peak"]["gflops"]:.0f} % and {100 * lstm_f / R["peak"]["gflops"]:.0f} % of the matmul '
              f'peak ({R["peak"]["gflops"]:.0f} GFLOPS).', '',
              '| setting | seconds |', '|---|---|']
        L += [f'| torch.set_num_threads({t}) | {s:.3f} |' for t, s in cp['threads'].items()]
        L += [f'| LSTM forward + backward alone | {cp["lstm_s"]:.3f} ({100 * cp["lstm_s"] / cp["step_s"]:.0f} % of the step) |',
              f'| LSTM forward alone (no grad) | {cp["lstm_fwd_s"]:.3f} |',
              f'| LSTM forward + backward, oneDNN off (native kernel) | {cp["lstm_nomkldnn_s"]:.3f} |',
              f'| training step, LSTM as {cp["k_streams"]} single-threaded streams (model.CpuStreams) | {cp["streams_step_s"]:.3f} |']
        if 'compile_step_s' in cp:
            L += [f'| torch.compile: first step (compiling) | {cp["compile_first_s"]:.1f} |',
                  f'| torch.compile: training step | {cp["compile_step_s"]:.3f} (eager {cp["step_s"]:.3f}) |']
        elif 'compile_error' in cp:
            L.append(f'| torch.compile | failed: {cp["compile_error"]} |')
        L.append('')
    if R.get('omp'):
        L += ['OpenMP wait policy (our SelfAttenVec training step, 2 threads, one process per setting, run twice alternating; '
              'best / median / worst of the calls):', '', '| OMP_WAIT_POLICY | batch %d s | batch 4 s |' % a['batch'],
              '|---|---|---|']
        for k, v in R['omp'].items():
            L.append(f'| {k} | ' + ' | '.join(f'{v[z]["best_s"]:.3f} / {v[z]["median_s"]:.3f} / {v[z]["worst_s"]:.3f}'
                                               for z in ('big', 'small')) + ' |')
        L.append('')
    L += ['## What the reference-style path reproduces', '',
          'Per item a full `scipy.io.loadmat` and float64 z-normalisation with boolean-index clipping; a torch '
          'DataLoader whose collate cuts chunks in Python loops into a float64 array, cast to float32 at the '
          'model input; the aggregation head in a Python loop over utterances (SelfAttenVec calls the '
          'TransformerEncoderLayer on each utterance\'s (1, C\', 130), RnnAttenVec runs its RNN per utterance); '
          'validation with autograd on; scoring one utterance at a time with autograd on. Its heads compute the '
          'same function as ours (tests/test_bench.py). Projections: headline = 5000 x s/iter + 100 validations '
          'x 6,000 x validation s/utterance (+ the store build for ours); testing = 10,000 x scoring ms/utt '
          '(+ the Test store build for ours).', '']
    return '\n'.join(L)


def plot(R, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    heads = list(R['heads'])
    xs = np.arange(len(heads))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    panels = [('it_s', 'training s / iteration'), ('score_ms', 'scoring ms / utterance'),
              (('proj', 'train_h'), 'projected headline run (h)')]
    for ax, (key, title) in zip(axes, panels):
        for k, (pipe, colour) in enumerate((('ref', '#c44e52'), ('ours', '#4c72b0'))):
            vals = [R['heads'][h][pipe][key[0]][key[1]] if isinstance(key, tuple) else R['heads'][h][pipe][key] for h in heads]
            ax.bar(xs + (k - 0.5) * 0.38, vals, 0.38, color=colour, label='reference-style' if pipe == 'ref' else 'ours')
        ax.set_xticks(xs, heads, rotation=15)
        ax.set_title(title)
        ax.grid(axis='y', alpha=0.3)
    axes[0].legend(loc='lower right', framealpha=0.9)
    d = R['data']
    axes[3].bar([0, 1], [d['ref']['utt_per_s'], d['ours']['utt_per_s']], color=['#c44e52', '#4c72b0'])
    axes[3].set_yscale('log')
    axes[3].set_ylim(bottom=min(d['ref']['utt_per_s'], d['ours']['utt_per_s']) / 4)
    axes[3].set_xticks([0, 1], ['reference-style', 'ours'])
    axes[3].set_title('data pipeline utterances / s (log)')
    axes[3].grid(axis='y', alpha=0.3)
    threads = R['args'].get('threads') or torch.get_num_threads()
    fig.suptitle(f'{R["machine"]} | {R["args"]["device"]}, {threads} thread(s) | torch {torch.__version__} | '
                 f'batch {R["args"]["batch"]} | {R["date"]}',
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------
# main

def parse_args(argv):
    p = ArgParser(prog='bench.py', description=__doc__.split('\n')[0])
    p.add_argument('--utts', type=int, default=1200, help='synthetic utterances (default 1200)')
    p.add_argument('--min-frames', type=int, default=172, help='shortest utterance, frames (default 172 = 2.75 s)')
    p.add_argument('--max-frames', type=int, default=688, help='longest utterance, frames (default 688 = 11 s)')
    p.add_argument('--splits', default='0.1667,0.0833,0.75',
                   help='Train,Validation,Test fractions (default 0.1667,0.0833,0.75: 200/100/900 of 1200)')
    p.add_argument('--batch', type=int, default=128, help='batch size (default 128)')
    p.add_argument('--iters', type=int, default=5, help='timed training iterations per head (default 5)')
    p.add_argument('--val-utts', type=int, default=384, help='utterances validated per head (default 384)')
    p.add_argument('--test-utts', type=int, default=300, help='utterances scored per head (default 300)')
    p.add_argument('--data-batches', type=int, default=8, help='batches timed for the data pipeline (default 8)')
    p.add_argument('--heads', default='all', help='comma-separated heads (default all)')
    p.add_argument('--ref-workers', type=int, default=0,
                   help='DataLoader workers of the reference-style component figures (default 0)')
    p.add_argument('--accept-workers', type=int, default=12,
                   help='DataLoader workers of the reference-style whole-process runs (default 12, the published value)')
    p.add_argument('--accept-iters', type=int, default=20, help='-iter of the whole-process training runs (default 20)')
    p.add_argument('--accept-repeat', type=int, default=2,
                   help='whole-process runs of each kind, alternating; the fastest counts (default 2)')
    p.add_argument('--no-accept', action='store_true', help='skip the whole-process runs')
    p.add_argument('--repeat', type=int, default=1,
                   help='processes measuring each head (both pipelines interleaved); the fastest counts (default 1)')
    p.add_argument('--no-cpu', action='store_true', help='skip the CPU experiments')
    p.add_argument('--no-compile', action='store_true', help='skip torch.compile in the CPU experiments')
    p.add_argument('--no-omp', action='store_true', help='skip the OMP_WAIT_POLICY comparison')
    p.add_argument('--cpu-reps', type=int, default=3, help='repetitions of each CPU experiment (default 3)')
    p.add_argument('--rss-scaling', action='store_true', help='also peak RssAnon of training.py on 1k vs 10k utterances')
    p.add_argument('--rss-sizes', default='1000,10000', help='corpus sizes of --rss-scaling (default 1000,10000)')
    p.add_argument('--build-workers', type=int, default=default_workers(),
                   help=f'store build processes (default {default_workers()}: store.py\'s, CPUs - 1, at most 8)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='(default cpu)')
    p.add_argument('--threads', type=int, default=0,
                   help='torch threads in every process, scripts included (OMP_NUM_THREADS; default 0: torch default)')
    p.add_argument('--peak-size', type=int, default=2048, help='n of the n x n matmul that measures the peak (default 2048)')
    p.add_argument('--work', default=None, help='folder for the corpus and stores, kept (default: a temporary folder)')
    p.add_argument('--out', default='.', help='where BENCHMARKS.md and images/benchmark.png go (default .)')
    p.add_argument('--inline', action='store_true', help='run the tasks in this process (tests; RSS not per figure)')
    p.add_argument('--quick', action='store_true',
                   help='a smoke run of a minute or two: 240 utterances, batch 32, two heads, few iterations')
    p.add_argument('--debug', action='store_true', help='show tracebacks of user errors')
    a = p.parse_args(argv)
    if a.quick:
        a.utts, a.batch, a.iters, a.val_utts, a.test_utts, a.data_batches = 240, 32, 2, 64, 48, 4
        a.accept_iters, a.accept_workers, a.accept_repeat, a.cpu_reps, a.no_compile, a.no_omp = 4, 2, 1, 1, True, True
        a.heads = 'NonAtten,SelfAttenVec' if a.heads == 'all' else a.heads
    a.heads = list(HEADS) if a.heads == 'all' else [h.strip() for h in a.heads.split(',')]
    for h in a.heads:
        if h not in HEADS:
            raise UserError(f'--heads: unknown head {h!r} (expected {", ".join(HEADS)})')
    try:
        a.splits = tuple(float(v) for v in a.splits.split(','))
        assert len(a.splits) == 3
    except (ValueError, AssertionError):
        raise UserError('--splits: expected three comma-separated fractions, e.g. 0.7,0.15,0.15')
    if a.batch < 2 or a.iters < 1 or a.utts < 8:
        raise UserError('need --batch >= 2, --iters >= 1 and --utts >= 8')
    if not 0 < a.min_frames <= a.max_frames:
        raise UserError('need 0 < --min-frames <= --max-frames')
    if a.min_frames < DEFAULT_M:
        raise UserError(f'--min-frames must be at least {DEFAULT_M}: the reference-style split needs T >= m')
    if a.device == 'cuda':
        select_device('cuda')
    return a


def bench_main(argv):
    a = parse_args(argv)
    if a.threads:
        CHILD_ENV['OMP_NUM_THREADS'] = str(a.threads)
    from norm_para import compute_terms
    from synthetic import write_corpus
    work = a.work or tempfile.mkdtemp(prefix='ser_bench_')
    os.makedirs(work, exist_ok=True)
    R = {'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'), 'machine': machine_info(),
         'command': 'python bench.py ' + ' '.join(argv), 'load_before': ', '.join(f'{v:.1f}' for v in os.getloadavg()),
         'args': {k: v for k, v in vars(a).items()}}
    try:
        # corpus, NormTerm, store (kept in --work between runs when the sizes match)
        cdir = os.path.join(work, f'corpus_{a.utts}_{a.min_frames}_{a.max_frames}_' + '_'.join(f'{s:g}' for s in a.splits))
        feat_dir, label_csv = os.path.join(cdir, 'feat_mat'), os.path.join(cdir, 'labels_concensus.csv')
        if not os.path.isfile(label_csv):
            t0 = time.perf_counter()
            write_corpus(cdir, size=a.utts, seed=0, min_frames=a.min_frames, max_frames=a.max_frames, splits=a.splits)
            print(f'corpus: {a.utts} utterances written in {time.perf_counter() - t0:.1f} s -> {cdir}')
        df = read_label_table(label_csv)
        norm_dir = os.path.join(cdir, 'NormTerm')
        if not os.path.isdir(norm_dir):
            compute_terms(df, feat_dir, label_csv).save(norm_dir)
        counts = df['Split_Set'].value_counts()
        R['corpus'] = {'utts': len(df), 'train': int(counts.get('Train', 0)),
                       'validation': int(counts.get('Validation', 0)), 'test': int(counts.get('Test', 0))}
        c = {'feat_dir': feat_dir, 'label_csv': label_csv, 'norm_dir': norm_dir, 'store_dir': os.path.join(cdir, 'store'),
             'batch': a.batch, 'iters': a.iters, 'val_utts': min(a.val_utts, a.utts), 'test_utts': min(a.test_utts, a.utts),
             'data_batches': a.data_batches, 'ref_workers': a.ref_workers, 'accept_workers': a.accept_workers,
             'build_workers': a.build_workers, 'device': a.device, 'threads': a.threads, 'cpu_reps': a.cpu_reps,
             'compile': not a.no_compile, 'peak_size': a.peak_size}
        corpus = Corpus(c)
        corpus.store()  # the component tasks read a current store (its build is timed by the 'build' task)

        R['build'] = run_task('build', c, a.inline)
        print(f'store build: {R["build"]["utt_per_s"]:.0f} utt/s')
        R['peak'] = run_task('peak', c, a.inline)
        print(f'matmul peak: {R["peak"]["gflops"]:.1f} GFLOPS')
        R['data'] = run_task('data', dict(c, pipeline='both'), a.inline)
        for p in ('ref', 'ours'):
            R['data'][p]['peak_rss'] = run_task('data', dict(c, pipeline=p), a.inline)['peak_rss']
        print(f'data pipeline: reference-style {R["data"]["ref"]["utt_per_s"]:.0f} utt/s, '
              f'ours {R["data"]["ours"]["utt_per_s"]:.0f} utt/s')
        R['heads'] = {}
        for head in a.heads:
            reps = [run_task('head', dict(c, head=head), a.inline) for _ in range(a.repeat)]
            hr = {p: best_of([r[p] for r in reps]) for p in ('ref', 'ours')}
            for p in ('ref', 'ours'):
                hr[p]['peak_rss'] = run_task('rss', dict(c, head=head, pipeline=p), a.inline)['peak_rss']
            hr['ref']['proj'] = project(hr['ref'])
            hr['ours']['proj'] = project(hr['ours'], R['build'])
            hr['max_pred_diff'] = max(r['max_pred_diff'] for r in reps)
            R['heads'][head] = hr
            print(f'{head}: s/iter reference-style {hr["ref"]["it_s"]:.3f}, ours {hr["ours"]["it_s"]:.3f}; '
                  f'scoring ms/utt {hr["ref"]["score_ms"]:.2f} vs {hr["ours"]["score_ms"]:.2f}')
        if not a.no_cpu:
            R['cpu'] = run_task('cpu', c, a.inline)
            if not a.inline and not a.no_omp:  # OpenMP's wait policy is read once per process: one process per setting, alternating
                policies = {'default': {}, 'PASSIVE': {'OMP_WAIT_POLICY': 'PASSIVE'}}  # with two threads, whatever --threads
                runs = [(k, run_task('step', dict(c, threads=2), env=dict(e, OMP_NUM_THREADS='2')))
                        for _ in range(2) for k, e in policies.items()]
                R['omp'] = {k: {size: {m: (max if m == 'worst_s' else min)(r[size][m] for kk, r in runs if kk == k)
                                       for m in ('best_s', 'median_s', 'worst_s')} for size in ('big', 'small')}
                            for k in policies}
            R['peak'] = merge_peaks(R['peak'], R['cpu']['peak'])
        if not a.no_accept:
            R['accept'] = acceptance(c, work, a.accept_iters, a.batch, a.accept_repeat)
            print(f'whole processes: training {R["accept"]["ref_train"]["wall_s"]:.1f} s vs '
                  f'{R["accept"]["ours_train"]["wall_s"]:.1f} s, testing {R["accept"]["ref_test"]["wall_s"]:.1f} s vs '
                  f'{R["accept"]["ours_test"]["wall_s"]:.1f} s')
        if a.rss_scaling:
            R['rss_scaling'] = rss_scaling(c, work, [int(s) for s in a.rss_sizes.split(',')], 10, a.batch)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    R['peak'] = merge_peaks(R['peak'], run_task('peak', c, a.inline))  # again: the quieter one
    R['load_after'] = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    text = make_report(R)
    os.makedirs(os.path.join(a.out, 'images'), exist_ok=True)
    with open(os.path.join(a.out, 'BENCHMARKS.md'), 'w') as f:
        f.write(text)
    plot(R, os.path.join(a.out, 'images', 'benchmark.png'))
    print(text)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['task']:
        return task_main(argv[1:])
    if argv[:1] == ['ref-train']:
        return ref_train_main(argv[1:])
    if argv[:1] == ['ref-test']:
        return ref_test_main(argv[1:])
    return bench_main(argv)


if __name__ == '__main__':
    run_cli(main)
