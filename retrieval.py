"""Chunk-level emotion retrieval (Lin & Busso, TASLP 2023): rank the chunks inside each sentence with an emotion ranker.

    python retrieval.py -set Validation -emo Act [-ep 20 -batch 128 | --checkpoint FILE]
                        --feat-dir DIR --label-csv FILE [--norm-dir ./NormTerm] [--out FILE.json]
    python retrieval.py --checkpoint FILE PATH [PATH ...] [--out FILE.json]

The ranker is LSTM_epoch{ep}_batch{batch}_{emo}_ranker.pth.tar in --model-dir (default: ./Models, then
./trained_ranker_model_v1.6, where `pretrained.py` installs the released ones), or the --checkpoint given.
A split's sequences go to ./EmoChunkRankSeq/{training,validation,testing}_{emo}.json as the reference's
generate_ranking_seqence.py writes them: {file name: {"ChunkRankSeq": [22 ranks]}}, rank 1 = the chunk that
won the most pairs, ties sharing the smallest rank. PATHs (.wav/.flac/.mat or folders) go to stdout or --out.
Beside a written X.json, X.provenance.json says what produced it: the ranker, its sha256 and attribute, the
NormTerm folder, and the split with the label CSV and features (or the PATHs); the rank JSON keeps the
reference's layout.

Each chunk is encoded once and every pair is compared from the encodings (22 LSTM passes per sentence,
not the reference's 462 x 2); chunks with identical features share one encoding, so they tie exactly as in
the reference's pair loop. generate_chunk_EmoSeq turns ranks into the emotion curve the seq2seq model learns.
"""
import json
import os
import sys
import time

import numpy as np
import torch

from checkpoint import check_norm, checkpoint_name, load_model, locate_checkpoint, read_spec, require_task
from cli import add_corpus_args, add_system_args, require_corpus
from corpus import ATTRIBUTES, read_label_table, resolve_split, split_files
from device import select_device
from files import atomic_write_bytes, ensure_writable_dir, file_sha256, write_json
from model import ModelSpec
from normterm import NormTerms
from store import open_features
from streams import use_cpu_streams
from utils import ArgParser, UserError, chunk_batch, run_cli

RANKER_DIR = './trained_ranker_model_v1.6'
RANKER_SEARCH = ('./Models', RANKER_DIR)  # where a reference-named ranker is looked for without --model-dir
OUT_DIR = './EmoChunkRankSeq'
SPLIT_FILES = {'Train': 'training', 'Validation': 'validation', 'Development': 'validation', 'Test': 'testing'}


# ----------------------------------------------------------------------------------
# ranks from a ranker

def first_identical(x, k):
    """x: (U*k, m, F) chunks, k per utterance -> (U*k,) index of the first chunk of the same utterance with the
    same features (itself when none). Rows of one batched LSTM call can round differently (seen on oneDNN), so
    identical chunks must share one encoding to tie exactly, as in the reference's one-pair-per-call loop."""
    N = x.shape[0]
    flat = x.reshape(N, -1)  # (N, m*F)
    # integer sums of the float bits: exact whatever the summation order, so identical rows hash alike
    key = flat.contiguous().view(torch.int32).sum(1, dtype=torch.int64).reshape(-1, k)  # (U, k)
    first = (key[:, :, None] == key[:, None, :]).int().argmax(-1)  # (U, k) first chunk j with an equal hash
    first = (first + torch.arange(0, N, k, device=x.device)[:, None]).reshape(-1)  # (N,) global index
    same = (flat == flat[first]).all(1)  # (N,) a hash collision keeps its own chunk
    return torch.where(same, first, torch.arange(N, device=x.device))


@torch.no_grad()
def rank_chunks(model, x):
    """x: (U*C', m, F) chunks of U utterances -> wins (U, C') int64 (0..C'-1) and ranks (U, C') int64 (1..C').
    win(p, q) = argmax softmax(f(c_p) - f(c_q)), an exact tie -> class 0; rank = pandas' rank(method='min',
    ascending=False) of the wins."""
    k = model.spec.chunks_per_utterance
    first = first_identical(x, k)  # (N,)
    own = first == torch.arange(len(first), device=x.device)  # (N,) the chunks encoded: one per distinct chunk
    slot = torch.cumsum(own, 0) - 1  # (N,) row of an encoded chunk among the encoded ones
    f = model.chunk_scores(x[own])[slot[first]].reshape(-1, k, 2)  # (U, C', 2) copies for identical chunks
    pair = torch.softmax(f[:, :, None, :] - f[:, None, :, :], dim=-1)  # (U, C', C', 2): pair (p, q) as the reference
    win = pair[..., 1] > pair[..., 0]  # (U, C', C') class 1 only when strictly more probable; p == q is a tie
    wins = win.sum(-1)  # (U, C')
    ranks = (wins[:, None, :] > wins[:, :, None]).sum(-1) + 1  # (U, C'): 1 + chunks with more wins
    return wins, ranks


def rank_utterances(model, utterances, device='cpu', batch_size=64, progress=False):
    """Normalised (T, F) utterances (a list, MatFeatures or a FeatureStore) -> wins and ranks (N, C') int.
    progress: a bar over the sentences on stderr (shown on a terminal only)."""
    from tqdm import tqdm
    s = model.spec
    wins, ranks = [], []
    bar = tqdm(total=len(utterances), desc='ranking', unit='sentence', disable=None if progress else True, leave=False)
    for i in range(0, len(utterances), batch_size):
        idx = np.arange(i, min(i + batch_size, len(utterances)))
        x = torch.from_numpy(chunk_batch(utterances, idx, s.chunk_frames, s.chunks, s.scale)).to(device)  # (b*C', m, F)
        w, r = rank_chunks(model, x)
        wins.append(w.cpu().numpy())
        ranks.append(r.cpu().numpy())
        bar.update(len(idx))
    bar.close()
    k = s.chunks_per_utterance
    return (np.concatenate(wins) if wins else np.zeros((0, k), int)), (np.concatenate(ranks) if ranks else np.zeros((0, k), int))


# ----------------------------------------------------------------------------------
# the emotion curve (SPEC-retrieval.md section 4)

def generate_chunk_EmoSeq(mu, std, ranks):
    """Ranks (C',) and the raters' (mean, population std) -> the chunk-level emotion curve (C',) float64: a trend
    that steps down where the rank rises (less emotional), smoothed by a 3-point moving average (ends kept),
    rescaled to mean mu and std std. std == 0, or a flat trend: mu everywhere."""
    r = np.asarray(ranks)
    if std == 0:
        return np.full(len(r), float(mu))
    t = np.concatenate([[0], np.cumsum(-np.sign(np.diff(r)))]).astype(np.float64)  # (C',) t_1 = 0
    s = np.concatenate([t[:1], np.convolve(t, np.ones(3) / 3, 'valid'), t[-1:]])  # (C',)
    if s.std() == 0:
        return np.full(len(r), float(mu))
    return mu + (s - s.mean()) * std / s.std()


# ----------------------------------------------------------------------------------
# command line

def parse_args(argv):
    p = ArgParser(prog='retrieval.py', description=__doc__.split('\n')[0])
    p.add_argument('paths', nargs='*', metavar='PATH', help='.wav/.flac/.mat files or folders (instead of a split)')
    g = p.add_argument_group('reference arguments')
    g.add_argument('-ep', '--epochs', type=int, default=20, help='epochs in the ranker file name (default 20)')
    g.add_argument('-batch', '--batch_size', type=int, default=128, help='batch in the ranker file name (default 128)')
    g.add_argument('-emo', '--emo_attr', dest='emo', default=None, choices=ATTRIBUTES,
                   help="attribute (default Act, or the --checkpoint JSON's)")
    g.add_argument('-set', '--split_set', dest='split', help='split to rank (Train, Validation, Test, ...)')
    add_corpus_args(p)
    g = p.add_argument_group('retrieval')
    g.add_argument('--checkpoint', metavar='FILE', help='the ranker to use (its JSON beside it says what it is)')
    g.add_argument('--model-dir', default=None,
                   help=f'folder of reference-named rankers (default: {" then ".join(RANKER_SEARCH)})')
    g.add_argument('--out', help=f'JSON to write (default {OUT_DIR}/<split>_<emo>.json; for PATHs, stdout)')
    g.add_argument('--rank-batch', type=int, default=64, help='utterances ranked per model call (default 64)')
    g.add_argument('--force', action='store_true', help='rank even if the ranker was trained with other NormTerm terms')
    add_system_args(p)
    args = p.parse_args(argv)
    if not args.paths and not args.split:
        raise UserError('retrieval.py: give -set SPLIT (with --feat-dir and --label-csv) or PATHs to rank')
    return args


def load_ranker(args, device):
    name = checkpoint_name(ModelSpec(head=None, task='ranker', emo=args.emo or 'Act'), args.batch_size, epochs=args.epochs)
    path = locate_checkpoint(args.checkpoint, name, args.model_dir, search=RANKER_SEARCH,
                             hint='run `make pretrained` for the released rankers, or pass --checkpoint')
    spec = read_spec(path)
    require_task(spec, path, ('ranker',), 'retrieval.py',
                 hint='a seq2seq model gives emotion curves through predict.py --chunks-out')
    if args.emo and args.emo != spec.emo:
        raise UserError(f'{path}: a {spec.emo} ranker, not -emo {args.emo}')
    return path, spec, use_cpu_streams(load_model(path, spec, device), device, args.cpu_streams)


def split_utterances(args, norm):
    """-set SPLIT: its file names (as in the label table) and normalised features."""
    require_corpus(args)
    df = read_label_table(args.label_csv)
    split = resolve_split(df, args.split, args.label_csv)
    fnames = split_files(df, split)
    return split, fnames, open_features(args.store, args.feat_dir, fnames, norm)


def path_utterances(paths, norm):
    """PATHs: file names as given and their normalised float32 features."""
    from inference import collect_inputs, load_input  # audio front end only when files are given
    files = collect_inputs(paths)
    return files, [norm.normalize(load_input(f)[0]).astype(np.float32) for f in files]


def write_ranks(path, fnames, ranks):
    """The reference's JSON layout (json.dump with indent 4), written atomically; '-' is stdout."""
    text = json.dumps({f: {'ChunkRankSeq': [int(r) for r in row]} for f, row in zip(fnames, ranks)}, indent=4)
    if path == '-':
        sys.stdout.write(text + '\n')
        return
    ensure_writable_dir(os.path.dirname(path) or '.')
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as e:
        raise UserError(f'{path}: cannot write the rank sequences ({e.strerror})')


def provenance_path(out):
    """Where the provenance of the rank JSON `out` goes: X.json -> X.provenance.json, beside it."""
    stem = out[:-len('.json')] if out.endswith('.json') else out
    return stem + '.provenance.json'


def write_provenance(out, ckpt, spec, args, split, n):
    """What produced the rank JSON `out`: the ranker, its sha256 and attribute, the inputs, the split."""
    info = {'ranks': os.path.basename(out), 'sentences': int(n), 'ranker': os.path.abspath(ckpt),
            'ranker_sha256': file_sha256(ckpt), 'emo': spec.emo, 'norm_dir': os.path.abspath(args.norm_dir),
            'split': split, 'created': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    if split is None:
        info['paths'] = [os.path.abspath(p) for p in args.paths]
    else:
        info.update(label_csv=os.path.abspath(args.label_csv), feat_dir=os.path.abspath(args.feat_dir),
                    store=os.path.abspath(args.store) if getattr(args, 'store', None) else None)
    path = provenance_path(out)
    try:
        write_json(path, info)
    except OSError as e:
        raise UserError(f'{path}: cannot write the provenance of the rank sequences ({e.strerror})')
    return path


def main(argv=None):
    args = parse_args(argv)
    device = select_device(args.device)
    ckpt, spec, model = load_ranker(args, device)
    norm = NormTerms.load(args.norm_dir)
    check_norm(spec, norm, args.norm_dir, ckpt, args.force)
    split = None
    if args.paths:
        fnames, feats = path_utterances(args.paths, norm)
        out = args.out or '-'
    else:
        split, fnames, feats = split_utterances(args, norm)
        out = args.out or os.path.join(OUT_DIR, f'{SPLIT_FILES.get(split, split.lower())}_{spec.emo}.json')
    _, ranks = rank_utterances(model, feats, device, args.rank_batch, progress=True)
    write_ranks(out, fnames, ranks)
    if out != '-':
        prov = write_provenance(out, ckpt, spec, args, split, len(fnames))
        print(f'{len(fnames)} rank sequences ({spec.emo}, {ckpt}) -> {out} (provenance: {prov})', file=sys.stderr)
    return 0


if __name__ == '__main__':
    run_cli(main)
