"""The measurements. Components run in this process, the two pipelines interleaved step by step so both see
the same load, each time the best of its repetitions (the least disturbed on a shared machine); whole
training.py / testing.py processes run on their own, their peak RssAnon sampled from outside."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarking.reference import LoopedHeadNet, RefDataset, ref_chunk_split, ref_collate
from model import ENCODERS, ModelSpec, build_model
from scoring import predict_utterances
from store import open_store
from streams import use_cpu_streams
from training import forward_backward, make_batch
from utils import LABEL_COLUMN, NormTerms, cc_coef, iter_batches, read_label_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V16 = {'train': 34000, 'validation': 6000, 'test': 10000}  # MSP-Podcast v1.6 split sizes, roughly
HEADLINE = {'iterations': 5000, 'val_every': 50}  # the published run: -iter 5000 -batch 128
SPLITS = (0.1667, 0.0833, 0.75)  # Train, Validation, Test: 200/100/900 of 1200
CHILD_ENV = {}  # added to the environment of every process started here (--threads: OMP_NUM_THREADS)


def log(section, **kv):
    """One line per figure: `[bench] section: key=value ...`."""
    print(f'[bench] {section}: ' + ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                                            for k, v in kv.items()), flush=True)


def rss_anon(pid='self'):
    """RssAnon of a process in bytes (0 where /proc is missing or the process is gone)."""
    try:
        with open(f'/proc/{pid}/status') as f:
            return next((int(l.split()[1]) * 1024 for l in f if l.startswith('RssAnon:')), 0)
    except OSError:
        return 0


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(n=2048, reps=10, device='cpu'):
    """Best fp32 GFLOPS of an n x n product, per library: on the CPU torch.mm (its BLAS: MKL in the x86 wheels,
    on its AVX2 path on AMD CPUs) and oneDNN (nn.LSTM's kernels, AVX-512 where the CPU has it), up to 2x apart;
    on CUDA cuBLAS with TF32 off. Returns {library: GFLOPS, 'gflops': the highest}."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    runs = {}
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        runs['cublas'] = lambda: (torch.mm(a, b), torch.cuda.synchronize())
    else:
        runs['blas'] = lambda: torch.mm(a, b)
        try:  # oneDNN's own product: an inner-product primitive on oneDNN tensors (no LSTM involved)
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


def merge_peaks(*peaks):
    """The highest of each library's figure over repeated peak measurements (the least disturbed)."""
    return {k: max(p[k] for p in peaks if k in p) for k in set().union(*peaks)}


class Corpus:
    """The bench corpus as both paths see it: all its utterances, in label-table order."""

    def __init__(self, c):
        self.c = c
        df = read_label_table(c['label_csv'])
        self.fnames = [str(f) for f in df['FileName']]
        self.labels = df[LABEL_COLUMN['Act']].to_numpy(np.float64)
        self.norm = NormTerms.load(c['norm_dir'])
        self.y = self.norm.norm_label(self.labels, 'Act').astype(np.float32)

    def store(self):
        return open_store(self.c['store_dir'], self.c['feat_dir'], self.fnames, self.norm, progress=False)

    def ref_dataset(self):
        return RefDataset(self.c['feat_dir'], self.fnames, self.labels, self.c['norm_dir'], 'Act')


class Rows:
    """Utterances `idx` of a store, as the feature set scoring.predict_utterances reads."""

    def __init__(self, store, idx):
        self.store, self.idx = store, np.asarray(idx)

    def __len__(self):
        return len(self.idx)

    def gather(self, i, m, C, n, out=None):
        return self.store.gather(self.idx[i], m, C, n, out=out)


# ----------------------------------------------------------------------------------
# tasks

def task_data(c):
    """Utterances per second of the data pipeline alone: batches of random utterances -> float32 chunks and
    targets, the two pipelines alternating batch by batch."""
    corpus, B, rng, spec = Corpus(c), c['batch'], np.random.default_rng(0), ModelSpec()
    s = corpus.store()
    buf = np.empty((B * spec.chunks_per_utterance, spec.chunk_frames, s.feat_dim), np.float32)  # reused
    ds = corpus.ref_dataset()
    loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=True, num_workers=c['ref_workers'],
                                         collate_fn=ref_collate)
    it = iter(loader)

    def ours():
        idx = rng.choice(len(s), B, replace=False)
        return torch.from_numpy(s.gather(idx, spec.chunk_frames, spec.chunks, spec.scale, out=buf)), corpus.y[idx]

    def ref():
        nonlocal it
        x, y = next(it, (None, None))
        if x is None:
            it = iter(loader)
            x, y = next(it)
        return x.float(), y.float()  # the published model input cast
    times = {'ref': [], 'ours': []}
    for i in range(c['data_batches'] + 1):  # the first round warms up
        for p, fn in (('ref', ref), ('ours', ours)):
            t = timed(fn)
            if i:
                times[p].append(t)
    return {p: {'utt_per_s': B / min(t), 'batch_ms': 1000 * min(t)} for p, t in times.items()}


class Pipeline:
    """One head on one pipeline, as steps timed one by one, from the same seeded weights on both pipelines.
      ours       training.py's batches and step (CPU streams), no-grad validation, scoring.predict_utterances;
      reference  Dataset + collate (float64, cast at the model), looped head, validation with autograd on,
                 scoring one utterance at a time with autograd on."""

    def __init__(self, c, corpus, pipeline):
        self.c, self.corpus, self.ours, self.B = c, corpus, pipeline == 'ours', c['batch']
        self.device = torch.device(c['device'])
        torch.manual_seed(0)
        self.model = (build_model(ModelSpec(head=c['head'])) if self.ours else LoopedHeadNet(c['head'])).to(self.device)
        if self.ours:  # our scripts' default: the LSTM as parallel streams on CPU, one per torch thread
            use_cpu_streams(self.model, self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.data = corpus.store() if self.ours else corpus.ref_dataset()
        self.train_it = None

    def batch(self, idx):
        if self.ours:
            return make_batch(self.data, self.corpus.y, idx, self.model.spec, self.device)
        x, y = next(iter(torch.utils.data.DataLoader(self.data, batch_size=len(idx), sampler=idx,
                                                     num_workers=self.c['ref_workers'], collate_fn=ref_collate)))
        return x.to(self.device).float(), y.to(self.device).float()

    def score(self, part):
        """Scores utterances `part`: (wall s, model s, predictions)."""
        self.model.eval()
        t0 = time.perf_counter()
        if self.ours:
            preds, model_s = predict_utterances(self.model, Rows(self.data, part), self.device)
            return time.perf_counter() - t0, model_s, preds
        model_s, preds = 0.0, []
        for i in part:
            x = torch.from_numpy(ref_chunk_split([self.data[i][0]])).to(self.device).float()
            t1 = time.perf_counter()
            preds.append(self.model(x).data.cpu().numpy().reshape(-1))
            model_s += time.perf_counter() - t1
        return time.perf_counter() - t0, model_s, np.concatenate(preds)

    def validate(self, idx):
        """One validation batch in eval mode (ours without autograd, the reference with): seconds."""
        self.model.eval()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(not self.ours):
            x, y = self.batch(idx)
            cc_coef(self.model(x), y).item()
        return time.perf_counter() - t0

    def train_step(self, idx):
        """One training iteration on a batch: (data s, model step s)."""
        self.model.train()
        t0 = time.perf_counter()
        if self.ours:
            x, y = self.batch(idx)
        else:  # the published loop: one DataLoader over the whole set in random order, `ref_workers` workers
            x, y = next(self.train_it, (None, None)) if self.train_it else (None, None)
            if x is None:
                self.train_it = iter(torch.utils.data.DataLoader(
                    self.data, batch_size=self.B, shuffle=True, num_workers=self.c['ref_workers'], collate_fn=ref_collate))
                x, y = next(self.train_it)
            x, y = x.to(self.device).float(), y.to(self.device).float()
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
    """One head, both pipelines interleaved (reference, ours, reference, ...); each figure the best of its
    repetitions. Scoring first (fresh seeded weights: predictions comparable), then validation, then training."""
    corpus = Corpus(c)
    N, B, rng = len(corpus.fnames), c['batch'], np.random.default_rng(0)
    pipes = {p: Pipeline(c, corpus, p) for p in ('ref', 'ours')}
    score, val, steps, preds = ({p: [] for p in pipes} for _ in range(4))
    for part in np.array_split(np.arange(min(c['test_utts'], N)), 3):
        for p, pipe in pipes.items():
            wall, model_s, pr = pipe.score(part)
            score[p].append((wall / len(part), model_s / len(part)))
            preds[p].append(pr)
    val_idx = rng.permutation(N)[:c['val_utts']]
    for idx in iter_batches(val_idx, B):
        for p, pipe in pipes.items():
            val[p].append(pipe.validate(idx) / len(idx))
    order = rng.permutation(N)
    for i in range(c['iters'] + 1):  # the first is a warm-up
        for p, pipe in pipes.items():
            t = pipe.train_step(order[(i * B) % N:(i * B) % N + B])
            if i:
                steps[p].append(t)
    out = {'max_pred_diff': float(np.max(np.abs(np.concatenate(preds['ref']) - np.concatenate(preds['ours']))))}
    for p, pipe in pipes.items():
        o = out[p] = {'val_utts': len(val_idx), 'val_s': min(val[p]) * len(val_idx)}
        o['score_ms'], o['score_model_ms'] = (1000 * min(r[k] for r in score[p]) for k in (0, 1))
        o['data_s'], o['step_s'] = min(t[0] for t in steps[p]), min(t[1] for t in steps[p])
        o['it_s'] = o['data_s'] + o['step_s']
        o['gflops'] = pipe.model.estimate_flops(B, train=True) / o['step_s'] / 1e9
    return out


def encoder_specs(head):
    """One spec per registered encoder (model.ENCODERS), all with the same head."""
    return [ModelSpec(encoder=name, head=head) for name in ENCODERS]


def task_encoders(c):
    """Scoring per utterance of every registered encoder (scoring.predict_utterances, CPU streams where they
    apply), the encoders in turn round after round; best round of each. An encoder that fails is reported."""
    corpus, device = Corpus(c), torch.device(c['device'])
    rows, models, out = Rows(corpus.store(), np.arange(min(c['test_utts'], len(corpus.fnames)))), {}, {}
    for spec in encoder_specs(c['encoder_head']):
        try:
            torch.manual_seed(0)
            models[spec.encoder] = use_cpu_streams(build_model(spec).to(device), device)
        except Exception as e:  # an encoder being added may not build yet: say so, measure the others
            out[spec.encoder] = {'head': spec.head, 'error': f'{type(e).__name__}: {e}'[:200]}
    rounds = {k: [] for k in models}
    for _ in range(3):
        for k, m in models.items():
            t0 = time.perf_counter()
            _, model_s = predict_utterances(m, rows, device)
            rounds[k].append((time.perf_counter() - t0, model_s))
    for k, m in models.items():
        wall, model_s = min(r[0] for r in rounds[k]), min(r[1] for r in rounds[k])
        out[k] = {'head': m.spec.head, 'score_ms': 1000 * wall / len(rows), 'model_ms': 1000 * model_s / len(rows),
                  'gflops': m.estimate_flops(len(rows)) / model_s / 1e9,
                  'params': sum(p.numel() for p in m.parameters())}
    return out


# ----------------------------------------------------------------------------------
# whole processes, timed and RSS-sampled from outside

def run_process(cmd, cwd):
    """Run a command: wall seconds, the peak RssAnon of its main process (sampled: the kernel keeps no peak of
    anonymous memory, and the store's file pages are not the process's), its output."""
    with tempfile.TemporaryFile('w+') as log_file:  # a file, not a pipe: a full pipe would stall the process
        t0, peak = time.perf_counter(), 0
        p = subprocess.Popen(cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, TQDM_DISABLE='1', **CHILD_ENV))
        while p.poll() is None:
            peak = max(peak, rss_anon(p.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        log_file.seek(0)
        text = log_file.read()
    if p.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {p.returncode}):\n{text[-3000:]}')
    return {'wall_s': wall, 'peak_rss': peak, 'output': text}


def process_floor(repeat=2):
    """Seconds a bare `python -c "import torch, scipy.io, pandas"` takes: the start-up every script pays."""
    return min(run_process([sys.executable, '-c', 'import torch, scipy.io, pandas'], ROOT)['wall_s'] for _ in range(repeat))


def whole_processes(c, work, iters, repeat):
    """Our training.py/testing.py against `bench.py ref-train|ref-test`, whole processes from a cold start (our
    store deleted first, built inside the timed run), alternating `repeat` times; the fastest run of each counts.
    Both testing runs score our checkpoint, so their CCCs must agree."""
    py, store = sys.executable, os.path.join(work, 'accept_store')
    corpus = ['--feat-dir', c['feat_dir'], '--label-csv', c['label_csv'], '--norm-dir', c['norm_dir'], '--device', c['device']]
    args = ['-iter', str(iters), '-batch', str(c['batch']), '-emo', 'Act', '-atten', 'SelfAttenVec'] + corpus
    ours, ref = os.path.join(work, 'accept_ours'), os.path.join(work, 'accept_ref')
    for d in (ours, ref):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    bench = [py, os.path.join(ROOT, 'bench.py')]
    cmds = {'ours_train': [py, os.path.join(ROOT, 'training.py'), *args, '--out-dir', ours, '--seed', '0', '--store', store],
            'ref_train': bench + ['ref-train', *args, '--model-dir', ref, '--workers', str(c['process_workers'])],
            'ours_test': [py, os.path.join(ROOT, 'testing.py'), *args, '--model-dir', ours, '--store', store],
            'ref_test': bench + ['ref-test', *args, '--model-dir', ours]}  # our checkpoint: the same weights
    runs = {k: [] for k in cmds}
    for _ in range(repeat):
        for k, cmd in cmds.items():
            if k.startswith('ours'):
                shutil.rmtree(store, ignore_errors=True)  # cold: the store is built inside the run
            runs[k].append(run_process(cmd, ref if k.startswith('ref') else ours))
    runs['ours_test_warm'] = [run_process(cmds['ours_test'], ours)]  # the Test store in place, as later runs find it
    res = {'iters': iters, 'batch': c['batch'], 'repeat': repeat, 'floor_s': process_floor()}
    for k, rs in runs.items():
        best = min(rs, key=lambda r: r['wall_s'])
        res[k] = {'wall_s': best['wall_s'], 'walls': [r['wall_s'] for r in rs], 'peak_rss': max(r['peak_rss'] for r in rs)}
        if 'test' in k:
            lines = dict(l.split(': ', 1) for l in best['output'].splitlines() if ': ' in l)
            res[k]['ccc'], res[k]['model_ms'] = float(lines['Act-CCC']), float(lines['Avg. Time Cost(ms/uttr)'])
    return res


def rss_scaling(c, work, sizes, iters):
    """Peak RssAnon of our training.py on corpora of different sizes (the same distribution of lengths)."""
    from norm_para import compute_terms
    from synthetic import write_corpus
    out = {}
    for n in sizes:
        d = os.path.join(work, f'rss_{n}')
        feat_dir, label_csv = write_corpus(d, size=n, seed=1, min_frames=c['min_frames'], max_frames=c['max_frames'])
        compute_terms(read_label_table(label_csv), feat_dir, label_csv).save(os.path.join(d, 'NormTerm'))
        r = run_process([sys.executable, os.path.join(ROOT, 'training.py'), '-iter', str(iters), '-batch', str(c['batch']),
                         '-emo', 'Act', '-atten', 'SelfAttenVec', '--feat-dir', feat_dir, '--label-csv', label_csv,
                         '--norm-dir', os.path.join(d, 'NormTerm'), '--out-dir', os.path.join(d, 'Models'),
                         '--device', c['device'], '--seed', '0', '--store', os.path.join(d, 'store')], d)
        out[n] = {'peak_rss': r['peak_rss'], 'wall_s': r['wall_s']}
        shutil.rmtree(d, ignore_errors=True)
    return out


def project(h, build=None):
    """The published run (-iter 5000, validation of 6k utterances every 50 iterations) and testing of 10k
    utterances, from one head's figures; `build`: the store build, charged once per store (ours)."""
    train = HEADLINE['iterations'] * h['it_s'] + \
        HEADLINE['iterations'] // HEADLINE['val_every'] * V16['validation'] * h['val_s'] / h['val_utts']
    test = V16['test'] * h['score_ms'] / 1000
    if build:
        train += (V16['train'] + V16['validation']) / build['utt_per_s']
        test += V16['test'] / build['utt_per_s']
    return {'train_h': train / 3600, 'test_min': test / 60}


# ----------------------------------------------------------------------------------
# the whole run

def prepare(a, work):
    """The synthetic corpus and its NormTerm (kept in `work` between runs of the same sizes) and its feature
    store, built from scratch and timed (the one-off pass the projections charge to our pipeline)."""
    from norm_para import compute_terms
    from synthetic import write_corpus
    cdir = os.path.join(work, f'corpus_{a.utts}_{a.min_frames}_{a.max_frames}')
    feat_dir, label_csv = os.path.join(cdir, 'feat_mat'), os.path.join(cdir, 'labels_concensus.csv')
    if not os.path.isfile(label_csv):
        write_corpus(cdir, size=a.utts, seed=0, min_frames=a.min_frames, max_frames=a.max_frames, splits=SPLITS)
    df = read_label_table(label_csv)
    if not os.path.isdir(os.path.join(cdir, 'NormTerm')):
        compute_terms(df, feat_dir, label_csv).save(os.path.join(cdir, 'NormTerm'))
    c = dict(vars(a), feat_dir=feat_dir, label_csv=label_csv, norm_dir=os.path.join(cdir, 'NormTerm'),
             store_dir=os.path.join(cdir, 'store'))
    shutil.rmtree(c['store_dir'], ignore_errors=True)
    seconds = timed(Corpus(c).store)
    counts = df['Split_Set'].value_counts()
    corpus = {'utts': len(df), **{k.lower(): int(counts.get(k, 0)) for k in ('Train', 'Validation', 'Test')}}
    build = {'build_s': seconds, 'utt_per_s': len(df) / seconds, 'utts': len(df)}
    log('store build', utts=len(df), seconds=seconds, utt_per_s=build['utt_per_s'])
    return c, corpus, build


def run_all(a, work):
    """Every measurement of the run: the result dict the report is written from."""
    c, corpus, build = prepare(a, work)
    R = {'corpus': corpus, 'build': build, 'peak': dict(matmul_peak(a.peak_size, device=a.device)), 'heads': {}}
    log('matmul peak', **R['peak'])
    R['data'] = task_data(c)
    log('data pipeline', ref_utt_per_s=R['data']['ref']['utt_per_s'], ours_utt_per_s=R['data']['ours']['utt_per_s'])
    for head in a.heads:
        h = R['heads'][head] = task_head(dict(c, head=head))
        h['ref']['proj'], h['ours']['proj'] = project(h['ref']), project(h['ours'], build)
        for p in ('ref', 'ours'):
            log('head', head=head, pipeline=p, **{k: v for k, v in h[p].items() if k != 'proj'})
    R['encoders'] = task_encoders(c)
    lstm = R['encoders'].get('LSTM', {}).get('score_ms')
    for name, e in R['encoders'].items():
        e['vs_lstm'] = e['score_ms'] / lstm if lstm and 'score_ms' in e else None
        log('scoring per encoder', encoder=name, **e)
    if not a.no_processes:
        R['processes'] = whole_processes(c, work, a.process_iters, a.process_repeat)
        log('whole processes', **{f'{k}_s': v['wall_s'] for k, v in R['processes'].items() if isinstance(v, dict)})
    if a.rss_scaling:
        R['rss_scaling'] = rss_scaling(c, work, a.rss_sizes, a.rss_iters)
        for n, v in R['rss_scaling'].items():
            log('rss scaling', utts=n, peak_rss_mib=v['peak_rss'] / 2**20, wall_s=v['wall_s'])
    R['peak'] = merge_peaks(R['peak'], matmul_peak(a.peak_size, device=a.device))  # again: keep the quieter one
    return R
