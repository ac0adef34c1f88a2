"""Train a chunk-level SER model (the reference's procedure, for every encoder, head and objective).

    python training.py -iter 5000 -batch 128 -emo Dom -atten SelfAttenVec \\
        [-model LSTM|CNN|KerasLSTM] [-ep E] [-emo Act Val Dom | -emo Class [--classes A S H N]]
        [--feat-dir DIR --label-csv FILE --norm-dir DIR --out-dir ./Models --device auto --seed S]
    torchrun --standalone --nproc_per_node=N training.py ...     (same arguments; -batch is the global batch)

Adam (lr 1e-4) over epochs of shuffled Train batches; every 50 iterations (and at the last one; with -ep at the
end of each epoch) the whole validation split is scored and the model is saved when the validation figure is
strictly better than the best so far: the mean 1 - CCC over validation batches (lower), or for -emo Class the
macro-F1 (higher). Writes, in --out-dir:
  {model}_iter{iter}_batch{batch}_ChunkSeq2One_{atten}_{emo}.pth.tar   the best model, a plain state_dict
  ... .json          its ModelSpec and how it was trained (NormTerm fingerprint, iteration, validation figure, seed)
  ... .history.csv   every validation;   ... .png   the curves
  ... .resume.pt     the full training state at the last validation or interruption (--resume continues)

    python training.py --task ranker -ep 20 -batch 128 -emo Act --prefs-dir ./prefs [--pairs-per-epoch 100000] ...
trains the retrieval follow-up's emotion ranker (SPEC-retrieval.md section 2) on preference_labels.py's pairs:
chunk k of one sentence against chunk k of the other with the pair's label, cross-entropy; each epoch a fresh
sample of --pairs-per-epoch Train pairs (in random order) and as many Validation pairs (all when fewer); saved when
the chunk pairs' validation macro-F1 is strictly higher. Writes {model}_epoch{E}_batch{B}_{emo}_ranker.pth.tar.

    python training.py --task chunk -ep 30 -batch 128 -emo Act --ranks-dir ./EmoChunkRankSeq --detailed FILE ...
trains its seq2seq model (section 5) on retrieval.py's Train ranks and the raters' labels: a value per chunk, the
utterance's their mean; targets the raters' mean and the emotion curve of the ranks (ranks.generate_chunk_EmoSeq);
loss 0.5 (1 - CCC) of the utterances + 0.5 (1 - CCC) of the chunks; Adam 1e-3; saved when the validation 1 - CCC
against the consensus labels is strictly lower. Writes {model}_epoch{E}_batch{B}_EmoRankerSeq_{emo}.pth.tar.

The loop, the resume state and the stop signals are chunkser/train/; what differs per task, chunkser/tasks.py.
"""
import time

from ..cli import (add_corpus_args, add_reference_args, add_system_args, reference_run, require_audio_corpus,
                   require_corpus)
from ..features.frontend import default_chunk_frames, read_record
from ..objectives import CLASS
from ..retrieval.ranks import OUT_DIR
from ..tasks import TRAINING_TASKS
from ..train.loop import fit
from ..utils import DEFAULT_C, DEFAULT_M, DEFAULT_N, FEAT_DIM, ArgParser, UserError, run_cli

# --recipe keras: the Keras original's choices, each also an option of its own
RECIPES = {'reference': dict(ccc_variance='unbiased', adam_eps=1e-8, bn_momentum=0.1),
           'keras': dict(ccc_variance='population', adam_eps=1e-7, bn_momentum=0.01)}


def add_model_args(p):
    g = p.add_argument_group('model')
    g.add_argument('--chunk-frames', type=int, default=None, help=f'm, frames per chunk (default ≈ 1 s at the features\' '
                   f'hop: {DEFAULT_M} for the IS13 LLDs, 50 for a --frontend\'s 0.02 s)')
    g.add_argument('--hidden-dim', type=int, default=FEAT_DIM, help=f'H, the chunk encoder\'s size (default {FEAT_DIM})')
    g.add_argument('--chunks', type=int, default=DEFAULT_C, help=f'C, chunks per utterance (default {DEFAULT_C})')
    g.add_argument('--scale', type=int, default=None, help=f'n, chunk-count scale: n*C chunks (default {DEFAULT_N}; '
                   '--task ranker or chunk 2)')
    g.add_argument('--task', choices=list(TRAINING_TASKS), default='utterance', help='utterance (default): the '
                   'sequence-to-one model; ranker: the retrieval follow-up\'s emotion ranker (--prefs-dir); chunk: '
                   'its seq2seq model (--ranks-dir, --detailed)')
    g.add_argument('--prefs-dir', default=None, help='--task ranker: preference_labels.py\'s folder of '
                   '{training,validation}_pairs_{emo}.csv')
    g.add_argument('--pairs-per-epoch', type=int, default=100_000,
                   help='--task ranker: Train pairs sampled per epoch, and as many Validation pairs (default 100000)')
    g.add_argument('--ranks-dir', default=OUT_DIR, help=f'--task chunk: retrieval.py\'s folder of rank files, '
                   f'training_{{emo}}.json for the Train split (default {OUT_DIR})')
    g.add_argument('--detailed', metavar='FILE', help='--task chunk: the raters\' labels (labels_detailed.json or '
                   '.csv of any MSP-Podcast release): the targets are their mean and std')
    g.add_argument('--bn-momentum', type=float, default=None, help='every batch norm\'s momentum, PyTorch\'s '
                   'convention: new = (1 - m) old + m batch (default 0.1; --recipe keras 0.01, Keras\'s 0.99)')


def add_training_args(p):
    g = p.add_argument_group('objective')
    g.add_argument('--classes', nargs='+', metavar='C', help='-emo Class: the classes to learn, in this order '
                   '(default: those of A S H U F D C N with Train rows); rows of other classes are left out')
    g.add_argument('--class-weights', choices=['inverse', 'none'], default='inverse',
                   help='-emo Class: cross-entropy weighted by inverse Train class frequency (default inverse)')
    g.add_argument('--ccc-variance', choices=['unbiased', 'population'], default=None,
                   help='variances in the CCC loss (default unbiased, the reference; --recipe keras population)')
    g = p.add_argument_group('training')
    g.add_argument('--recipe', choices=list(RECIPES), default='reference',
                   help='keras: the Keras original\'s CCC loss, Adam epsilon and batch-norm momentum at once '
                        '(each option given overrides it; default reference)')
    g.add_argument('--lr', type=float, default=None, help='Adam learning rate (default 1e-4; --task chunk 1e-3)')
    g.add_argument('--adam-eps', type=float, default=None, help='Adam epsilon (default 1e-8, PyTorch\'s; '
                   '--recipe keras 1e-7)')
    g.add_argument('--val-every', type=int, default=50, help='validate every N iterations (default 50)')
    g.add_argument('--seed', type=int, default=None, help='random seed (default: drawn and logged)')
    g.add_argument('--resume', action='store_true', help='continue the interrupted run of these settings')
    g.add_argument('--out-dir', default='./Models', help='where checkpoints go (default ./Models)')
    g.add_argument('--amp', choices=['bf16', 'fp16'], default=None, help='mixed precision, CUDA only (default off: fp32)')
    p.set_defaults(atten=None)  # None: not given (the task's default; a per-chunk task has no head)


def add_audio_args(p):
    g = p.add_argument_group('from audio: a self-supervised model inside the network (docs/finetuning.md)')
    g.add_argument('--wav-dir', default=None, help='the label table\'s audio files: train from audio, the --frontend '
                   'model inside the network (no feature files, no NormTerm: the label terms go into the JSON)')
    g.add_argument('--frontend', metavar='NAME_OR_PATH', default=None, help='with --wav-dir: the self-supervised '
                   'model (WavLM, wav2vec 2.0, HuBERT), a save_pretrained folder or a hub name')
    g.add_argument('--layers', default=None, metavar='L|all', help='with --wav-dir: hidden state L (0: the '
                   'transformer\'s input; default its last layer), or all: their softmax-weighted sum, weights learned')
    g.add_argument('--normalize', choices=['yes', 'no'], default=None, help='normalise each waveform to zero mean, '
                   'unit variance (default: the model\'s preprocessor_config.json)')
    g.add_argument('--finetune', action='store_true', help='train the model\'s transformer too (its convolutional '
                   'feature encoder stays frozen); without it the model is frozen')
    g.add_argument('--frontend-lr', type=float, default=1e-5, help='--finetune: the transformer\'s learning rate '
                   '(default 1e-5; the head\'s is --lr)')
    g.add_argument('--freeze-frontend-steps', type=int, default=0, metavar='K', help='--finetune: hold the '
                   'transformer frozen for the first K updates (default 0)')
    g.add_argument('--grad-checkpointing', action='store_true', help='--finetune: recompute the transformer\'s '
                   'activations in the backward instead of keeping them (less memory, ~30%% more time)')


def check_audio_args(args):
    """The from-audio options: together, and only where they mean something."""
    if args.finetune and not (args.wav_dir and args.frontend):
        raise UserError('--finetune trains the model inside the network from audio: it needs --wav-dir and --frontend')
    if bool(args.wav_dir) != bool(args.frontend):
        raise UserError('--wav-dir and --frontend go together (training from audio); for features of a front end, '
                        'extract them with feature_extraction.py --frontend and pass --feat-dir')
    given = [f for f, v in (('--layers', args.layers), ('--normalize', args.normalize)) if v is not None]
    if given and not args.wav_dir:
        raise UserError(f'{given[0]} is for training from audio (--wav-dir and --frontend)')
    tuning = [f for f, on in (('--freeze-frontend-steps', args.freeze_frontend_steps), ('--grad-checkpointing',
              args.grad_checkpointing)) if on]
    if tuning and not args.finetune:
        raise UserError(f'{tuning[0]} is for --finetune (without it the model inside the network is frozen)')
    if args.freeze_frontend_steps < 0 or not args.frontend_lr > 0:
        raise UserError('--freeze-frontend-steps must be 0 or more and --frontend-lr positive')
    if args.wav_dir and args.task != 'utterance':
        raise UserError(f'--wav-dir: --task {args.task} trains from features only (--feat-dir)')
    if args.layers not in (None, 'all'):
        if not args.layers.isdigit():
            raise UserError(f'--layers {args.layers}: expected a layer number or all')
        args.layers = int(args.layers)


def parse_args(argv):
    p = ArgParser(prog='training.py', description=__doc__.split('\n')[0])
    add_reference_args(p)
    add_corpus_args(p)
    add_model_args(p)
    add_training_args(p)
    add_audio_args(p)
    add_system_args(p)
    args = reference_run(p.parse_args(argv))
    check_audio_args(args)
    flags = {'iterations': '-iter', 'epochs': '-ep', 'batch_size': '-batch', 'chunk_frames': '--chunk-frames',
             'chunks': '--chunks', 'scale': '--scale', 'val_every': '--val-every', 'hidden_dim': '--hidden-dim'}
    for name, flag in flags.items():
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f'{flag} must be at least 1')
    if args.batch_size < 2:
        raise UserError('-batch must be at least 2: the CCC loss of one utterance is undefined')
    if args.classes and args.emo != CLASS:
        raise UserError(f'--classes is for -emo Class, not -emo {args.emo}')
    task = TRAINING_TASKS[args.task]
    for k, v in {**RECIPES[args.recipe], **task.defaults}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    task.check(args)
    if not 0 < args.bn_momentum <= 1:
        raise UserError(f'--bn-momentum {args.bn_momentum}: expected a value in (0, 1]')
    return args


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.wav_dir:
        require_audio_corpus(args)
    else:
        require_corpus(args)
    if args.chunk_frames is None and not args.wav_dir:  # ~1 s at the hop of the features' front end
        args.chunk_frames = default_chunk_frames(read_record(args.feat_dir))
    return fit(args, TRAINING_TASKS[args.task], t_start)


if __name__ == '__main__':
    run_cli(main)
