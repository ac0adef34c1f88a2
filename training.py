"""Train a chunk-level attention SER model with the CCC loss (the reference's procedure).

    python training.py -iter 5000 -batch 128 -emo Dom -atten SelfAttenVec \\
        [--feat-dir DIR --label-csv FILE --norm-dir DIR --out-dir ./Models --device auto --seed S]

Adam (lr 1e-4) over epochs of shuffled Train batches; every 50 iterations (and at the last one)
the whole validation split is scored and the model is saved when the validation loss is strictly
lower than the best so far. Writes, in --out-dir:
  LSTM_iter{iter}_batch{batch}_ChunkSeq2One_{atten}_{emo}.pth.tar   the best model, a plain state_dict
  ... .json          what rebuilds and checks it (head, sizes, NormTerm fingerprint, iteration, val loss)
  ... .history.csv   every validation;   ... .png   the loss curves
"""
import csv
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from model import build_model, checkpoint_name, config_path
from utils import (DEFAULT_C, DEFAULT_M, DEFAULT_N, ArgParser, DynamicChunkSplitData, MatFeatures, NormTerms,
                   UserError, add_corpus_args, add_seed_args, add_system_args, atomic_torch_save, cc_coef,
                   ensure_writable_dir, feature_path, iter_batches, read_label_table, require_corpus, resolve_split,
                   run_cli, select_device, set_seed, split_items, write_json)


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
    g.add_argument('--out-dir', default='./Models', help='where checkpoints go (default ./Models)')
    add_system_args(p)
    args = p.parse_args(argv)
    for name in ('iterations', 'batch_size', 'chunk_frames', 'chunks', 'scale', 'val_every'):
        if getattr(args, name) < 1:
            raise UserError(f'--{name.replace("_", "-")} must be at least 1')
    if args.batch_size < 2:
        raise UserError('-batch must be at least 2: the CCC loss of one utterance is undefined')
    return args


def load_split(df, which, args, norm):
    """(MatFeatures, normalised labels (N,) float32, split name) of one split; checks every file is there."""
    split = resolve_split(df, which, args.label_csv)
    fnames, y = split_items(df, split, args.emo, args.label_csv)
    missing = [f for f in fnames if not os.path.isfile(feature_path(args.feat_dir, f))]
    if missing:
        raise UserError(f'{feature_path(args.feat_dir, missing[0])}: feature file of a {split} row not found '
                        f'({len(missing)} missing)')
    return MatFeatures(args.feat_dir, fnames, norm), norm.norm_label(y, args.emo).astype(np.float32), split


def make_batch(feats, labels, idx, cfg, device):
    """Utterance indices -> chunks (b*C', m, F) and targets (b,) on the device."""
    x = DynamicChunkSplitData([feats[i] for i in idx], cfg['chunk_frames'], cfg['chunks'], cfg['scale'])
    return torch.from_numpy(x).to(device), torch.from_numpy(labels[idx]).to(device)


@torch.no_grad()
def validate(model, feats, labels, cfg, device, batch_size):
    """Unweighted mean of the per-batch CCC losses over the validation split, in a fixed order."""
    model.eval()
    losses = [cc_coef(model(x), y).item()
              for x, y in (make_batch(feats, labels, b, cfg, device) for b in iter_batches(np.arange(len(labels)), batch_size))]
    model.train()
    return float(np.mean(losses))


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


def main(argv=None):
    args = parse_args(argv)
    require_corpus(args)
    device = select_device(args.device)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    set_seed(seed)
    norm = NormTerms.load(args.norm_dir)
    df = read_label_table(args.label_csv)
    t0 = time.perf_counter()
    train_x, train_y, _ = load_split(df, 'train', args, norm)
    val_x, val_y, val_split = load_split(df, 'validation', args, norm)
    if len(train_y) < 2:
        raise UserError(f'{args.label_csv}: the Train split needs at least 2 utterances')
    if len(val_y) < 2:
        raise UserError(f'{args.label_csv}: the {val_split} split needs at least 2 utterances')
    print(f'corpus: {len(train_y)} train, {len(val_y)} {val_split.lower()} utterances (checked in {time.perf_counter() - t0:.1f} s)')
    out_dir = ensure_writable_dir(args.out_dir)

    cfg = {'atten': args.atten, 'emo': args.emo, 'feat_dim': norm.feat_dim, 'hidden_dim': 130, 'num_layers': 2,
           'chunk_frames': args.chunk_frames, 'chunks': args.chunks, 'scale': args.scale,
           'norm_dir': os.path.abspath(args.norm_dir), 'norm_fingerprint': norm.fingerprint(),
           'corpus': {'feat_dir': os.path.abspath(args.feat_dir), 'label_csv': os.path.abspath(args.label_csv)},
           'iterations': args.iterations, 'batch_size': args.batch_size, 'lr': args.lr, 'seed': seed}
    model = build_model(cfg).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    name = checkpoint_name(args.iterations, args.batch_size, args.atten, args.emo)
    ckpt = os.path.join(out_dir, name)
    base = ckpt[:-len('.pth.tar')]
    print(f'training {args.atten} on {args.emo} for {args.iterations} iterations, batch {args.batch_size}, '
          f'device {device}, seed {seed} -> {ckpt}')

    gen = torch.Generator().manual_seed(seed)  # the epochs' shuffles
    best, history, recent = float('inf'), [], []
    it, t_last = 0, time.perf_counter()
    bar = tqdm(total=args.iterations, unit='it', disable=None, dynamic_ncols=True)
    while it < args.iterations:
        order = torch.randperm(len(train_y), generator=gen).numpy()
        for idx in iter_batches(order, args.batch_size):
            x, y = make_batch(train_x, train_y, idx, cfg, device)
            loss = cc_coef(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            recent.append(loss.item())
            bar.update(1)
            if it % args.val_every == 0 or it == args.iterations:
                val_loss = validate(model, val_x, val_y, cfg, device, args.batch_size)
                saved = val_loss < best
                if saved:
                    best = val_loss
                    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, ckpt)
                    write_json(config_path(ckpt), dict(cfg, iter_saved=it, val_loss=val_loss, torch=torch.__version__))
                now = time.perf_counter()
                history.append({'iter': it, 'train_loss': float(np.mean(recent)), 'val_loss': val_loss,
                                'best_val_loss': best, 'saved': int(saved), 'elapsed_s': round(now - t0, 3)})
                tqdm.write(f'iter {it} | train loss {np.mean(recent):.4f} | val loss {val_loss:.4f} | '
                           f'best {best:.4f}{" | saved" if saved else ""} | {(now - t_last) / len(recent):.3f} s/it')
                recent, t_last = [], now
                write_history(base + '.history.csv', history)
                plot_losses(base + '.png', history)
            if it == args.iterations:
                break
    bar.close()
    print(f'best val loss {best:.4f} -> {ckpt}')
    return 0


if __name__ == '__main__':
    run_cli(main)
