"""Feature extraction: a folder of audio files -> one feature `.mat` per file, as the corpus ships them.

    python feature_extraction.py --wav-dir DIR --out-dir DIR [--workers N]
    python feature_extraction.py --wav-dir DIR --out-dir DIR --frontend NAME_OR_PATH [--layer L]
                                 [--normalize yes|no] [--device auto]

Every .wav / .flac under --wav-dir (searched recursively; any sample rate, any channel count) becomes
OUT/<file stem>.mat (a flat folder, like the corpus's feature folder) holding `Audio_data`, a (T, 131)
float64 array: column 0 the frame time (frame index x 0.016 s), then the 65 IS13-ComParE low-level
descriptors and their 65 deltas from openSMILE with both framers at 32 ms / 16 ms (docs/predict.md).
Audio is down-mixed by averaging its channels and resampled to 16 kHz first.

--frontend: a self-supervised model instead (WavLM, wav2vec 2.0, HuBERT; a folder written by save_pretrained or
a hub name, whatever transformers' AutoModel.from_pretrained accepts): `Audio_data` is (T, 1 + D) float32, the
frame time (index x the model's hop, 0.02 s), then hidden_states[L] (0: the first transformer layer's input;
default the last layer). OUT/frontend.json records the model (sha256 of config and weights), layer, hop, width
and normalisation; the scripts downstream read it. The waveform is normalised when the model folder's
preprocessor_config.json says do_normalize; a folder without one needs --normalize yes|no. One process on
--device (torch's threads); recordings over 20 s go through in windows overlapping by 4 s (docs/frontends.md).

Files whose .mat already exists are skipped, so a re-run resumes; each .mat is written to a temporary
file and renamed, so an interrupted run never leaves half a file. A file that cannot be read is named
at the end and the others still run; the exit code is then 1 (2 for usage errors).
"""
import sys

from ..device import default_workers, select_device
from ..features.lld import extract_folder
from ..utils import ArgParser, UserError, run_cli


def parse_args(argv):
    p = ArgParser(prog='feature_extraction.py', description=__doc__.split('\n')[0])
    p.add_argument('--wav-dir', required=True, help='folder of .wav/.flac files (searched recursively)')
    p.add_argument('--out-dir', required=True, help='folder for the <stem>.mat feature files')
    p.add_argument('--workers', type=int, default=None,
                   help=f'parallel processes for openSMILE (default: one per CPU, at most 8 = {default_workers()})')
    g = p.add_argument_group('self-supervised front end')
    g.add_argument('--frontend', metavar='NAME_OR_PATH', help='a WavLM / wav2vec 2.0 / HuBERT model folder '
                   '(save_pretrained) or hub name, instead of the IS13 LLDs')
    g.add_argument('--layer', type=int, default=None, help='hidden_states index (0: the first transformer '
                   'layer\'s input; default: the last layer)')
    g.add_argument('--normalize', choices=['yes', 'no'], default=None, help='normalise the waveform (default: '
                   'the preprocessor config\'s do_normalize; required without one)')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'],
                   help='where the model runs (default auto: CUDA, then MPS, then CPU)')
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise UserError(f'--workers {args.workers}: expected 1 or more')
    if args.frontend is None and (args.layer is not None or args.normalize is not None):
        raise UserError('--layer and --normalize are options of --frontend')
    if args.frontend is not None and args.workers not in (None, 1):
        raise UserError('--workers: a --frontend runs in one process (its model uses torch\'s threads)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.frontend is None:
        from ..features.frontend import read_record
        if read_record(args.out_dir) is not None:
            raise UserError(f'{args.out_dir}: holds features of a --frontend (frontend.json): extract the IS13 LLDs '
                            'into another folder')
        failures = extract_folder(args.wav_dir, args.out_dir, args.workers or default_workers())
    else:
        from ..features import frontend
        front = frontend.SSLFrontEnd(args.frontend, args.layer, args.normalize, select_device(args.device))
        failures = frontend.extract_folder(args.wav_dir, args.out_dir, front)
    if failures:
        print(f'{len(failures)} file(s) failed:', file=sys.stderr)
        for _, err in failures:
            print(f'  {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
