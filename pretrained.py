"""Install the released v1.6 checkpoints and their z-norm terms, each file checked by sha256.

    python pretrained.py [--dest .] [--from DIR | --url-base URL] [--retrieval-from DIR | --retrieval-url-base URL]
                         [--force]

Sets of files (SETS below), each with its own source options:
- v1.6 (Chunk-Level-Attention-SER-PyTorch): the six checkpoints go to DEST/trained_model_v1.6/ and the eight
  NormTerm .mat files to DEST/NormTerm/ (--from DIR holding those two subfolders, or --url-base URL);
- retrieval (Chunk-Level-Emotion-Retrieval, Lin & Busso TASLP 2023): the three seq2seq models to
  DEST/trained_seq2seq_model_v1.6/, the three rankers to DEST/trained_ranker_model_v1.6/ and the rank sequences
  of the Validation split to DEST/EmoChunkRankSeq/ (--retrieval-from DIR in that layout, or
  --retrieval-url-base URL in the upstream repository's layout), and beside each model the JSON that
  describes it (task, attribute, m = 62, C = 11, n = 2, sizes, NormTerm), so the scripts need nothing else.
With a source option only the sets given are installed (`--from DIR` alone: only v1.6, offline); with none,
every set is downloaded from its repository (http(s):// or file://).

Every file is written to a temporary file beside its destination, checked against the sha256 sum
below and only then renamed into place, so a bad or interrupted transfer never leaves half a file.
Files already present with the right sum are skipped; a present file with another sum is refused
unless --force is given. The run stops at the first file that fails; the files installed before it
were verified and stay.
"""
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from utils import ArgParser, UserError, atomic_writer, ensure_writable_dir, run_cli, write_json

# The reference repository at the commit that released the v1.6 models (MIT licence, Wei-Cheng Lin).
URL_BASE = ('https://github.com/winston-lin-wei-cheng/Chunk-Level-Attention-SER-PyTorch/raw/'
            '4c04dc2e01131d5aab4085bd854f5d2ff0189a6a')

# The only record of the expected contents; the READMEs' tables are checked against it by the tests.
SHA256 = {
    'trained_model_v1.6/LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Act.pth.tar':
        '6e70fb520c3713e71ef175b748344bf23bd068b54cedf347b02c488c6b1c1bfd',
    'trained_model_v1.6/LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Dom.pth.tar':
        'be83e29fb0b666465a0bdb960bfb1f616ebe39c96babc5afabbedb5463d5a080',
    'trained_model_v1.6/LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Val.pth.tar':
        'edaa96198b3f0cc4258913c3004f5d2b70ab37fb3ae7e2665131de8db205edc4',
    'trained_model_v1.6/LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_Act.pth.tar':
        'cd11a158249c6b23aaa6f39c7b827758712dec4c722b645e7c8802e92cd9d6e1',
    'trained_model_v1.6/LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_Dom.pth.tar':
        '77336988532d9898380668f2209fb2eac56f8a02570180ae73ba27bae1301d9c',
    'trained_model_v1.6/LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_Val.pth.tar':
        '755dd2841d5acbdcb27247adfae679f8fac9c75ed12f8d8763e353cf76ed3611',
    'NormTerm/act_norm_means.mat': 'ffe2e592d10b80dbc4b2b1a9cf6caafe73798f771c8c63f6dea049be2e8cffe3',
    'NormTerm/act_norm_stds.mat': '7c35869625c4e2d4672640e454e21a5c0670e835689c1a5952027dd997dd7efd',
    'NormTerm/dom_norm_means.mat': 'f3a07ca429d5ff9f1898e058e5e0a3965b1f1a09834ed8463706dd618b2a8fdc',
    'NormTerm/dom_norm_stds.mat': '96ef79ae2fbcb2623f3b3022c8d502bebbedc72d5e251d3b2ca3b942ddb83e64',
    'NormTerm/feat_norm_means.mat': '5acc523ce94a90ebcb7998144aa6284da645d4a78d9fdee665126daa35ce751d',
    'NormTerm/feat_norm_stds.mat': 'b2e6f1ff5436f09e786339376e3c4d83abef84879dc0c6cd50854e3bf1f93135',
    'NormTerm/val_norm_means.mat': '1af561af01ced332580457ce1ffa2a0585bbad79d7d00d49ccae7db7d8cd058c',
    'NormTerm/val_norm_stds.mat': 'b8c6b4d91a3ba1684d52561a1d408b24d3a176823c8dbb9a4470b57bdcb9a5fd',
}

# Chunk-Level-Emotion-Retrieval at the commit of its v1.6 models (MIT licence, Wei-Cheng Lin), SPEC-retrieval.md
RETRIEVAL_URL_BASE = ('https://github.com/winston-lin-wei-cheng/Chunk-Level-Emotion-Retrieval/raw/'
                      '137cedd670ec41b01df21a423ea29226698dae18')
RETRIEVAL_SHA256 = {
    'trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_Act.pth.tar':
        'adc3da6f5de6cc24da1a82ba1105bf3fb55a76db2a7ca1622ad9a03c264e7322',
    'trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_Dom.pth.tar':
        'bd5a5bf0e632ceb03ff3e53f9fe358fbddb4a4bd7ccf653b2f3b5a358b44c13e',
    'trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_Val.pth.tar':
        'b8d78e3119dbb92bbe99241130b340faa11a641aba0f90f2e794e479646fda7b',
    'trained_ranker_model_v1.6/LSTM_epoch20_batch128_Act_ranker.pth.tar':
        'c370f8edca518848e0ca8270cb0371f52c84048ba9af4b0ed21b274e1780344e',
    'trained_ranker_model_v1.6/LSTM_epoch20_batch128_Dom_ranker.pth.tar':
        'a0574dd64b7a3f6c0ffdf670df06a5b9cec05a68be9d78184ffcdad3155e22ab',
    'trained_ranker_model_v1.6/LSTM_epoch20_batch128_Val_ranker.pth.tar':
        '3b03f363506a6e03a07e131e62c6736aa529aa0b3a693ed6cfa8d1221dad141c',
    'EmoChunkRankSeq/validation_Act.json': '78895d9f232f7769afbafc63c81ee5331b14cf234433885a108f88d720f62fa9',
    'EmoChunkRankSeq/validation_Dom.json': 'ac6db646a29b31ea6c3bfa8e0632d497374545dd0ef4d1399aeee373e3354c6c',
    'EmoChunkRankSeq/validation_Val.json': 'cecca1698ddadbdc4899c4f5c3c74e79a6dc65a35633c4c3984d1bbb7336ac01',
}
# utils.NormTerms.fingerprint() of the v1.6 NormTerm, which the retrieval models were trained with
V16_NORM_FINGERPRINT = '4acf53b4c2840b21'


def describe_retrieval(dest, rels):
    """Post-install step of the retrieval set: X.json beside each model X.pth.tar, the ModelSpec that rebuilds it
    (task 'chunk' or 'ranker', head 'None', m = 62, C = 11, n = 2) and how it was trained (SPEC-retrieval.md)."""
    from checkpoint import description_path
    from model import NO_HEAD, ModelSpec
    for rel in rels:
        if not rel.endswith('.pth.tar'):
            continue
        name = os.path.basename(rel)
        ranker = name.endswith('_ranker.pth.tar')
        emo = name.split('_')[-2] if ranker else name[-len('Act.pth.tar'):-len('.pth.tar')]
        spec = ModelSpec(encoder='LSTM', head=NO_HEAD, task='ranker' if ranker else 'chunk', emo=emo, chunk_frames=62,
                         chunks=11, scale=2, norm_fingerprint=V16_NORM_FINGERPRINT,
                         norm_dir=os.path.abspath(os.path.join(dest, 'NormTerm'))).check()
        write_json(description_path(os.path.join(dest, *rel.split('/'))), dict(
            spec.to_json(), epochs=20 if ranker else 30, batch_size=128, sha256=RETRIEVAL_SHA256[rel],
            source=f'{RETRIEVAL_URL_BASE}/{retrieval_remote(rel)}', licence='MIT (c) Wei-Cheng Lin',
            released='Chunk-Level-Emotion-Retrieval v1.6 (Lin & Busso, TASLP 2023)'))


def retrieval_remote(rel):
    """The rankers and rank sequences lie under chunk_emotion_rankers/ upstream."""
    return rel if rel.startswith('trained_seq2seq') else 'chunk_emotion_rankers/' + rel


@dataclass
class FileSet:
    name: str            # prefix of its options: --{name}from, --{name}url-base ('' for the v1.6 set)
    sums: dict           # local path under DEST -> sha256
    url_base: str
    remote: object = None   # local path -> path under the URL base (default: the same)
    post: object = None     # post-install step, (dest, the set's local paths) -> None
    layout: str = ''        # what a --{name}from folder holds, for messages


SETS = [
    FileSet('', SHA256, URL_BASE, layout='trained_model_v1.6/ and NormTerm/'),
    FileSet('retrieval-', RETRIEVAL_SHA256, RETRIEVAL_URL_BASE, retrieval_remote, describe_retrieval,
            'trained_seq2seq_model_v1.6/, trained_ranker_model_v1.6/ and EmoChunkRankSeq/'),
]

TIMEOUT = 60        # seconds a download may stall before it counts as unreachable
BLOCK = 1 << 20     # bytes read at a time


def parse_args(argv):
    p = ArgParser(prog='pretrained.py', description=__doc__.split('\n')[0])
    p.add_argument('--dest', default='.', help='folder that receives the sets\' folders (default .)')
    for s in SETS:  # per set: --{name}from DIR | --{name}url-base URL
        src = p.add_mutually_exclusive_group()
        src.add_argument(f'--{s.name}from', dest=f'{s.name.replace("-", "_")}src_dir', metavar='DIR',
                         help=f'copy this set from DIR ({s.layout}) instead of downloading')
        src.add_argument(f'--{s.name}url-base', dest=f'{s.name.replace("-", "_")}url_base', metavar='URL',
                         help=f'download it from URL/<path> (default {s.url_base})')
    p.add_argument('--force', action='store_true', help='replace present files whose sha256 is wrong')
    p.add_argument('--debug', action='store_true', help='show tracebacks of user errors')
    return p.parse_args(argv)


def chosen_sets(args):
    """[(set, source folder or None, URL base)]: the sets given a source option, or all of them, downloaded."""
    srcs = [(s, getattr(args, f'{s.name.replace("-", "_")}src_dir'), getattr(args, f'{s.name.replace("-", "_")}url_base'))
            for s in SETS]
    given = [(s, d, u) for s, d, u in srcs if d is not None or u is not None]
    for s, d, _ in given:
        if d is not None and not os.path.isdir(d):
            raise UserError(f'{d}: --{s.name}from folder not found')
    return [(s, d, u or s.url_base) for s, d, u in (given or srcs)]


def file_sha256(path):
    h = hashlib.sha256()
    try:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(BLOCK), b''):
                h.update(block)
    except OSError as e:
        raise UserError(f'{path}: cannot read ({e.strerror})')
    return h.hexdigest()


def human(size):
    return f'{size / 1e6:.1f} MB' if size >= 100_000 else f'{size} bytes'


def open_source(source, rel):
    """A readable binary stream of one released file, and where it comes from (for messages)."""
    fileset, src_dir, url_base = source
    if src_dir is not None:
        path = os.path.join(src_dir, *rel.split('/'))
        try:
            return open(path, 'rb'), path
        except FileNotFoundError:
            raise UserError(f'{path}: not found (--{fileset.name}from expects {fileset.layout} folders)')
        except OSError as e:
            raise UserError(f'{path}: cannot read ({e.strerror})')
    url = url_base.rstrip('/') + '/' + urllib.parse.quote(fileset.remote(rel) if fileset.remote else rel)
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT), url
    except urllib.error.HTTPError as e:
        raise UserError(f'{url}: HTTP {e.code} {e.reason}')
    except urllib.error.URLError as e:
        raise UserError(f'{url}: cannot be reached ({getattr(e.reason, "strerror", None) or e.reason})')
    except (OSError, ValueError) as e:  # timeouts, malformed URLs
        raise UserError(f'{url}: cannot be reached ({e})')


def install(source, rel, dest):
    """Copy one file to a temporary file beside `dest` and check its sum; only a right sum renames it into place
    (utils.atomic_writer removes the temporary file on any error, Ctrl-C included)."""
    src, where = open_source(source, rel)
    want = source[0].sums[rel]
    h, size = hashlib.sha256(), 0
    with src, atomic_writer(dest) as out:
        while True:
            try:
                block = src.read(BLOCK)
            except OSError as e:  # a connection dropped or timed out mid-file
                raise UserError(f'{where}: transfer failed ({e})')
            if not block:
                break
            h.update(block)
            out.write(block)
            size += len(block)
        got = h.hexdigest()
        if got != want:
            raise UserError(f'{rel}: sha256 mismatch, expected {want}, got {got} (from {where}); not installed')
    return size, where


def main(argv=None):
    args = parse_args(argv)
    sources = chosen_sets(args)

    # Look at what is already there first, so a refusal comes before any download.
    todo, wrong, total = [], [], 0
    for source in sources:
        for rel, want in source[0].sums.items():
            total += 1
            dest = os.path.join(args.dest, *rel.split('/'))
            if os.path.lexists(dest) and not os.path.isfile(dest):
                raise UserError(f'{dest}: exists but is not a regular file')
            if not os.path.isfile(dest):
                todo.append((source, rel, dest, 'installed'))
            elif file_sha256(dest) == want:
                print(f'skipped    {rel}: already present, sha256 ok')
            else:
                wrong.append(rel)
                todo.append((source, rel, dest, 'replaced'))
    if wrong and not args.force:
        more = f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''
        raise UserError(f'{os.path.join(args.dest, wrong[0])}: present with a different sha256{more}; '
                        'pass --force to replace it')

    for sub in sorted({rel.split('/')[0] for _, rel, _, _ in todo}):
        ensure_writable_dir(os.path.join(args.dest, sub))
    shown = None
    for source, rel, dest, verb in todo:
        if source is not shown:
            shown = source
            print(f'copying from {source[1]}' if source[1] is not None else f'downloading from {source[2]}')
        size, _ = install(source, rel, dest)
        print(f'{verb:<10} {rel} ({human(size)}), sha256 ok')
    for fileset, _, _ in sources:  # every file of the set is verified now
        if fileset.post:
            fileset.post(args.dest, list(fileset.sums))
    print(f'{total} files verified in {os.path.abspath(args.dest)}: '
          f'{len(todo)} installed, {total - len(todo)} already present')
    return 0


if __name__ == '__main__':
    run_cli(main)
