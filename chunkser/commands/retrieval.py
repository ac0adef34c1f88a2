"""Chunk-level emotion retrieval (Lin & Busso, TASLP 2023): rank the chunks inside each sentence with an emotion ranker.

    python retrieval.py -set Validation -emo Act [-ep 20 -batch 128 | --checkpoint FILE]
                        --feat-dir DIR --label-csv FILE [--norm-dir ./NormTerm] [--out FILE.json]
    python retrieval.py --checkpoint FILE PATH [PATH ...] [--out FILE.json]

The ranker is LSTM_epoch{ep}_batch{batch}_{emo}_ranker.pth.tar in --model-dir (default: ./Models, then
./trained_ranker_model_v1.6, where `pretrained.py` installs the released ones, then the same in $CHUNKSER_HOME,
default ~/.cache/chunkser), or the --checkpoint given.
A split's sequences go to ./EmoChunkRankSeq/{training,validation,testing}_{emo}.json as the reference's
generate_ranking_seqence.py writes them: {file name: {"ChunkRankSeq": [22 ranks]}}, rank 1 = the chunk that
won the most pairs, ties sharing the smallest rank. PATHs (.wav/.flac/.mat or folders) go to stdout or --out.
Beside a written X.json, X.provenance.json says what produced it: the ranker, its sha256 and attribute, the
NormTerm folder, and the split with the label CSV and features (or the PATHs); the rank JSON keeps the
reference's layout.

Each chunk is encoded once and every pair is compared from the encodings (22 LSTM passes per sentence,
not the reference's 462 x 2); chunks with identical features share one encoding, so they tie exactly as in
the reference's pair loop (ranks.py). generate_chunk_EmoSeq turns ranks into the emotion curve the seq2seq model learns.
"""
import os
import sys
import time

import numpy as np

from ..checkpoint import check_norm, checkpoint_name, load_model, locate_checkpoint, read_spec, require_task
from ..cli import add_corpus_args, add_system_args, require_corpus
from ..corpus import ATTRIBUTES, read_label_table, resolve_split, split_files
from ..device import select_device
from ..files import file_sha256, write_json
from ..home import install_hint, norm_dir_or_home
from ..model import ModelSpec
from ..normterm import NormTerms
from ..retrieval.ranks import OUT_DIR, provenance_path, rank_file, rank_utterances, write_ranks
from ..store import open_features
from ..streams import use_cpu_streams
from ..utils import ArgParser, UserError, run_cli

RANKER_DIR = './trained_ranker_model_v1.6'
RANKER_SEARCH = ('./Models', RANKER_DIR)  # where a reference-named ranker is looked for without --model-dir


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
    g.add_argument('--frontend', metavar='NAME_OR_PATH', help='PATHs: where the self-supervised front end the ranker '
                   'was trained on is now (default: where its JSON says)')
    add_system_args(p)
    args = p.parse_args(argv)
    if not args.paths and not args.split:
        raise UserError('retrieval.py: give -set SPLIT (with --feat-dir and --label-csv) or PATHs to rank')
    return args


def load_ranker(args, device):
    name = checkpoint_name(ModelSpec(head=None, task='ranker', emo=args.emo or 'Act'), args.batch_size, epochs=args.epochs)
    path = locate_checkpoint(args.checkpoint, name, args.model_dir, search=RANKER_SEARCH,
                             hint=install_hint(args.norm_dir) + ' (or pass --checkpoint)')
    spec = read_spec(path)
    require_task(spec, path, ('ranker',), 'retrieval.py',
                 hint='a seq2seq model gives emotion curves through predict.py --chunks-out')
    if args.emo and args.emo != spec.emo:
        raise UserError(f'{path}: a {spec.emo} ranker, not -emo {args.emo}')
    return path, spec, use_cpu_streams(load_model(path, spec, device), device, args.cpu_streams)


def split_utterances(args, norm):
    """-set SPLIT: its file names (as in the label table) and normalised features."""
    df = read_label_table(args.label_csv)
    split = resolve_split(df, args.split, args.label_csv)
    fnames = split_files(df, split)
    return split, fnames, open_features(args.store, args.feat_dir, fnames, norm)


def path_utterances(args, norm, ckpt, spec, device):
    """PATHs: file names as given and their normalised float32 features, from the front end the ranker was
    trained on (IS13, or the self-supervised model its JSON records; --frontend where it is now)."""
    from ..inference import collect_inputs, load_frontend, load_input  # audio front end only when files are given
    front = load_frontend(args, {'ranker': (ckpt, spec)}, device)
    files = collect_inputs(args.paths)
    return files, [norm.normalize(load_input(f, frontend=front)[0]).astype(np.float32) for f in files]


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
    if not args.paths:
        require_corpus(args)  # --demo sets the NormTerm folder too
    args.norm_dir = norm_dir_or_home(args.norm_dir)
    ckpt, spec, model = load_ranker(args, device)
    norm = NormTerms.load(args.norm_dir)
    check_norm(spec, norm, args.norm_dir, ckpt, args.force)
    split = None
    if args.paths:
        fnames, feats = path_utterances(args, norm, ckpt, spec, device)
        out = args.out or '-'
    else:
        split, fnames, feats = split_utterances(args, norm)
        out = args.out or rank_file(OUT_DIR, split, spec.emo)
    _, ranks = rank_utterances(model, feats, device, args.rank_batch, progress=True)
    write_ranks(out, fnames, ranks)
    if out != '-':
        prov = write_provenance(out, ckpt, spec, args, split, len(fnames))
        print(f'{len(fnames)} rank sequences ({spec.emo}, {ckpt}) -> {out} (provenance: {prov})', file=sys.stderr)
    return 0


if __name__ == '__main__':
    run_cli(main)
