"""Install the released v1.6 models and their z-norm terms, each file checked by sha256.

    python pretrained.py [--dest DIR] [--from DIR | --url-base URL] [--keras-from DIR | --keras-url-base URL]
                         [--retrieval-from DIR | --retrieval-url-base URL] [--force]

DEST is --dest, else the per-user folder the installed commands search: $CHUNKSER_HOME, else ~/.cache/chunkser
(`make pretrained` passes --dest . : the checkout, whose commands search the current folder first).

Three sets of files (SETS below):
- pytorch: the PyTorch reference's six checkpoints go to DEST/trained_model_v1.6/ and the eight NormTerm .mat
  files to DEST/NormTerm/; --from DIR copies them from DIR/trained_model_v1.6 and DIR/NormTerm.
- keras: the Keras original's twelve .h5 weight files go to DEST/trained_model_keras_v1.6/ and are converted
  there into our checkpoints (keras_convert.py: .pth.tar + .json beside each); --keras-from DIR copies them
  from DIR/trained_model_v1.6.
- retrieval (Chunk-Level-Emotion-Retrieval, Lin & Busso TASLP 2023): the three seq2seq models to
  DEST/trained_seq2seq_model_v1.6/, the three rankers to DEST/trained_ranker_model_v1.6/ and the rank sequences
  of the Validation split to DEST/EmoChunkRankSeq/ (--retrieval-from DIR in that layout), and beside each model
  the JSON that describes it (task, attribute, m = 62, C = 11, n = 2, sizes, NormTerm).
A set whose source is given (--from/--url-base, --keras-from/--keras-url-base, ...) is installed, the others not
(so `--from DIR` alone installs only the PyTorch set, offline); with no source given, every set is downloaded
from its URL/<path> (http(s):// or file://).

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

from .. import keras_convert
from ..checkpoint import checkpoint_name, description_path, parse_checkpoint_name
from ..files import atomic_writer, ensure_writable_dir, file_sha256, read_json, write_json
from ..home import ENV_HOME, user_home
from ..keras_convert import KERAS_SHA256, KERAS_URL_BASE  # the Keras set: its converter keeps its sums
from ..model import ModelSpec
from ..utils import ArgParser, UserError, run_cli

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



# Chunk-Level-Emotion-Retrieval at the commit of its v1.6 models (MIT licence, Wei-Cheng Lin)
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
# normterm.NormTerms.fingerprint() of the v1.6 NormTerm, which the retrieval models were trained with
V16_NORM_FINGERPRINT = '4acf53b4c2840b21'


TIMEOUT = 60        # seconds a download may stall before it counts as unreachable
BLOCK = 1 << 20     # bytes read at a time


def convert_keras(args, dests):
    """The keras set's post-install step: each .h5 -> our checkpoint beside it; skipped when the checkpoint's JSON
    already records this file's sha256 (--force converts again)."""
    for h5, digest in dests:
        spec, prov = keras_convert.describe(h5)
        out = os.path.join(os.path.dirname(h5), checkpoint_name(spec, prov.get('batch_size'), epochs=prov.get('epochs')))
        jp = description_path(out)
        if not args.force and os.path.isfile(out) and os.path.isfile(jp) and read_json(jp).get('keras_sha256') == digest:
            print(f'skipped    {os.path.basename(out)}: already converted')
            continue
        keras_convert.convert(h5)
        print(f'converted  {os.path.basename(h5)} -> {os.path.basename(out)}')


def describe_retrieval(args, dests):
    """The retrieval set's post-install step: X.json beside each model X.pth.tar, the ModelSpec that rebuilds it
    (task 'chunk' or 'ranker', head None, m = 62, C = 11, n = 2) and how it was trained (docs/retrieval.md)."""
    for path, digest in dests:
        if not path.endswith('.pth.tar'):
            continue
        fields, run = parse_checkpoint_name(path)  # the released names say task, attribute, epochs and batch
        spec = ModelSpec(**fields, chunk_frames=62, chunks=11, scale=2, norm_fingerprint=V16_NORM_FINGERPRINT,
                         norm_dir=os.path.abspath(os.path.join(args.dest, 'NormTerm'))).check()
        rel = os.path.relpath(path, args.dest).replace(os.sep, '/')
        source = next(fs for fs in SETS if fs.name == 'retrieval').source(args, rel)  # the URL, or the local copy
        write_json(description_path(path), dict(
            spec.to_json(), **run, sha256=digest,
            source=source if '://' in source else os.path.abspath(source), licence='MIT (c) Wei-Cheng Lin',
            released='Chunk-Level-Emotion-Retrieval v1.6 (Lin & Busso, TASLP 2023)'))


def retrieval_remote(rel):
    """The rankers and rank sequences lie under chunk_emotion_rankers/ upstream."""
    return rel if rel.startswith('trained_seq2seq') else 'chunk_emotion_rankers/' + rel


@dataclass
class FileSet:
    """One set of released files: its sums (path in the source -> sha256), where it comes from and where it goes.
    A further set is one more entry of SETS."""
    name: str
    flag: str            # --{flag} DIR copies from a local folder; --{flag.replace('from', 'url-base')} URL
    url_flag: str
    url_base: str
    sums: dict
    folders: dict        # first folder of a source path -> its folder under --dest
    post: object = None  # post(args, [(installed path, sha256)]) once every file of the set is verified
    remote: object = None  # path in the source -> path under the URL base, where upstream lays it out otherwise

    @property
    def attr(self):
        return self.flag.replace('-', '_')

    @property
    def url_attr(self):
        return self.url_flag.replace('-', '_')

    @property
    def make_var(self):
        """make pretrained's variable for --{flag}."""
        return 'PRETRAINED_FROM' if self.flag == 'from' else self.attr.upper()

    def installed_rel(self, rel):
        """A source path -> its path under --dest ('/'-separated, for messages)."""
        folder, rest = rel.split('/', 1)
        return f'{self.folders[folder]}/{rest}'

    def dest(self, root, rel):
        return os.path.join(root, *self.installed_rel(rel).split('/'))

    def source(self, args, rel):
        """Where one file comes from: its path in the --{flag} folder, else its URL."""
        src_dir = getattr(args, self.attr)
        if src_dir is not None:
            return os.path.join(src_dir, *rel.split('/'))
        remote = self.remote(rel) if self.remote else rel
        return (getattr(args, self.url_attr) or self.url_base).rstrip('/') + '/' + urllib.parse.quote(remote)  # [ ] -> %5B %5D

    def expects(self):
        return ' and '.join(f'{f}/' for f in self.folders)


SETS = [
    FileSet('pytorch', 'from', 'url-base', URL_BASE, SHA256,
            {'trained_model_v1.6': 'trained_model_v1.6', 'NormTerm': 'NormTerm'}),
    FileSet('keras', 'keras-from', 'keras-url-base', KERAS_URL_BASE, KERAS_SHA256,
            {'trained_model_v1.6': 'trained_model_keras_v1.6'}, post=convert_keras),
    FileSet('retrieval', 'retrieval-from', 'retrieval-url-base', RETRIEVAL_URL_BASE, RETRIEVAL_SHA256,
            {d: d for d in ('trained_seq2seq_model_v1.6', 'trained_ranker_model_v1.6', 'EmoChunkRankSeq')},
            post=describe_retrieval, remote=retrieval_remote),
]


def parse_args(argv):
    p = ArgParser(prog='pretrained.py', description=__doc__.split('\n')[0])
    p.add_argument('--dest', default=None, help=f'folder that receives the sets (default ${ENV_HOME}, else '
                   '~/.cache/chunkser: where the commands look after the current folder)')
    for s in SETS:
        src = p.add_mutually_exclusive_group()
        src.add_argument(f'--{s.flag}', dest=s.attr, metavar='DIR',
                         help=f'install the {s.name} set, copied from DIR/{s.expects()} instead of downloaded')
        src.add_argument(f'--{s.url_flag}', dest=s.url_attr, metavar='URL',
                         help=f'install the {s.name} set, downloaded from URL/<path> (default {s.url_base})')
    p.add_argument('--force', action='store_true', help='replace present files whose sha256 is wrong')
    args = p.parse_args(argv)
    args.dest = args.dest or user_home()
    return args


def human(size):
    return f'{size / 1e6:.1f} MB' if size >= 100_000 else f'{size} bytes'


def open_source(args, fs, rel):
    """A readable binary stream of one released file, and where it comes from (for messages)."""
    if getattr(args, fs.attr) is not None:
        path = fs.source(args, rel)
        try:
            return open(path, 'rb'), path
        except FileNotFoundError:
            raise UserError(f'{path}: not found (--{fs.flag} expects {fs.expects()} folders)')
        except OSError as e:
            raise UserError(f'{path}: cannot read ({e.strerror})')
    url = fs.source(args, rel)
    offline = f'; without network, install from a copy of the files: --{fs.flag} DIR (make pretrained {fs.make_var}=DIR)'
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT), url
    except urllib.error.HTTPError as e:
        raise UserError(f'{url}: HTTP {e.code} {e.reason}')
    except urllib.error.URLError as e:
        raise UserError(f'{url}: cannot be reached ({getattr(e.reason, "strerror", None) or e.reason}){offline}')
    except (OSError, ValueError) as e:  # timeouts, malformed URLs
        raise UserError(f'{url}: cannot be reached ({e}){offline}')


def install(args, fs, rel, dest):
    """Copy one file to a temporary file beside `dest` and check its sum; only a right sum renames it into place
    (files.atomic_writer removes the temporary file on any error, Ctrl-C included)."""
    src, where = open_source(args, fs, rel)
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
        expected = getattr(src, 'headers', {}).get('Content-Length')  # HTTP: a body cut short reads as a short file
        if expected is not None and size < int(expected):
            raise UserError(f'{rel}: transfer ended after {size} of {expected} bytes (from {where}); not installed')
        got = h.hexdigest()
        if got != fs.sums[rel]:
            raise UserError(f'{rel}: sha256 mismatch, expected {fs.sums[rel]}, got {got} (from {where}); not installed')
    return size, where


def selected_sets(args):
    """The sets whose source was given; none given: every set, downloaded."""
    for fs in SETS:
        src = getattr(args, fs.attr)
        if src is not None and not os.path.isdir(src):
            raise UserError(f'{src}: --{fs.flag} folder not found')
    given = [fs for fs in SETS if getattr(args, fs.attr) is not None or getattr(args, fs.url_attr) is not None]
    return given or SETS


def plan(args, fs):
    """What to do for one set, from what is already there: [(rel, dest, verb)]; present wrong files need --force."""
    todo, wrong = [], []
    for rel, want in fs.sums.items():
        dest = fs.dest(args.dest, rel)
        if os.path.lexists(dest) and not os.path.isfile(dest):
            raise UserError(f'{dest}: exists but is not a regular file')
        if not os.path.isfile(dest):
            todo.append((rel, dest, 'installed'))
        elif file_sha256(dest) == want:
            print(f'skipped    {fs.installed_rel(rel)}: already present, sha256 ok')
        else:
            wrong.append(dest)
            todo.append((rel, dest, 'replaced'))
    if wrong and not args.force:
        more = f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''
        raise UserError(f'{wrong[0]}: present with a different sha256{more}; pass --force to replace it')
    return todo


def main(argv=None):
    args = parse_args(argv)
    sets = selected_sets(args)
    plans = [(fs, plan(args, fs)) for fs in sets]  # every refusal comes before any download
    for fs, todo in plans:
        for folder in sorted({os.path.dirname(dest) for _, dest, _ in todo}):
            ensure_writable_dir(folder)
        if todo:
            src = getattr(args, fs.attr)
            print(f'copying from {src}' if src is not None else f'downloading from {getattr(args, fs.url_attr) or fs.url_base}')
        for rel, dest, verb in todo:
            size, _ = install(args, fs, rel, dest)
            print(f'{verb:<10} {fs.installed_rel(rel)} ({human(size)}), sha256 ok')
        if fs.post is not None:
            fs.post(args, [(fs.dest(args.dest, rel), want) for rel, want in fs.sums.items()])
        print(f'{len(fs.sums)} files verified in {os.path.abspath(args.dest)}: '
              f'{len(todo)} installed, {len(fs.sums) - len(todo)} already present')
    return 0


if __name__ == '__main__':
    run_cli(main)
