"""The reference-style path: the published code's costs in our own words (per-item .mat load and float64
normalisation, its DataLoader and collate, the per-utterance aggregation loop, autograd-on validation,
one-at-a-time scoring), and its training.py / testing.py on top (`bench.py ref-train|ref-test`); the retrieval
reference's ranker batches (both sentences of each pair loaded per item) and one-pair-per-call chunk ranking."""
import os
import sys
import time

import numpy as np
import scipy.io
import torch
import torch.nn.functional as F

from chunkser.checkpoint import checkpoint_name
from chunkser.cli import add_corpus_args, add_reference_args, reference_run
from chunkser.corpus import read_label_table, split_items
from chunkser.model import ChunkLevelSER, ModelSpec
from chunkser.utils import DEFAULT_C, DEFAULT_M, DEFAULT_N, ArgParser, cc_coef, evaluation_metrics


class RefDataset(torch.utils.data.Dataset):
    """Per item: the whole .mat loaded, float64 z-norm by boolean index assignments (NaN -> 0, clip 3), the label."""

    def __init__(self, feat_dir, fnames, labels, norm_dir, emo):
        self.feat_dir, self.fnames, self.labels = feat_dir, list(fnames), np.asarray(labels)
        term = lambda name: scipy.io.loadmat(os.path.join(norm_dir, name + '.mat'))['normal_para']
        self.mean, self.std = term('feat_norm_means'), term('feat_norm_stds')  # (1, F) float64
        self.label_mean, self.label_std = (term(f'{emo.lower()}_norm_{k}')[0][0] for k in ('means', 'stds'))

    def __len__(self):
        return len(self.fnames)

    def __getitem__(self, i):
        x = scipy.io.loadmat(os.path.join(self.feat_dir, self.fnames[i].replace('.wav', '.mat')))['Audio_data']
        x = (x[:, 1:] - self.mean) / self.std  # (T, F) float64
        x[np.isnan(x)] = 0
        x[x > 3] = 3
        x[x < -3] = -3
        return x, (self.labels[i] - self.label_mean) / self.label_std


def ref_chunk_split(batch, m=DEFAULT_M, C=DEFAULT_C, n=DEFAULT_N):
    """The published chunk split: a start per chunk computed in a Python loop, one slice per chunk, stacked by
    np.array (float64 in, float64 out). Only defined for T >= m, like the original."""
    pieces = []
    for x in batch:
        step = int(int(len(x) - m) / (n * C - 1))
        pieces += [x[k * step:k * step + m] for k in range(n * C)]
    return np.array(pieces)  # (B*n*C, m, F)


def ref_collate(batch, n=DEFAULT_N):
    xs, ys = zip(*batch)
    return torch.from_numpy(ref_chunk_split(xs, n=n)), torch.from_numpy(np.array(ys))


class RefPairDataset(RefDataset):
    """Per item a preference pair: both sentences' .mat loaded and normalised as RefDataset's, and the pair's label."""

    def __init__(self, feat_dir, fnames, pairs, labels, norm_dir, emo):
        super().__init__(feat_dir, fnames, np.zeros(len(fnames)), norm_dir, emo)
        self.pairs, self.pair_labels = np.asarray(pairs), np.asarray(labels)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        a, b = self.pairs[i]
        return super().__getitem__(a)[0], super().__getitem__(b)[0], self.pair_labels[i]


def ref_pair_collate(batch, C=DEFAULT_C, n=2):
    """The chunks (float64) of the first sentences, of the second ones, and each pair's label once per chunk pair."""
    a, b, y = zip(*batch)
    return (torch.from_numpy(ref_chunk_split(a, C=C, n=n)), torch.from_numpy(ref_chunk_split(b, C=C, n=n)),
            torch.from_numpy(np.repeat(np.array(y, dtype=np.int64), n * C)))


def ref_pair_logits(ranker, a, b):
    """The ranker on each side's chunks, f(a) - f(b): (chunk pairs, 2)."""
    return ranker.chunk_scores(a) - ranker.chunk_scores(b)


class LoopedHeadNet(ChunkLevelSER):
    """Our network (same state dict, same initialisation for a seed) with the published forward: the aggregation
    head called on each utterance's C' chunk vectors in a Python loop, one utterance at a time; never CPU streams."""

    def __init__(self, head):
        super().__init__(ModelSpec(head=head))

    def forward(self, x):  # x: (B*C', m, F)
        h = self.bn(self.encoder(x))  # (B*C', H)
        C = self.spec.chunks_per_utterance
        u = torch.cat([self.attn(h[s:s + C].unsqueeze(0))[0] for s in range(0, len(h), C)])  # (B, H)
        return self.fc2(F.relu(self.fc1(u))).squeeze(1)


@torch.no_grad()
def reference_pair_wins(model, chunks):
    """chunks: (C', m, F) of one utterance -> wins (C',) as the retrieval reference ranks: one ranker call
    f(a) - f(b) per ordered pair (462 x 2 batch-1 passes), the pair won when class 1 is the argmax."""
    k = len(chunks)
    wins = np.zeros(k, dtype=np.int64)
    for p in range(k):
        for q in range(k):
            if p != q:
                d = model.chunk_scores(chunks[p:p + 1]) - model.chunk_scores(chunks[q:q + 1])  # (1, 2)
                wins[p] += int(torch.softmax(d, dim=1).argmax(1))
    return wins


def ref_args(prog, argv):
    """The published -iter/-batch/-emo/-atten and our corpus flags; the published 12 DataLoader workers."""
    p = ArgParser(prog=f'bench.py {prog}', description=f'the published {prog[4:]}ing.py')
    for add_args in (add_reference_args, add_corpus_args):  # the flags our scripts share
        add_args(p)
    g = p.add_argument_group('reference-style')
    g.add_argument('--model-dir', default='./Models', help='checkpoints (default ./Models)')
    g.add_argument('--workers', type=int, default=12, help='DataLoader workers (default 12, the published value)')
    g.add_argument('--split', default='Test', help='split to score (default Test)')
    g.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='(default cpu)')
    return reference_run(p.parse_args(argv))


def ref_train_main(argv):
    """The published training.py: shuffled epochs, validation (autograd on) every 50 iterations, save on
    improvement, a stop only between epochs, a loss plot."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from tqdm import tqdm
    a = ref_args('ref-train', argv)
    device = torch.device(a.device)
    model = LoopedHeadNet(a.atten).to(device)
    os.makedirs(a.model_dir, exist_ok=True)
    sets = [RefDataset(a.feat_dir, *split_items(read_label_table(a.label_csv), s, a.emo), a.norm_dir, a.emo)
            for s in ('Train', 'Validation')]
    idx = [list(range(len(ds))) for ds in sets]
    np.random.shuffle(idx[0])
    train_loader, valid_loader = (torch.utils.data.DataLoader(
        ds, batch_size=a.batch_size, sampler=torch.utils.data.SubsetRandomSampler(ix), num_workers=a.workers,
        pin_memory=device.type == 'cuda', collate_fn=ref_collate) for ds, ix in zip(sets, idx))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ckpt = os.path.join(a.model_dir, checkpoint_name(ModelSpec(head=a.atten, emo=a.emo), a.batch_size, iterations=a.iterations))
    train_losses, valid_losses, best, it = [], [], 0.0, 0
    while it < a.iterations:
        for x, y in train_loader:
            model.train()
            it += 1
            loss = cc_coef(model(x.to(device).float()), y.to(device).float())
            train_losses.append(loss.data.cpu().numpy())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if it % 50 == 0:
                model.eval()
                losses = [cc_coef(model(vx.to(device).float()), vy.to(device).float()).data.cpu().numpy()
                          for vx, vy in tqdm(valid_loader, file=sys.stdout)]  # autograd on, as published
                valid_losses.append(np.mean(losses))
                print(f'Iteration: {it} ,Training-loss: {train_losses[-1]} ,Validation-loss: {valid_losses[-1]}')
                if it == 50 or valid_losses[-1] < best:
                    best = valid_losses[-1]
                    torch.save(model.state_dict(), ckpt)
    n = len(valid_losses) * 50
    plt.plot(np.mean(np.array(train_losses[:n]).reshape(-1, 50), axis=1).tolist() if n else [])
    plt.plot(valid_losses)
    plt.savefig(ckpt[:-len('.pth.tar')] + '.png')
    return 0


def ref_score(model, ds, n, device, bar=True):
    """The published scoring of `ds`'s first n utterances, one at a time, autograd on: (predictions, model s)."""
    from tqdm import tqdm
    preds, seconds = [], 0.0
    for i in tqdm(range(n), disable=not bar):
        chunks = torch.from_numpy(ref_chunk_split([ds[i][0]])).to(device).float()  # .mat loaded, normalised
        t0 = time.time()
        p = model(chunks)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        seconds += time.time() - t0
        preds.append(p.data.cpu().numpy())
    return np.array(preds).reshape(-1), seconds


def ref_test_main(argv):
    """The published testing.py: score the split utterance by utterance, then the CCC and the time per utterance."""
    a = ref_args('ref-test', argv)
    device = torch.device(a.device)
    paths, labels = split_items(read_label_table(a.label_csv), a.split, a.emo)
    ds = RefDataset(a.feat_dir, paths, labels, a.norm_dir, a.emo)
    model = LoopedHeadNet(a.atten)
    model.load_state_dict(torch.load(os.path.join(a.model_dir, checkpoint_name(
        ModelSpec(head=a.atten, emo=a.emo), a.batch_size, iterations=a.iterations)), map_location='cpu'))
    preds, seconds = ref_score(model.to(device).eval(), ds, len(paths), device)
    preds = preds * ds.label_std + ds.label_mean
    print('ChunkSeq2One', f'Iterations: {a.iterations}', f'Batch_Size: {a.batch_size}', 'Model_Type: LSTM',
          f'Attention_Type: {a.atten}', f'{a.emo}-CCC: {evaluation_metrics(labels, preds)!r}',
          f'Avg. Time Cost(ms/uttr): {1000 * seconds / len(paths)!r}', sep='\n')
    return 0
