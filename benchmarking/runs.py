"""The measurements: components in this process, both pipelines interleaved step by step (the same load), the best
of each figure's repetitions; whole training.py / testing.py processes on their own, peak RssAnon from outside."""
import copy
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import timeit

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarking import deploy, finetune, startup
from benchmarking.reference import (LoopedHeadNet, RefDataset, RefPairDataset, ref_collate, ref_pair_collate,
                                    ref_pair_logits, ref_score, reference_pair_wins)
from chunkser.corpus import LABEL_COLUMN, iter_batches, read_label_table
from chunkser.model import ENCODERS, ModelSpec, build_model
from chunkser.objectives import CHALLENGE_CLASSES, Classification, Curves, RankerObjective
from chunkser.normterm import NormTerms
from chunkser.retrieval.ranks import rank_utterances
from chunkser.scoring import predict_utterances
from chunkser.store import open_store
from chunkser.streams import use_cpu_streams
from chunkser.tasks import PairFeatures
from chunkser.train.step import forward_backward, make_batch
from chunkser.utils import cc_coef, chunk_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = {}  # added to the environment of every process started here (--threads: OMP_NUM_THREADS)


def log(figure, **kv):
    print(f'[bench] {figure}: ' + ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                                           for k, v in kv.items()), flush=True)


def matmul_peak(n=2048, reps=10, device='cpu'):
    """Best fp32 GFLOPS of an n x n product per library, {library: GFLOPS, 'gflops': the highest}: on the CPU torch.mm
    (MKL in x86 wheels: AVX2 on AMD) and oneDNN (nn.LSTM's kernels), up to 2x apart; on CUDA cuBLAS, TF32 off."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    runs = {}
    if torch.device(device).type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        runs['cublas'] = lambda: (torch.mm(a, b), torch.cuda.synchronize())
    else:
        runs['blas'] = lambda: torch.mm(a, b)
        try:  # oneDNN's own product: an inner-product primitive on oneDNN tensors
            am, bm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
            torch.ops.aten.mkldnn_linear(am, bm)
            runs['onednn'] = lambda: torch.ops.aten.mkldnn_linear(am, bm)
        except (RuntimeError, AttributeError):  # a torch built without oneDNN
            pass
    out = {name: 2 * n ** 3 / min(timeit.repeat(fn, number=1, repeat=reps + 1)[1:]) / 1e9  # the first warms up
           for name, fn in runs.items()}
    return dict(out, gflops=max(out.values()))


def merge_peaks(*peaks):
    """The highest of each library's figure over repeated peak measurements (the least disturbed)."""
    return {k: max(p[k] for p in peaks if k in p) for k in set().union(*peaks)}


class Pipeline:
    """One head on one pipeline (ours: training.py's batch and step, testing.py's scoring), from seeded weights."""

    def __init__(self, c, pipeline):
        self.y, self.ours, self.device = c['y'], pipeline == 'ours', torch.device(c['device'])
        torch.manual_seed(0)
        self.model = (build_model(ModelSpec(head=c['head'])) if self.ours else LoopedHeadNet(c['head'])).to(self.device)
        if self.ours:  # our scripts' default: on CPU the LSTM as parallel streams, one per torch thread
            use_cpu_streams(self.model, self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.data, self.scored = (c['store'] if self.ours else c['ref']), c['scored']

    def batch(self, idx):  # the reference-style DataLoader without worker processes: items loaded in this one
        if self.ours:
            return make_batch(self.data, self.y, idx, self.model.spec, self.device)
        x, y = next(iter(DataLoader(self.data, len(idx), sampler=idx, collate_fn=ref_collate)))
        return x.to(self.device).float(), y.to(self.device).float()

    def score(self):
        """Scores the scored utterances, ours as testing.py does: (wall s, model s, predictions)."""
        self.model.eval()
        t0 = time.perf_counter()
        if self.ours:
            preds, model_s = predict_utterances(self.model, self.scored, self.device)
        else:
            preds, model_s = ref_score(self.model, self.data, len(self.scored), self.device, bar=False)
        return time.perf_counter() - t0, model_s, preds

    def validate(self, idx):
        """One validation batch in eval mode (ours without autograd, the reference with it): seconds."""
        self.model.eval()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(not self.ours):
            x, y = self.batch(idx)
            cc_coef(self.model(x), y).item()
        return time.perf_counter() - t0

    def train_step(self, idx):
        """One training iteration on the batch `idx`: (data s, model step s)."""
        self.model.train()
        t0 = time.perf_counter()
        x, y = self.batch(idx)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        if self.ours:  # training.py's step
            loss = forward_backward(self.model, x, y)
        else:
            loss = cc_coef(self.model(x), y)
            loss.backward()
        self.opt.step()
        loss.item()
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
        return t1 - t0, time.perf_counter() - t1


def task_head(c):
    """One head, both pipelines interleaved. Scoring first (fresh seeded weights: the predictions compare), then
    validation, then training; each figure the best of its repetitions."""
    N, B, rng = len(c['y']), c['batch'], np.random.default_rng(0)
    pipes = {p: Pipeline(c, p) for p in ('ref', 'ours')}
    score, val, steps, preds = ({p: [] for p in pipes} for _ in range(4))
    for _ in range(3):
        for p, pipe in pipes.items():
            wall, model_s, preds[p] = pipe.score()
            score[p].append((wall / len(c['scored']), model_s / len(c['scored'])))
    val_idx = rng.permutation(N)[:c['val_utts']]
    for idx in iter_batches(val_idx, B):
        for p, pipe in pipes.items():
            val[p].append(pipe.validate(idx) / len(idx))
    order = rng.permutation(N)
    for i in range(c['iters'] + 1):  # the first is a warm-up
        for p, pipe in pipes.items():
            steps[p].append(pipe.train_step(np.take(order, np.arange(i * B, i * B + B), mode='wrap')))
    out = {'max_pred_diff': float(np.max(np.abs(preds['ref'] - preds['ours'])))}
    for p, pipe in pipes.items():
        o = out[p] = {'val_utts': len(val_idx), 'val_s': min(val[p]) * len(val_idx)}
        o['score_ms'], o['score_model_ms'] = (1000 * min(r[k] for r in score[p]) for k in (0, 1))
        o['data_s'], o['step_s'] = (min(t[k] for t in steps[p][1:]) for k in (0, 1))
        o['it_s'] = o['data_s'] + o['step_s']
        o['gflops'] = pipe.model.estimate_flops(B, train=True) / o['step_s'] / 1e9
    return out


def task_encoders(c):
    """Scoring per utterance of every registered encoder, as testing.py scores: in turn, 3 rounds, the best."""
    device, rows, out = torch.device(c['device']), c['scored'], {}
    torch.manual_seed(0)
    models = {name: use_cpu_streams(build_model(ModelSpec(encoder=name, head='NonAtten')).to(device), device)
              for name in ENCODERS}  # encoders added later are measured too
    rounds = {k: [] for k in models}
    for _ in range(3):
        for k, m in models.items():
            t0 = time.perf_counter()
            model_s = predict_utterances(m, rows, device)[1]
            rounds[k].append((time.perf_counter() - t0, model_s))
    for k, m in models.items():
        wall, model_s = (min(r[i] for r in rounds[k]) for i in (0, 1))
        out[k] = {'head': m.spec.head, 'score_ms': 1000 * wall / len(rows), 'model_ms': 1000 * model_s / len(rows),
                  'gflops': m.estimate_flops(len(rows)) / model_s / 1e9,
                  'params': sum(map(torch.numel, m.parameters()))}
    return out


CLASS_ROW = 'LSTM -emo Class'  # the categorical step's row in the training-step table


def task_train_encoders(c):
    """training.py's step (zero_grad, training.forward_backward, Adam) of every registered encoder under each of
    the --encoder-heads, on one random batch (the step's cost does not depend on the values), in turn; the best of
    --iters steps after a warm-up; and the LSTM's categorical step (-emo Class, the challenge's 8 classes, weighted
    cross-entropy) beside its regression step."""
    device, B, spec = torch.device(c['device']), c['batch'], ModelSpec()
    torch.manual_seed(0)
    x = torch.randn(B * spec.chunks_per_utterance, spec.chunk_frames, spec.feat_dim, device=device)
    targets = {'regression': (None, torch.randn(B, device=device)),
               'class': (Classification(CHALLENGE_CLASSES, [1.0 + i / 8 for i in range(8)]),
                         torch.randint(0, 8, (B,), device=device))}
    specs = {(head, enc): ModelSpec(encoder=enc, head=head) for head in c['encoder_heads'] for enc in ENCODERS}
    specs.update({(head, CLASS_ROW): ModelSpec(head=head, emo='Class', classes=list(CHALLENGE_CLASSES))
                  for head in c['encoder_heads']})
    models = {k: use_cpu_streams(build_model(s).to(device).train(), device) for k, s in specs.items()}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    steps = {k: [] for k in models}
    for _ in range(c['iters'] + 1):  # the first is a warm-up
        for k, m in models.items():
            objective, y = targets['class' if k[1] == CLASS_ROW else 'regression']
            t0 = time.perf_counter()
            opts[k].zero_grad(set_to_none=True)
            forward_backward(m, x, y, objective).item()
            opts[k].step()
            if device.type == 'cuda':
                torch.cuda.synchronize()
            steps[k].append(time.perf_counter() - t0)
    out = {head: {} for head in c['encoder_heads']}
    for (head, enc), m in models.items():
        t = min(steps[head, enc][1:])
        out[head][enc] = {'step_s': t, 'vs_lstm': t / min(steps[head, 'LSTM'][1:]),
                          'gflops': m.estimate_flops(B, train=True) / t / 1e9}
    return out


def task_retrieval(c):
    """Ranking sentences with retrieval.py (rank_utterances) and the reference's pair loop, with a random-weight
    ranker: seconds per sentence of each, and whether the wins agree."""
    torch.manual_seed(0)
    ranker = build_model(ModelSpec(head=None, task='ranker', scale=2)).eval()
    s, utts = ranker.spec, [c['scored'][i] for i in range(c['retrieval_utts'])]
    t0 = time.perf_counter()
    ref = [reference_pair_wins(ranker, torch.from_numpy(chunk_batch(utts, [i], s.chunk_frames, s.chunks, s.scale)))
           for i in range(len(utts))]
    t1 = time.perf_counter()
    wins, _ = rank_utterances(ranker, utts)
    ref_s, ours_s = (t1 - t0) / len(utts), (time.perf_counter() - t1) / len(utts)
    return {'utts': len(utts), 'ref_s': ref_s, 'ours_s': ours_s, 'speedup': ref_s / ours_s,
            'same_wins': bool(np.array_equal(np.stack(ref), wins))}


def best_of_turns(fns, n):
    """Each of fns {name: fn(i) -> (data s, model s)} called n + 1 times in turn (the first a warm-up): per name the
    best data and the best model seconds of the others."""
    times = {k: [] for k in fns}
    for i in range(n + 1):
        for k, fn in fns.items():
            times[k].append(fn(i))
    return {k: {'data_s': min(t[0] for t in ts[1:]), 'step_s': min(t[1] for t in ts[1:])} for k, ts in times.items()}


def timed(fn, device):
    """fn()'s wall seconds (CUDA: synchronised)."""
    t0 = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_validation(out, val, nets, utterances, device):
    """The best of 2 validation batches of each side (eval mode, no autograd) into out[k]['val_s'], the step's total
    time into 'it_s' and its GFLOP/s (the model's estimate for `utterances`) into 'gflops'."""
    for net in nets.values():
        net.eval()
    with torch.no_grad():
        for _ in range(2):
            for k, fn in val.items():
                out[k].setdefault('val', []).append(timed(fn, device))
    for k, net in nets.items():
        o = out[k]
        o['val_s'], o['it_s'] = min(o.pop('val')), o['data_s'] + o['step_s']
        o['gflops'] = net.estimate_flops(utterances, train=True) / o['step_s'] / 1e9


def task_ranker_training(c):
    """A ranker training step on --batch random sentence pairs of the bench corpus (22 chunk pairs each): ours with
    training.py's own pieces (PairFeatures over the store, make_batch, forward_backward with RankerObjective, Adam;
    CPU streams as training.py sets them), the reference-style one with a DataLoader over RefPairDataset (both .mat
    files loaded per item, float64 normalisation, chunks cut in the collate), the ranker on each side, cross-entropy,
    Adam; in turn, the best of each. Then a validation batch of each (eval mode, no autograd; the best of 2) and the
    largest difference of the two pipelines' logits from the same weights."""
    device, B, N, rng = torch.device(c['device']), c['batch'], len(c['y']), np.random.default_rng(1)
    n_pairs = B * (c['iters'] + 3)
    pairs, labels = rng.integers(0, N, (n_pairs, 2)), rng.integers(0, 2, n_pairs)
    ours_data = PairFeatures(c['store'], pairs)
    ref_data = RefPairDataset(c['feat_dir'], c['ref'].fnames, pairs, labels, c['norm_dir'], 'Act')
    torch.manual_seed(0)
    ours = build_model(ModelSpec(task='ranker', head=None, scale=2)).to(device)
    ref = copy.deepcopy(ours)  # the same weights; the plain nn.LSTM call
    use_cpu_streams(ours, device)
    objective, spec = RankerObjective('Act'), ours.spec
    opts = {'ours': torch.optim.Adam(ours.parameters(), lr=1e-4), 'ref': torch.optim.Adam(ref.parameters(), lr=1e-4)}
    batch = lambda i, n=B: np.arange(i * B, i * B + n)

    def ref_batch(idx):
        a, b, y = next(iter(DataLoader(ref_data, len(idx), sampler=idx, collate_fn=ref_pair_collate)))
        return a.to(device).float(), b.to(device).float(), y.to(device)

    def ours_step(i):
        ours.train()
        t0 = time.perf_counter()
        x, y = make_batch(ours_data, labels, batch(i), spec, device)
        t1 = time.perf_counter()
        opts['ours'].zero_grad(set_to_none=True)
        return t1 - t0, timed(lambda: (forward_backward(ours, x, y, objective).item(), opts['ours'].step()), device)

    def ref_step(i):
        ref.train()
        t0 = time.perf_counter()
        a, b, y = ref_batch(batch(i))
        t1 = time.perf_counter()

        def step():
            opts['ref'].zero_grad()
            loss = F.cross_entropy(ref_pair_logits(ref, a, b), y)
            loss.backward()
            opts['ref'].step()
            loss.item()
        return t1 - t0, timed(step, device)

    with torch.no_grad():  # the same function: logits of a few pairs from the same weights, eval mode
        ours.eval(), ref.eval()
        a, b, _ = ref_batch(batch(0, 4))
        diff = float((ours(make_batch(ours_data, labels, batch(0, 4), spec, device)[0]).reshape(-1, 2) -
                      ref_pair_logits(ref, a, b)).abs().max())
    out = best_of_turns({'ref': ref_step, 'ours': ours_step}, c['iters'])
    idx = batch(c['iters'] + 1)
    val = {'ours': lambda: objective.validation_sums(ours(make_batch(ours_data, labels, idx, spec, device)[0]).float(),
                                                     torch.from_numpy(labels[idx])),
           'ref': lambda: ref_pair_logits(ref, *ref_batch(idx)[:2]).argmax(1).cpu()}
    time_validation(out, val, {'ours': ours, 'ref': ref}, 2 * B, device)  # 2B sentences of 22 chunks
    return dict(out, pairs=B, chunk_pairs=B * spec.chunks_per_utterance, max_logit_diff=diff)


def task_seq2seq_step(c):
    """The seq2seq model's (task chunk) training step on --batch utterances of 22 chunks: ours training.py's
    make_batch from the store and forward_backward with the curve objective (objectives.Curves: targets (B, 1 + C'),
    0.5 CCC(utterances) + 0.5 CCC(chunks)) with CPU streams, Adam; the reference-style one its DataLoader over
    RefDataset (chunks cut in the collate), 0.5 CCC(utterances) + 0.5 CCC(chunks), Adam; in turn, the best of
    each; then a validation batch of each (eval mode, no autograd; the best of 2)."""
    device, B, N = torch.device(c['device']), c['batch'], len(c['y'])
    order = np.random.default_rng(2).permutation(N)
    batch = lambda i: np.take(order, np.arange(i * B, i * B + B), mode='wrap')
    torch.manual_seed(0)
    ours = build_model(ModelSpec(task='chunk', head=None, scale=2)).to(device)
    ref = copy.deepcopy(ours)
    use_cpu_streams(ours, device)
    spec, collate = ours.spec, functools.partial(ref_collate, n=2)
    opts = {'ours': torch.optim.Adam(ours.parameters(), lr=1e-3), 'ref': torch.optim.Adam(ref.parameters(), lr=1e-3)}
    curves = Curves(('Act',))
    targets = np.repeat(c['y'][:, None], 1 + spec.chunks_per_utterance, axis=1)  # (N, 1 + C') a flat curve each

    def ref_batch(idx):
        x, y = next(iter(DataLoader(c['ref'], len(idx), sampler=idx, collate_fn=collate)))
        return x.to(device).float(), y.to(device).float()

    def ours_step(i):
        ours.train()
        t0 = time.perf_counter()
        x, y = make_batch(c['store'], targets, batch(i), spec, device)
        t1 = time.perf_counter()
        opts['ours'].zero_grad(set_to_none=True)
        return t1 - t0, timed(lambda: (forward_backward(ours, x, y, curves).item(), opts['ours'].step()), device)

    def ref_step(i):
        ref.train()
        t0 = time.perf_counter()
        x, y = ref_batch(batch(i))
        t1 = time.perf_counter()

        def step():
            opts['ref'].zero_grad()
            u, _, chunks = ref(x, return_chunks=True)
            loss = 0.5 * cc_coef(u, y) + 0.5 * cc_coef(chunks.reshape(-1), y.repeat_interleave(chunks.shape[1]))
            loss.backward()
            opts['ref'].step()
            loss.item()
        return t1 - t0, timed(step, device)

    out = best_of_turns({'ref': ref_step, 'ours': ours_step}, c['iters'])
    idx = batch(c['iters'] + 1)
    val = {'ours': lambda: ours(make_batch(c['store'], c['y'], idx, spec, device)[0]).cpu(),
           'ref': lambda: ref(ref_batch(idx)[0]).cpu()}
    time_validation(out, val, {'ours': ours, 'ref': ref}, B, device)
    return dict(out, utts=B)


def run_process(cmd, cwd):
    """Wall seconds, output and peak RssAnon (sampled; the store's file pages are not anonymous) of a command."""
    with tempfile.TemporaryFile('w+') as out:  # a file, not a pipe: a full pipe would stall the process
        t0, peak = time.perf_counter(), 0
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             env=dict(os.environ, TQDM_DISABLE='1', **CHILD_ENV))
        while p.poll() is None:
            try:
                with open(f'/proc/{p.pid}/status') as f:
                    peak = max(peak, next((int(l.split()[1]) * 1024 for l in f if l.startswith('RssAnon:')), 0))
            except OSError:  # no /proc, or the process just ended
                pass
            time.sleep(0.02)
        wall, _ = time.perf_counter() - t0, out.seek(0)
        text = out.read()
    if p.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {p.returncode}):\n{text[-3000:]}')
    return {'wall_s': wall, 'peak_rss': peak, 'output': text}


def whole_processes(c, work):
    """Our training.py / testing.py against `bench.py ref-train|ref-test` from a cold start (our store built inside
    the run), alternating, the fastest counts; both testing runs score our checkpoint: the same CCC."""
    store, ours, ref = (os.path.join(work, d) for d in ('accept_store', 'accept_ours', 'accept_ref'))
    args = ['-iter', str(c['process_iters']), '-batch', str(c['batch']), '-emo', 'Act', '-atten', 'SelfAttenVec',
            '--device', c['device'], *script_args(c)]
    shutil.rmtree(ours, ignore_errors=True)  # our training.py starts afresh, not from an earlier run's state
    cmds = {'ours_train': script('training.py', *args, '--out-dir', ours, '--seed', '0', '--store', store),
            'ref_train': script('bench.py', 'ref-train', *args, '--model-dir', ref,
                                '--workers', str(c['process_workers'])),
            'ours_test': script('testing.py', *args, '--model-dir', ours, '--store', store),
            'ref_test': script('bench.py', 'ref-test', *args, '--model-dir', ours)}  # our checkpoint: the same weights
    runs = {k: [] for k in cmds}
    for _ in range(c['process_repeat']):
        for k, cmd in cmds.items():
            if k.startswith('ours'):
                shutil.rmtree(store, ignore_errors=True)  # cold: the store is built inside the run
            runs[k].append(run_process(cmd, work))
    runs['ours_test_warm'] = [run_process(cmds['ours_test'], work)]  # the Test store in place, as later runs find it
    floor = min(run_process([sys.executable, '-c', 'import torch, scipy.io, pandas'], ROOT)['wall_s'] for _ in range(2))
    res = {'iters': c['process_iters'], 'batch': c['batch'], 'repeat': c['process_repeat'], 'floor_s': floor}
    for k, rs in runs.items():
        best = min(rs, key=lambda r: r['wall_s'])
        res[k] = {'wall_s': best['wall_s'], 'peak_rss': max(r['peak_rss'] for r in rs)}
        if 'test' in k:  # the published result lines
            lines = dict(l.split(': ', 1) for l in best['output'].splitlines() if ': ' in l)
            res[k]['ccc'], res[k]['model_ms'] = float(lines['Act-CCC']), float(lines['Avg. Time Cost(ms/uttr)'])
    return res


def script(name, *args):
    return [sys.executable, os.path.join(ROOT, name), *args]


def script_args(corpus):  # --feat-dir, --label-csv, --norm-dir
    return [f'--{k.replace("_", "-")}={corpus[k]}' for k in ('feat_dir', 'label_csv', 'norm_dir')]


def write_bench_corpus(d, size, c, seed, splits=(0.1667, 0.0833, 0.75)):  # 200 / 100 / 900 of 1200
    """A synthetic corpus of `size` utterances and its NormTerm in `d` (kept when there): their paths."""
    from chunkser.commands.norm_para import compute_terms
    from chunkser.synthetic import write_corpus
    feat_dir, label_csv, norm_dir = (os.path.join(d, f) for f in ('feat_mat', 'labels_concensus.csv', 'NormTerm'))
    if not os.path.isfile(label_csv):
        write_corpus(d, size=size, seed=seed, min_frames=c['min_frames'], max_frames=c['max_frames'], splits=splits)
    if not os.path.isdir(norm_dir):
        compute_terms(read_label_table(label_csv), feat_dir, label_csv).save(norm_dir)
    return {'feat_dir': feat_dir, 'label_csv': label_csv, 'norm_dir': norm_dir}


def rss_scaling(c, work):
    """Peak RssAnon of our training.py on corpora of different sizes (the same distribution of lengths)."""
    out = {}
    for n in c['rss_sizes']:
        d = os.path.join(work, f'rss_{n}')
        corpus = write_bench_corpus(d, n, c, seed=1, splits=(0.7, 0.15, 0.15))
        r = run_process(script('training.py', '-iter', str(c['process_iters']), '-batch', str(c['batch']),
                               *script_args(corpus), '--out-dir', os.path.join(d, 'Models'), '--device', c['device'],
                               '--seed', '0', '--store', os.path.join(d, 'store')), d)
        out[n] = {'peak_rss': r['peak_rss'], 'wall_s': r['wall_s']}
        shutil.rmtree(d, ignore_errors=True)
    return out


def prepare(a, work):
    """The run's settings `c`: the bench corpus (kept in `work`), our stores, the reference-style Dataset, labels."""
    c = dict(vars(a), test_utts=min(a.test_utts, a.utts))
    c.update(write_bench_corpus(os.path.join(work, f'corpus_{a.utts}_{a.min_frames}_{a.max_frames}'), a.utts, c, 0))
    df, norm = read_label_table(c['label_csv']), NormTerms.load(c['norm_dir'])
    fnames, labels = [str(f) for f in df['FileName']], df[LABEL_COLUMN['Act']].to_numpy(np.float64)
    c['store_dir'] = os.path.join(os.path.dirname(c['feat_dir']), 'store')  # reused while current
    c['store'] = open_store(c['store_dir'], c['feat_dir'], fnames, norm, progress=False)
    c['scored'] = open_store(c['store_dir'], c['feat_dir'], fnames[:c['test_utts']], norm, progress=False)
    c['ref'] = RefDataset(c['feat_dir'], fnames, labels, c['norm_dir'], 'Act')
    c['y'] = norm.norm_label(labels, 'Act').astype(np.float32)
    c['corpus'] = dict(utts=len(df), **{s.lower(): int((df['Split_Set'] == s).sum())
                                        for s in ('Train', 'Validation', 'Test')})
    return c


def finetune_steps(c):
    """The fine-tuning section's figures (benchmarking/finetune.py), logged."""
    out = finetune.measure(c, dict(os.environ, TQDM_DISABLE='1', **CHILD_ENV))
    for v in out['variants'].values():
        log('fine-tuning step', **{k: v[k] for k in ('variant', 'device', 'step_s', 'cpu_s')},
            peak_mib=v['peak_bytes'] / 2**20, step_peak_mib=v['step_peak_bytes'] / 2**20,
            backbone_params=v['backbone_params'], head_params=v['head_params'], trained_params=v['trained_params'])
    return out


# the report's sections, in its order: bench.py --only picks some
SECTIONS = ('heads', 'score-encoders', 'train-encoders', 'retrieval', 'processes', 'startup', 'deploy', 'finetune',
            'rss-scaling')
NEEDS_CORPUS = {'heads', 'score-encoders', 'retrieval', 'processes'}  # the bench corpus and its stores


def run_all(a, work):
    """The measurements of the sections a.sections: the result dict the report is written from."""
    todo = a.sections
    c = prepare(a, work) if NEEDS_CORPUS & set(todo) else dict(vars(a))
    R = {'corpus': c['corpus']} if 'corpus' in c else {}
    if 'heads' in todo:
        R['peak'], R['heads'] = matmul_peak(a.peak_size, device=a.device), {}
        log('matmul peak', **R['peak'])
    for head in a.heads if 'heads' in todo else ():
        h = R['heads'][head] = task_head(dict(c, head=head))
        for p in ('ref', 'ours'):
            h[p]['data_utt_per_s'] = a.batch / h[p]['data_s']
            log('head', head=head, pipeline=p, **h[p])
    if 'score-encoders' in todo:
        E = R['score-encoders'] = task_encoders(c)
        for name, e in E.items():
            e['vs_lstm'] = e['score_ms'] / E['LSTM']['score_ms']
            log('scoring per encoder', encoder=name, **e)
    if 'train-encoders' in todo:
        R['train-encoders'] = task_train_encoders(c)
        for head, encs in R['train-encoders'].items():
            for name, e in encs.items():
                log('training step per encoder', head=head, encoder=name, batch=a.batch, **e)
    if 'retrieval' in todo:  # the retrieval follow-up's stages, in one run: ranks, the ranker's and seq2seq's steps
        R['retrieval'] = task_retrieval(c)
        log('retrieval', **R['retrieval'])
        for key, task in (('ranker_step', task_ranker_training), ('seq2seq_step', task_seq2seq_step)):
            r = R['retrieval'][key] = task(c)
            for p in ('ref', 'ours'):
                log(key.replace('_', ' '), pipeline=p, **r[p])
    if 'processes' in todo:
        R['processes'] = whole_processes(c, work)
        log('whole processes', **{f'{k}_s': v['wall_s'] for k, v in R['processes'].items() if isinstance(v, dict)})
    if 'startup' in todo:
        S = R['startup'] = startup.measure(c, work, dict(os.environ, TQDM_DISABLE='1', **CHILD_ENV))
        log('startup', **({'missing': S['missing']} if 'missing' in S else
                          {k: S[k] for k in ('floor_s', 'testing_s', 'ratio', 'round_ratio')}))
        if 'runs' in S:
            log('startup runs', **{k: ','.join(f'{v:.3f}' for v in vs) for k, vs in S['runs'].items()})
            im = S['imports']
            log('importtime testing.py', total_s=im['total_s'], **dict(im['packages']))
            for via, module, cum in im['imports']:
                log('importtime testing.py, third-party imports of ours', importer=via, module=module, cumulative_s=cum)
            for module, own, via in im['self']:
                log('importtime testing.py, most self time', module=module, self_s=own, under=via)
    if 'deploy' in todo:
        D = R['deploy'] = deploy.measure(c, work, dict(os.environ, TQDM_DISABLE='1', **CHILD_ENV))
        for k in ('torch', 'onnx', 'int8') if 'missing' not in D else ():
            log('deploy scoring', model=k, **D[k])
        if 'cold' in D:
            log('deploy cold start', **{k: v for k, v in D['cold'].items() if k.endswith('_s') or k == 'ratio'})
    if 'finetune' in todo:
        R['finetune'] = finetune_steps(c)
    if 'rss-scaling' in todo:
        R['rss-scaling'] = rss_scaling(c, work)
        for n, v in R['rss-scaling'].items():
            log('rss scaling', utts=n, peak_rss_mib=v['peak_rss'] / 2**20, wall_s=v['wall_s'])
    if 'heads' in todo:
        R['peak'] = merge_peaks(R['peak'], matmul_peak(a.peak_size, device=a.device))  # again: the quieter one counts
    return R
