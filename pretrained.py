"""Install the released v1.6 checkpoints and their z-norm terms, each file checked by sha256.

    python pretrained.py [--dest .] [--from DIR | --url-base URL] [--force]

The six checkpoints go to DEST/trained_model_v1.6/ and the eight NormTerm .mat files to DEST/NormTerm/.
With --from they are copied from a local folder holding those two subfolders; otherwise each one is
downloaded from URL/trained_model_v1.6/<file> or URL/NormTerm/<file> (http(s):// or file://).

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

from utils import ArgParser, UserError, atomic_writer, ensure_writable_dir, run_cli

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

TIMEOUT = 60        # seconds a download may stall before it counts as unreachable
BLOCK = 1 << 20     # bytes read at a time


def parse_args(argv):
    p = ArgParser(prog='pretrained.py', description=__doc__.split('\n')[0])
    p.add_argument('--dest', default='.', help='folder that receives trained_model_v1.6/ and NormTerm/ (default .)')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--from', dest='src_dir', metavar='DIR',
                     help='copy from DIR/trained_model_v1.6 and DIR/NormTerm instead of downloading')
    src.add_argument('--url-base', default=URL_BASE, metavar='URL', help=f'download from URL/<path> (default {URL_BASE})')
    p.add_argument('--force', action='store_true', help='replace present files whose sha256 is wrong')
    p.add_argument('--debug', action='store_true', help='show tracebacks of user errors')
    return p.parse_args(argv)


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


def open_source(args, rel):
    """A readable binary stream of one released file, and where it comes from (for messages)."""
    if args.src_dir is not None:
        path = os.path.join(args.src_dir, *rel.split('/'))
        try:
            return open(path, 'rb'), path
        except FileNotFoundError:
            raise UserError(f'{path}: not found (--from expects trained_model_v1.6/ and NormTerm/ folders)')
        except OSError as e:
            raise UserError(f'{path}: cannot read ({e.strerror})')
    url = args.url_base.rstrip('/') + '/' + urllib.parse.quote(rel)
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT), url
    except urllib.error.HTTPError as e:
        raise UserError(f'{url}: HTTP {e.code} {e.reason}')
    except urllib.error.URLError as e:
        raise UserError(f'{url}: cannot be reached ({getattr(e.reason, "strerror", None) or e.reason})')
    except (OSError, ValueError) as e:  # timeouts, malformed URLs
        raise UserError(f'{url}: cannot be reached ({e})')


def install(args, rel, dest):
    """Copy one file to a temporary file beside `dest` and check its sum; only a right sum renames it into place
    (utils.atomic_writer removes the temporary file on any error, Ctrl-C included)."""
    src, where = open_source(args, rel)
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
        if got != SHA256[rel]:
            raise UserError(f'{rel}: sha256 mismatch, expected {SHA256[rel]}, got {got} (from {where}); not installed')
    return size, where


def main(argv=None):
    args = parse_args(argv)
    if args.src_dir is not None and not os.path.isdir(args.src_dir):
        raise UserError(f'{args.src_dir}: --from folder not found')

    # Look at what is already there first, so a refusal comes before any download.
    todo, wrong = [], []
    for rel, want in SHA256.items():
        dest = os.path.join(args.dest, *rel.split('/'))
        if os.path.lexists(dest) and not os.path.isfile(dest):
            raise UserError(f'{dest}: exists but is not a regular file')
        if not os.path.isfile(dest):
            todo.append((rel, dest, 'installed'))
        elif file_sha256(dest) == want:
            print(f'skipped    {rel}: already present, sha256 ok')
        else:
            wrong.append(rel)
            todo.append((rel, dest, 'replaced'))
    if wrong and not args.force:
        more = f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''
        raise UserError(f'{os.path.join(args.dest, wrong[0])}: present with a different sha256{more}; '
                        'pass --force to replace it')

    for sub in sorted({rel.split('/')[0] for rel, _, _ in todo}):
        ensure_writable_dir(os.path.join(args.dest, sub))
    if todo:
        print(f'copying from {args.src_dir}' if args.src_dir is not None else f'downloading from {args.url_base}')
    for rel, dest, verb in todo:
        size, _ = install(args, rel, dest)
        print(f'{verb:<10} {rel} ({human(size)}), sha256 ok')
    print(f'{len(SHA256)} files verified in {os.path.abspath(args.dest)}: '
          f'{len(todo)} installed, {len(SHA256) - len(todo)} already present')
    return 0


if __name__ == '__main__':
    run_cli(main)
