"""The command line the scripts share: the reference's arguments, the corpus and system groups, --demo.

Every script builds its parser from these groups, so a flag means the same everywhere.
"""
import os

from .corpus import ATTRIBUTES
from .entry import COMMANDS, MODULE_COMMANDS  # noqa: F401  (the commands, named beside their launcher)
from .spec import DEFAULT_HEAD, registered
from .objectives import CLASS, emo_token
from .utils import UserError

DEFAULT_ITERATIONS = 5000

# environment variables that stand in for corpus paths (documented in the README)
ENV_FEAT_DIR, ENV_LABEL_CSV = 'SER_FEAT_DIR', 'SER_LABEL_CSV'


def add_reference_args(p, emo=True):
    """The reference's own command line: -iter/-batch/-emo/-atten and their long forms (they also name the
    checkpoint file), with the paper's -model and the Keras original's -ep (call reference_run after parsing)."""
    g = p.add_argument_group('reference arguments')
    g.add_argument('-iter', '--iterations', dest='iterations', type=int, default=None,
                   help=f'training iterations (default {DEFAULT_ITERATIONS})')
    g.add_argument('-ep', '--epochs', dest='epochs', type=int, default=None,
                   help='epochs of the Train split instead of -iter (the Keras original\'s and the retrieval '
                        'follow-up\'s count), validated at the end of each')
    g.add_argument('-batch', '--batch_size', dest='batch_size', type=int, default=128,
                   help='batch size (default 128)')
    if emo:
        g.add_argument('-emo', '--emo_attr', dest='emo', nargs='+', default=['Act'], choices=ATTRIBUTES + (CLASS,),
                       metavar='EMO', help='Act, Val or Dom (default Act); several for one model of them all '
                       '(-emo Act Val Dom); Class for the categorical emotion (EmoClass)')
    g.add_argument('-model', '--model_type', dest='encoder', default='LSTM', choices=list(registered('ENCODERS')),
                   help='chunk encoder: the reference\'s LSTM, or the Keras original\'s CNN and KerasLSTM (default LSTM)')
    g.add_argument('-atten', '--atten_type', dest='atten', default=DEFAULT_HEAD,
                   choices=list(registered('HEADS')),
                   help=f'chunk aggregation head (default {DEFAULT_HEAD})')
    return g


def reference_run(args):
    """-iter or -ep (not both; neither: -iter 5000), and -emo as the name of its targets ('ActValDom')."""
    if args.iterations is not None and args.epochs is not None:
        raise UserError('-iter and -ep: give one (iterations or epochs), not both')
    if args.iterations is None and args.epochs is None:
        args.iterations = DEFAULT_ITERATIONS
    if getattr(args, 'emo', None) is not None:
        args.emo = emo_token(args.emo)
    return args


def add_corpus_args(p):
    g = p.add_argument_group('corpus')
    g.add_argument('--feat-dir', default=os.environ.get(ENV_FEAT_DIR),
                   help=f'folder of feature .mat files (or ${ENV_FEAT_DIR})')
    g.add_argument('--label-csv', default=os.environ.get(ENV_LABEL_CSV),
                   help=f'labels_concensus.csv / labels_consensus.csv (or ${ENV_LABEL_CSV})')
    g.add_argument('--norm-dir', default='./NormTerm', help='z-norm terms folder (default ./NormTerm)')
    g.add_argument('--store', default='./feat_store',
                   help='feature store folder: normalised float32 features in one memory-mapped file per split, '
                        'built once and rebuilt when features or NormTerm change (default ./feat_store)')
    g.add_argument('--store-dtype', choices=['float32', 'float16'], default='float32',
                   help='what the feature store keeps: float16 halves its disk (the model reads float32; see the README '
                        'on the accuracy cost; default float32)')
    g.add_argument('--no-store', dest='store', action='store_const', const=None,
                   help="read each utterance's .mat file instead (the reference's way)")
    g.add_argument('--demo', action='store_true',
                   help='use the demo corpus of synthesized speech (built on first use in $DEMO_DIR, default ./demo_data), '
                        'with its own NormTerm and Models folders inside it')
    return g


def add_system_args(p):
    g = p.add_argument_group('system')  # --device and --cpu-streams, shared by every script (--debug: utils.ArgParser)
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'],
                   help='auto: CUDA, then MPS, then CPU (default auto)')
    g.add_argument('--cpu-streams', type=int, default=0, metavar='K',
                   help='on CPU, run the LSTM as K parallel single-threaded streams over parts of the batch, same '
                        'numbers (default 0: one per torch thread; 1: one multi-threaded call, as the reference)')
    return g


def require_corpus(args):
    """--demo resolved (by the demo corpus's own module), then the corpus paths checked."""
    if getattr(args, 'demo', False):
        from .demo import use_demo  # the builder is imported only where --demo is given
        use_demo(args)
    if not args.feat_dir or not args.label_csv:
        raise UserError('no corpus given: pass --feat-dir DIR --label-csv FILE '
                        f'(or set {ENV_FEAT_DIR} and {ENV_LABEL_CSV}, or try --demo)')
    if not os.path.isdir(args.feat_dir):
        raise UserError(f'{args.feat_dir}: feature folder not found')
    if not os.path.isfile(args.label_csv):
        raise UserError(f'{args.label_csv}: label file not found')


def require_audio_corpus(args):
    """The paths of a run from audio: the audio folder and the label table."""
    if not args.label_csv:
        raise UserError(f'--wav-dir needs --label-csv FILE (or set {ENV_LABEL_CSV})')
    if not os.path.isdir(args.wav_dir):
        raise UserError(f'{args.wav_dir}: audio folder not found')
    if not os.path.isfile(args.label_csv):
        raise UserError(f'{args.label_csv}: label file not found')
