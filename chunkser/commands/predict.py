"""Predict arousal (Act), valence (Val), dominance (Dom) on the 1..7 scale, or the emotion class, for audio or features.

    python predict.py PATH [PATH ...] [-emo Act Val Dom | -emo Class] [-model LSTM] [-atten SelfAttenVec]
                      [-iter 5000 | -ep E] [-batch 128] [--model-dir DIR] [--checkpoint FILE ...]
                      [--norm-dir DIR] [--out FILE.csv] [--plot DIR] [--window 11] [--segments vad|fixed]
                      [--segments-out FILE.csv] [--device auto]

PATH is a .wav/.flac file (any sample rate, any channel count), a feature .mat (as feature_extraction.py
writes them), or a folder searched recursively for both. Without -emo, one checkpoint per attribute is looked
up by the reference's file name (-model, -iter or -ep, -batch, -atten; e.g. -model CNN -ep 100 -batch 256 -atten
GatedVec finds the converted Keras models) in --model-dir, else ./Models, ./trained_model_v1.6,
./trained_model_keras_v1.6, then the same folders in $CHUNKSER_HOME (default ~/.cache/chunkser, where `chunkser
pretrained` installs them); -emo names the targets of one checkpoint to look up instead (-emo Act Val Dom: the
one ActValDom model fills the three columns; -emo Class: the categorical model). Or --checkpoint FILE
(repeatable) runs exactly that file, ours or one keras_convert.py or pretrained.py wrote, as its JSON
describes it, and fills the columns of its targets; two checkpoints that fill one column are refused.

Output: CSV rows `file,Act,Val,Dom,start,end,voiced` on stdout and, with --out, in a file; with a categorical
model (-emo Class) its columns `Class,p_<c>...` (the predicted EmoClass letter, then each class's probability in
the model's class order) come after Dom: `file,Act,Val,Dom,Class,p_A,p_S,...,start,end,voiced`, Act/Val/Dom
empty unless a model gives them. `file` is the path as given (joined with the folder for files found in one).
The model was trained on turns of 2.75 to 11 s (its 11 chunks of 1 s), so audio longer than --window seconds is
cut into speech segments (--segments vad, the default): a voice-activity detector (Silero VAD) finds the speech,
pauses split it, a segment over --window seconds is cut at its longest inner pause, one under 2.75 s joins a
neighbour across a pause under 1 s; stretches without speech (silence, noise, music) get no row, and are named on
stderr and in --segments-out FILE (rows file,start,end,speech,row: row 0 for them). --segments fixed cuts
consecutive windows of equal length instead, at most --window seconds each (a .mat file is always cut so).
start/end are a row's bounds in seconds (frame index x 0.016). A recording that fits one window gets start 0
and end its length. An attribute whose checkpoint is missing is named on stderr and its column left empty.
`voiced` is the share of a row's speech: for audio, of the frames the voice-activity detector calls speech
(--segments fixed, and .mat files: the frames the pitch tracker calls voiced). A row under 10% is named on
stderr (little speech: noise or silence, whose values are not meaningful) and greyed out in the plots; a row of
audio shorter than 2.75 s (the corpus's shortest turn) is named on stderr too.

A seq2seq model of the retrieval follow-up (task 'chunk', `pretrained.py` installs the released ones in
./trained_seq2seq_model_v1.6) also gives a value per chunk: --chunks-out FILE writes the rows
`file,attribute,chunk,start,end,value` (chunk numbers run on through a recording's windows, times in seconds,
values on the 1..7 scale), and --plot draws that emotion curve over the waveform (<name>_curve.png).

A checkpoint trained on a self-supervised front end's features (feature_extraction.py --frontend) turns audio into
those features with the same model, layer and normalisation (its JSON records them; --frontend says where the model
is when the recorded path is elsewhere); times use that front end's hop (0.02 s) and `voiced` stays empty.

--submission FILE writes the Odyssey 2024 challenge's format for a folder of unlabelled audio (its Test3): one row
per input file, `FileName,EmoClass` for a Class model or `FileName,EmoAct,EmoVal,EmoDom` (1..7) for Act, Val and
Dom models; a recording of several rows is combined by duration (chunkser/submission.py).

The same from Python: `from predict import predict_files` (inference.py) returns the --out rows as a DataFrame.
"""
import argparse
import csv
import os
import sys

from .. import files, plots
from ..cli import add_reference_args, add_system_args, reference_run
from ..corpus import ATTRIBUTES
from ..inference import (CHUNK_HEADER, SEGMENT_HEADER, SEGMENTS, Options, collect_inputs, item_rows, load_models,
                         predict_files, scored_items, segment_rows)
from ..demo import use_demo
from ..files import ensure_writable_dir
from ..objectives import CLASS
from ..submission import check_unique, submission_header, submission_row
from ..utils import ArgParser, UserError, run_cli

__all__ = ['main', 'parse_args', 'predict_files']  # predict_files: the library call, re-exported


def parse_args(argv):
    p = ArgParser(prog='predict.py', description=__doc__.split('\n')[0], epilog=__doc__.split('\n\n', 2)[2],
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('paths', nargs='*', metavar='PATH',
                   help='.wav/.flac/.mat files, or folders of them (with --demo, default: the demo Test audio)')
    g = add_reference_args(p, emo=False)
    g.add_argument('-emo', '--emo_attr', dest='emo', nargs='+', default=None, choices=ATTRIBUTES + (CLASS,),
                   metavar='EMO', help='the targets of the one checkpoint to look up: Act Val Dom for the model of '
                   'all three, Class for the categorical one (default: one checkpoint per attribute)')
    p.add_argument('--checkpoint', action='append', metavar='FILE',
                   help='use this checkpoint, a .pth.tar or an exported .onnx (repeat for several; its JSON says '
                        'what it predicts) instead of looking up -model/-atten/-iter/-batch/-emo names')
    p.add_argument('--chunks-out', metavar='FILE', help="a seq2seq model's value per chunk: rows "
                   'file,attribute,chunk,start,end,value (needs --checkpoint of task chunk models)')
    p.add_argument('--model-dir', help='checkpoint folder (default ./Models, then ./trained_model_v1.6, '
                   './trained_model_keras_v1.6, then the same in $CHUNKSER_HOME, default ~/.cache/chunkser)')
    p.add_argument('--norm-dir', help="z-norm terms (default: the folder the checkpoint's JSON names, else ./NormTerm, "
                   'else $CHUNKSER_HOME/NormTerm)')
    p.add_argument('--out', help='also write the CSV rows to this file')
    p.add_argument('--plot', metavar='DIR', help='draw <name>_chunks.png per recording (chunk layout and weights) '
                   'and, for recordings cut into windows, <name>_timeline.png (Act/Val/Dom over time)')
    p.add_argument('--window', type=float, default=11.0,
                   help='longest span in seconds scored as one utterance; 0 never cuts (default 11)')
    p.add_argument('--segments', choices=SEGMENTS, default='vad',
                   help='audio longer than --window: vad = speech segments, no row where there is no speech; '
                        'fixed = consecutive equal windows (default vad)')
    p.add_argument('--segments-out', metavar='FILE', help='write the rows\' spans and the stretches without speech: '
                   'file,start,end,speech,row (row 0: no speech, no row)')
    p.add_argument('--submission', metavar='FILE', help="also write the challenge's submission file: one row per input "
                   'file, FileName,EmoClass for a Class model or FileName,EmoAct,EmoVal,EmoDom for Act, Val and Dom '
                   'models (a recording of several rows: their duration-weighted mean; see chunkser/submission.py)')
    p.add_argument('--force', action='store_true', help="use --norm-dir even if the checkpoint's JSON names other terms")
    p.add_argument('--frontend', metavar='NAME_OR_PATH', help="audio of a checkpoint trained on self-supervised "
                   "features goes through the model its JSON records; this gives where that model is now (offline, "
                   "moved); a model with other sha256 is refused")
    p.add_argument('--demo', action='store_true', help="the demo corpus's checkpoints and NormTerm (see training.py --demo)")
    add_system_args(p)
    args = reference_run(p.parse_args(argv))
    if args.demo:
        demo_paths(args)
    if not args.paths:
        raise UserError('predict.py: give at least one PATH (a .wav, .flac or .mat file, or a folder)')
    args.options = options(args)  # checks --window
    for out in (args.out, args.chunks_out, args.segments_out, args.submission):
        if out and not os.path.isdir(os.path.dirname(out) or '.'):  # fail before the work, not after
            raise UserError(f'{out}: the folder for the CSV does not exist')
    return args


def demo_paths(args):
    """--demo: the demo's Models/ and NormTerm/; with no PATH, the audio of its Test split."""
    import pandas as pd
    paths = use_demo(args)
    if not args.paths:
        df = pd.read_csv(paths['label_csv'])
        args.paths = [os.path.join(paths['audio_dir'], f) for f in df[df['Split_Set'] == 'Test']['FileName']]


def write_csv(path, header, rows):
    try:
        files.write_csv(path, [header, *rows], lineterminator='\n')
    except OSError as e:
        raise UserError(f'{path}: cannot write the CSV ({e.strerror})')


def options(args):
    """The command's arguments -> inference.Options; the command skips unreadable inputs and reports them."""
    return Options(checkpoints=tuple(args.checkpoint or ()), model_dir=args.model_dir, norm_dir=args.norm_dir,
                   emo=args.emo, encoder=args.encoder, atten=args.atten, iterations=args.iterations,
                   epochs=args.epochs, batch_size=args.batch_size, window=args.window, segments=args.segments,
                   force=args.force, frontend=args.frontend, device=args.device, cpu_streams=args.cpu_streams, chunks=bool(args.chunks_out),
                   skip_errors=True, flags=True)


def main(argv=None):
    args = parse_args(argv)
    opts = args.options
    files = collect_inputs(args.paths)
    models = load_models(opts)
    sub_header = submission_header(models) if args.submission else None  # refused before any file is scored
    if args.plot:
        ensure_writable_dir(args.plot)

    out = csv.writer(sys.stdout, lineterminator='\n')
    out.writerow(models.header)
    rows, chunk_rows, seg_rows, sub_rows, failures, names = [], [], [], [], [], plots.plot_names(files)
    for it in scored_items(files, opts, models, failures, keep_audio=bool(args.plot)):
        r, c = item_rows(it, models.header)
        out.writerows(r)
        sys.stdout.flush()
        rows += r
        chunk_rows += c
        seg_rows += segment_rows(it)
        if sub_header:
            sub_rows.append(submission_row(it, sub_header))
        if args.plot:
            plots.plot_item(args.plot, it, names)

    if args.out:
        write_csv(args.out, models.header, rows)
    if args.chunks_out:
        write_csv(args.chunks_out, CHUNK_HEADER, chunk_rows)
    if args.segments_out:
        write_csv(args.segments_out, SEGMENT_HEADER, seg_rows)
    if args.submission and failures:  # a submission needs a row for every file: none rather than a partial one
        print(f'{args.submission}: not written ({len(failures)} input(s) failed)', file=sys.stderr)
    elif args.submission:
        check_unique(sub_rows)
        write_csv(args.submission, sub_header, sub_rows)
    if failures:
        print(f'{len(failures)} of {len(files)} input(s) failed: {", ".join(failures)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
