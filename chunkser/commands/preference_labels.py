"""Preference labels for the emotion rankers (the retrieval follow-up's generate_preference_labels.py).

python preference_labels.py -emo Act --detailed labels_detailed.json --label-csv labels_concensus.csv [--out-dir ./prefs]
writes prefs/training_pairs_Act.csv and prefs/validation_pairs_Act.csv (Sentence1,Sentence2,PreferLabel), each
from a fresh np.random.seed(31). Splits come from the label table, raters from the detailed labels (any layout
raters.py reads).
"""
import sys

from ..corpus import ATTRIBUTES, LABEL_COLUMN, read_label_table, resolve_split, split_files
from ..files import ensure_writable_dir
from ..retrieval.preferences import pair_file, preference_pairs, write_pairs_csv
from ..retrieval.raters import rater_values, read_raters
from ..utils import ArgParser, run_cli


def parse_args(argv):
    p = ArgParser(prog='preference_labels.py', description=__doc__.split('\n')[0])
    p.add_argument('-emo', '--emo_attr', dest='emo', default='Act', choices=ATTRIBUTES,
                   help='attribute: Act, Val or Dom (default Act)')
    p.add_argument('--detailed', required=True,
                   help='the raters: labels_detailed.json (v1.6) or labels_detailed.csv (v1.6, v1.7-v1.12, v2.0)')
    p.add_argument('--label-csv', required=True, help='labels_concensus.csv (the splits)')
    p.add_argument('--out-dir', default='./prefs', help='output folder (default ./prefs)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    df = read_label_table(args.label_csv)
    raters = read_raters(args.detailed)
    col = LABEL_COLUMN[args.emo]
    out = []  # every split computed (and every refusal raised) before anything is written
    for which in ('train', 'validation'):
        split = resolve_split(df, which, args.label_csv)
        fnames = split_files(df, split)
        values = rater_values(raters, fnames, col, args.detailed)  # list of (R_i,) per sentence
        pairs = preference_pairs(values, progress=True)  # (P, 3): i, j, label
        out.append((pair_file(args.out_dir, split, args.emo), fnames, pairs))
    ensure_writable_dir(args.out_dir)
    for path, fnames, pairs in out:
        write_pairs_csv(path, fnames, pairs)  # atomic: a crash leaves no half file
        print(f'{len(pairs)} pairs from {len(fnames)} sentences ({args.emo}) -> {path}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    run_cli(main)
