"""Feature extraction: a folder of audio files -> one feature `.mat` per file, as the corpus ships them.

    python feature_extraction.py --wav-dir DIR --out-dir DIR [--workers N]

Every .wav / .flac under --wav-dir (searched recursively; any sample rate, any channel count) becomes
OUT/<file stem>.mat (a flat folder, like the corpus's feature folder) holding `Audio_data`, a (T, 131)
float64 array: column 0 the frame time (frame index x 0.016 s), then the 65 IS13-ComParE low-level
descriptors and their 65 deltas from openSMILE with both framers at 32 ms / 16 ms (SPEC, "Data on disk").
Audio is down-mixed by averaging its channels and resampled to 16 kHz first.

Files whose .mat already exists are skipped, so a re-run resumes; each .mat is written to a temporary
file and renamed, so an interrupted run never leaves half a file. A file that cannot be read is named
at the end and the others still run; the exit code is then 1 (2 for usage errors).
"""
import sys

from device import default_workers
from lld import extract_folder
from utils import ArgParser, UserError, run_cli



def parse_args(argv):
    p = ArgParser(prog='feature_extraction.py', description=__doc__.split('\n')[0])
    p.add_argument('--wav-dir', required=True, help='folder of .wav/.flac files (searched recursively)')
    p.add_argument('--out-dir', required=True, help='folder for the <stem>.mat feature files')
    p.add_argument('--workers', type=int, default=default_workers(),
                   help=f'parallel processes (default: one per CPU, at most 8 = {default_workers()})')
    args = p.parse_args(argv)
    if args.workers < 1:
        raise UserError(f'--workers {args.workers}: expected 1 or more')
    return args


def main(argv=None):
    args = parse_args(argv)
    failures = extract_folder(args.wav_dir, args.out_dir, args.workers)
    if failures:
        print(f'{len(failures)} file(s) failed:', file=sys.stderr)
        for _, err in failures:
            print(f'  {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
