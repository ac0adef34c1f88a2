"""Train a chunk-level attention SER model with the CCC loss (the reference's procedure).

    python training.py -iter 5000 -batch 128 -emo Dom -atten SelfAttenVec \\
        [--feat-dir DIR --label-csv FILE --norm-dir DIR --out-dir ./Models --device auto --seed S]
    torchrun --standalone --nproc_per_node=N training.py ...     (same arguments; -batch is the global batch)

Adam (lr 1e-4) over epochs of shuffled Train batches; every 50 iterations (and at the last one)
the whole validation split is scored and the model is saved when the validation loss is strictly
lower than the best so far. Writes, in --out-dir:
  LSTM_iter{iter}_batch{batch}_ChunkSeq2One_{atten}_{emo}.pth.tar   the best model, a plain state_dict
  ... .json          what rebuilds and checks it (head, sizes, NormTerm fingerprint, iteration, val loss)
  ... .history.csv   every validation;   ... .png   the loss curves
  ... .resume.pt     the full training state at the last validation or interruption (--resume continues)
"""
import csv
import gc
import inspect
import io
import os
import random
import signal
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from model import build_model, checkpoint_name, config_path, use_cpu_streams
from store import open_features
from utils import (DEFAULT_C, DEFAULT_M, DEFAULT_N, ArgParser, NormTerms,
                   UserError, add_corpus_args, add_seed_args, add_system_args, atomic_torch_save, cc_coef, chunk_batch,
                   check_features, ensure_writable_dir, require_feature_files, iter_batches, read_label_table, require_corpus,
                   resolve_split, run_cli, select_device, set_seed, split_items, write_json)

# settings a resumed run must share with the run it continues
RESUME_KEYS = ('atten', 'emo', 'iterations', 'batch_size', 'chunk_frames', 'chunks', 'scale', 'lr', 'val_every',
               'feat_dir', 'label_csv', 'norm_fingerprint', 'world_size', 'amp')


def parse_args(argv):
    p = ArgParser(prog='training.py', description=__doc__.split('\n')[0])
    add_seed_args(p)
    add_corpus_args(p)
    g = p.add_argument_group('model')
    g.add_argument('--chunk-frames', type=int, default=DEFAULT_M, help=f'm, frames per chunk (default {DEFAULT_M} ≈ 1 s)')
    g.add_argument('--chunks', type=int, default=DEFAULT_C, help=f'C, chunks per utterance (default {DEFAULT_C})')
    g.add_argument('--scale', type=int, default=DEFAULT_N, help=f'n, chunk-count scale: n*C chunks (default {DEFAULT_N})')
    g = p.add_argument_group('training')
    g.add_argument('--lr', type=float, default=1e-4, help='Adam learning rate (default 1e-4)')
    g.add_argument('--val-every', type=int, default=50, help='validate every N iterations (default 50)')
    g.add_argument('--seed', type=int, default=None, help='random seed (default: drawn and logged)')
    g.add_argument('--resume', action='store_true', help='continue the interrupted run of these settings')
    g.add_argument('--out-dir', default='./Models', help='where checkpoints go (default ./Models)')
    g.add_argument('--amp', choices=['bf16', 'fp16'], default=None, help='mixed precision, CUDA only (default off: fp32)')
    add_system_args(p)
    args = p.parse_args(argv)
    flags = {'iterations': '-iter', 'batch_size': '-batch', 'chunk_frames': '--chunk-frames', 'chunks': '--chunks',
             'scale': '--scale', 'val_every': '--val-every'}
    for name, flag in flags.items():
        if getattr(args, name) < 1:
            raise UserError(f'{flag} must be at least 1')
    if args.batch_size < 2:
        raise UserError('-batch must be at least 2: the CCC loss of one utterance is undefined')
    return args


# ----------------------------------------------------------------------------------
# data

def load_split(df, which, args, norm, progress=True):
    """(features, normalised labels (N,) float32, split name) of one split."""
    split = resolve_split(df, which, args.label_csv)
    fnames, y = split_items(df, split, args.emo, args.label_csv)
    require_feature_files(args.feat_dir, fnames, split)
    # building a store reads every file, so a corrupt one is named here and not at iteration 4000
    feats = open_features(args.store, args.feat_dir, fnames, norm, progress=progress)
    return feats, norm.norm_label(y, args.emo).astype(np.float32), split


def make_batch(feats, labels, idx, cfg, device):
    """Utterance indices -> chunks (b*C', m, F) float32 and targets (b,) on the device."""
    x = torch.from_numpy(chunk_batch(feats, idx, cfg['chunk_frames'], cfg['chunks'], cfg['scale']))
    y = torch.from_numpy(labels[idx])
    if device.type == 'cuda':  # page-locked, so the copy runs asynchronously beside the compute
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# torch.distributed.nn.functional's collectives are the ones with autograd; their deprecation notice is noise here
warnings.filterwarnings('ignore', message='torch.distributed.nn.functional', category=FutureWarning)


# ----------------------------------------------------------------------------------
# distributed training: N processes train the objective of one

class Dist:
    """Rank and world of this process; one process when not started by torchrun."""

    def __init__(self, device):
        self.world = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            if device.type == 'cuda':
                self.device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
                torch.cuda.set_device(self.device)
            dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')

    @property
    def main(self):
        return self.rank == 0

    def shard(self, idx):
        """This rank's part of a global batch, and the sizes of every rank's part."""
        parts = np.array_split(idx, self.world)
        return parts[self.rank], [len(p) for p in parts]

    def gather(self, t, sizes):
        """Concatenate every rank's (n_r,) tensor in rank order, keeping autograd (for the global CCC)."""
        if self.world == 1:
            return t
        from torch.distributed.nn.functional import all_gather
        pad = torch.zeros(max(sizes), dtype=t.dtype, device=t.device)
        pad = torch.cat([t, pad[len(t):]])  # all_gather wants equal shapes
        return torch.cat([g[:n] for g, n in zip(all_gather(pad), sizes)])

    def sum(self, values, op=dist.ReduceOp.SUM):
        """All-reduced sum (or other op) of a list of floats (no autograd)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t, op=op)
        return t.tolist()


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are over the global batch of all ranks (nn.SyncBatchNorm is
    GPU-only). Two all-reduces with autograd keep the gradients those of one process on the whole batch."""

    def forward(self, x):  # x: (N_local, H)
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        n = all_reduce(torch.tensor([float(x.shape[0])], device=x.device))
        mean = all_reduce(x.sum(0)) / n
        var = all_reduce(((x - mean) ** 2).sum(0)) / n  # biased, for normalising
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)  # unbiased, as BatchNorm1d
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def wrap_model(model, d):
    """Global batch norm and DDP when distributed; the model itself otherwise."""
    if d.world == 1:
        return model
    gbn = GlobalBatchNorm1d(model.bn.num_features, eps=model.bn.eps, momentum=model.bn.momentum).to(d.device)
    gbn.load_state_dict(model.bn.state_dict())
    model.bn = gbn
    # buffers need no sync in forward: the global batch norm gives every rank the same running statistics
    # (torch >= 2.13 renamed broadcast_buffers to forward_sync_buffers)
    new = 'forward_sync_buffers' in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    no_sync = {'forward_sync_buffers' if new else 'broadcast_buffers': False}
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == 'cuda' else None,
                                               **no_sync)


def end_distributed():
    """Leave the process group. Collect first: DDP's reference cycles would otherwise keep the gloo group alive
    until interpreter exit, where its threads are torn down unjoined (seen as an abort, 'terminate called')."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def forward_backward(net, x, y, d=None, sizes=None, amp=None, scaler=None):
    """One step's CCC loss (of the global batch under torchrun: d, sizes), its gradients accumulated. With CPU
    streams (model.py) the LSTM's backward runs in the streams too: the head's backward stops at the chunk
    encodings, detached, and the streams carry their gradient back through their pieces of the LSTM at once."""
    streams = getattr(net, 'streams', None)  # None under DDP (net is the wrapper) and off CPU
    if streams is not None and amp is None and streams.applies(x):
        parts = streams.forward(net.lstm, x)  # pieces x (n_i, H)
        e = torch.cat([p.detach() for p in parts]).requires_grad_()  # (B*C', H)
        loss = cc_coef(net.head(e), y)
        loss.backward()
        streams.backward(net.lstm, parts, e.grad)
        return loss
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        pred = net(x)
    gather = d.gather if d is not None else (lambda t, _: t)
    loss = cc_coef(gather(pred.float(), sizes), gather(y, sizes))
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss


# ----------------------------------------------------------------------------------
# validation, logging

@torch.no_grad()
def validate(model, feats, labels, cfg, d, batch_size):
    """Unweighted mean of the per-batch CCC losses over the validation split, in a fixed order; batches are
    shared out over the ranks and the sums reduced, so every rank takes the same checkpoint decision.
    `model` is the bare module, not the DDP wrapper: a rank may have no batch, and DDP's forward syncs."""
    model.eval()
    batches = iter_batches(np.arange(len(labels)), batch_size)
    total = 0.0
    for b in batches[d.rank::d.world]:
        x, y = make_batch(feats, labels, b, cfg, d.device)
        total += cc_coef(model(x).float(), y).item()
    model.train()
    return d.sum([total])[0] / len(batches)


class InlineExecutor:
    """ThreadPoolExecutor's submit/shutdown, run at once in the calling thread."""

    def submit(self, fn, *args):
        f = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self, **kwargs):
        pass


def plot_losses(path, history):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h['train_loss'] for h in history], label='training (mean of the iterations before)')
    ax.plot([h['val_loss'] for h in history], label='validation')
    ax.set_xlabel('validation index')
    ax.set_ylabel('1 - CCC')
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_history(path, history):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


# ----------------------------------------------------------------------------------
# resume state: everything that makes the rest of the run the same as an uninterrupted one

def rng_state():
    np_state = np.random.get_state()
    return {'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]), 'python': random.getstate()}


def set_rng_state(s):
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])
    np.random.set_state((s['numpy'][0], s['numpy'][1].numpy(), *s['numpy'][2:]))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s['python']))


def load_resume(path, settings, seed_arg):
    if not os.path.isfile(path):
        raise UserError(f'{path}: no training state to resume (a run saves it at its first validation)')
    try:
        st = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'{path}: not a readable training state ({type(e).__name__})')
    for k in RESUME_KEYS:
        if st['settings'].get(k) != settings.get(k):
            raise UserError(f'{path}: saved with {k}={st["settings"].get(k)!r}, this run has {settings.get(k)!r}; '
                            f'resume with the same settings')
    if seed_arg is not None and seed_arg != st['seed']:
        raise UserError(f'{path}: saved with --seed {st["seed"]}, this run has --seed {seed_arg}')
    return st


# ----------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    require_corpus(args)
    if args.amp and select_device(args.device).type != 'cuda':
        raise UserError('--amp needs a CUDA device; the CPU path is fp32 only')
    d = Dist(select_device(args.device))
    say = print if d.main else (lambda *a, **k: None)

    norm = NormTerms.load(args.norm_dir)
    df = read_label_table(args.label_csv)
    t0 = time.perf_counter()
    train_x, train_y, _ = load_split(df, 'train', args, norm, progress=d.main)
    val_x, val_y, val_split = load_split(df, 'validation', args, norm, progress=d.main)
    for n, s in ((len(train_y), 'Train'), (len(val_y), val_split)):
        if n < 2:
            raise UserError(f'{args.label_csv}: the {s} split needs at least 2 utterances')
    if d.main and args.store is None:  # read every file once now, so a corrupt one fails here, not at iteration 4000
        check_features(args.feat_dir, train_x.fnames + val_x.fnames, norm.feat_dim)
    say(f'corpus: {len(train_y)} train, {len(val_y)} {val_split.lower()} utterances (checked in '
        f'{time.perf_counter() - t0:.1f} s)')
    out_dir = ensure_writable_dir(args.out_dir) if d.main else args.out_dir
    if args.batch_size < 2 * d.world:
        raise UserError(f'-batch {args.batch_size} is too small for {d.world} processes (at least {2 * d.world})')

    name = checkpoint_name(args.iterations, args.batch_size, args.atten, args.emo)
    ckpt = os.path.join(out_dir, name)
    base = ckpt[:-len('.pth.tar')]
    state_path = base + '.resume.pt'
    cfg = {'atten': args.atten, 'emo': args.emo, 'feat_dim': norm.feat_dim, 'hidden_dim': 130, 'num_layers': 2,
           'chunk_frames': args.chunk_frames, 'chunks': args.chunks, 'scale': args.scale,
           'norm_dir': os.path.abspath(args.norm_dir), 'norm_fingerprint': norm.fingerprint(),
           'corpus': {'feat_dir': os.path.abspath(args.feat_dir), 'label_csv': os.path.abspath(args.label_csv)},
           'iterations': args.iterations, 'batch_size': args.batch_size, 'lr': args.lr}
    settings = dict(cfg, val_every=args.val_every, world_size=d.world, amp=args.amp,
                    feat_dir=cfg['corpus']['feat_dir'], label_csv=cfg['corpus']['label_csv'])
    st = load_resume(state_path, settings, args.seed) if args.resume else None
    if st is not None and st['finished']:
        say(f'{state_path}: this run finished at iteration {st["iter"]}; nothing to resume')
        return 0
    seed = st['seed'] if st else args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    cfg['seed'] = seed
    set_seed(seed)  # the same initial weights on every rank

    model = build_model(cfg).to(d.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)  # the epochs' shuffles, the same on every rank
    it, best, history, recent, batches, pos = 0, float('inf'), [], [], [], 0
    if st:
        model.load_state_dict(st['model'])
        opt.load_state_dict(st['optimizer'])
        gen.set_state(st['shuffle_rng'])
        set_rng_state(st['rng'][d.rank])
        it, best, history, recent, pos = st['iter'], st['best'], st['history'], st['recent'], st['pos']
        batches = iter_batches(st['order'].numpy(), args.batch_size, min_last=2 * d.world)
    else:
        torch.manual_seed(seed + d.rank)  # dropout masks differ between ranks
    if d.world == 1:
        use_cpu_streams(model, d.device, args.cpu_streams)
    net = wrap_model(model, d)
    net.train()
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler('cuda', enabled=args.amp == 'fp16')
    say(f'training {args.atten} on {args.emo} for {args.iterations} iterations, batch {args.batch_size}, device '
        f'{d.device}' + (f' x {d.world} processes' if d.world > 1 else '') + f', seed {seed} -> {ckpt}'
        + (f' (resumed at iteration {it})' if st else ''))

    def save_state(finished=False):
        rngs = [rng_state()]
        if d.world > 1:  # every rank's RNG states, sent as torch.save bytes (all_gather_object mangles tensors)
            buf = io.BytesIO()
            torch.save(rngs[0], buf)
            blobs = [None] * d.world
            dist.all_gather_object(blobs, buf.getvalue())
            rngs = [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]
        if d.main:
            atomic_torch_save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'iter': it, 'best': best,
                               'history': history, 'recent': recent, 'order': torch.from_numpy(np.concatenate(batches))
                               if batches else torch.zeros(0, dtype=torch.long), 'pos': pos,
                               'shuffle_rng': gen.get_state(), 'rng': rngs, 'seed': seed, 'settings': settings,
                               'finished': finished}, state_path)

    stop = {'signal': 0}  # SIGINT/SIGTERM: finish the iteration, save, exit
    old_handlers = {s: signal.signal(s, lambda num, _: stop.update(signal=num)) for s in (signal.SIGINT, signal.SIGTERM)}
    def fetch(batch):  # this rank's share of a global batch, on the device
        local, sizes = d.shard(batch)
        return (sizes, *make_batch(train_x, train_y, local, cfg, d.device))

    # on CUDA a thread reads the next batch of the epoch while the GPU computes this one; on the CPU that thread
    # would only compete with torch's own threads for the cores, so batches are read inline
    loader = ThreadPoolExecutor(1) if d.device.type == 'cuda' else InlineExecutor()
    pending = None
    bar = tqdm(total=args.iterations, initial=it, unit='it', disable=None if d.main else True, dynamic_ncols=True)
    t_last = time.perf_counter()
    try:
        while it < args.iterations:
            if pos == len(batches):  # a new epoch in a fresh random order
                order = torch.randperm(len(train_y), generator=gen).numpy()
                batches, pos, pending = iter_batches(order, args.batch_size, min_last=2 * d.world), 0, None
            current = pending or loader.submit(fetch, batches[pos])
            pos += 1
            pending = loader.submit(fetch, batches[pos]) if pos < len(batches) else None
            sizes, x, y = current.result()
            opt.zero_grad(set_to_none=True)
            loss = forward_backward(net, x, y, d, sizes, amp, scaler)
            scaler.step(opt)
            scaler.update()
            it += 1
            recent.append(loss.item())
            bar.update(1)
            if it % args.val_every == 0 or it == args.iterations:
                val_loss = validate(model, val_x, val_y, cfg, d, args.batch_size)
                saved = val_loss < best
                best = min(best, val_loss)
                now = time.perf_counter()
                history.append({'iter': it, 'train_loss': float(np.mean(recent)), 'val_loss': val_loss,
                                'best_val_loss': best, 'saved': int(saved), 'elapsed_s': round(now - t0, 3)})
                if d.main:
                    if saved:
                        atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, ckpt)
                        write_json(config_path(ckpt), dict(cfg, iter_saved=it, val_loss=val_loss, torch=torch.__version__))
                    write_history(base + '.history.csv', history)
                    plot_losses(base + '.png', history)
                    tqdm.write(f'iter {it} | train loss {np.mean(recent):.4f} | val loss {val_loss:.4f} | '
                               f'best {best:.4f}{" | saved" if saved else ""} | {(now - t_last) / len(recent):.3f} s/it')
                recent, t_last = [], now
                save_state(finished=it == args.iterations)
            if d.world > 1:  # every rank stops at the same iteration
                stop['signal'] = int(d.sum([stop['signal']], dist.ReduceOp.MAX)[0])
            if stop['signal'] and it < args.iterations:
                save_state()
                say(f'interrupted at iteration {it}: state saved to {state_path}; continue with --resume')
                return 128 + stop["signal"]
    finally:
        loader.shutdown(cancel_futures=True)
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    say(f'best val loss {best:.4f} -> {ckpt}')
    return 0


if __name__ == '__main__':
    try:
        run_cli(main)
    finally:
        end_distributed()
