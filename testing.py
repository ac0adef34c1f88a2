"""Score a split with a trained checkpoint and print the reference's seven result lines.

    python testing.py -iter 5000 -batch 128 -emo Dom -atten SelfAttenVec \\
        [--feat-dir DIR --label-csv FILE --norm-dir DIR --model-dir DIR --split NAME --out CSV]

The checkpoint is LSTM_iter{iter}_batch{batch}_ChunkSeq2One_{atten}_{emo}.pth.tar, looked for in
--model-dir if given, else ./Models, else ./trained_model_v1.6. Predictions are de-normalised
and not clipped, as the reference's. --checkpoint FILE scores exactly that file, as the JSON beside it
describes it (attribute, task); a seq2seq model (task 'chunk', Lin & Busso TASLP 2023) prints the
retrieval reference's lines EmoRankerSeq_Info, Epochs, Batch_Size, Model_Type, {emo}-CCC.
"""
import csv
import os

from checkpoint import (check_norm, checkpoint_name, find_checkpoint, load_model, read_description, read_spec,
                        require_task)
from cli import add_corpus_args, add_reference_args, add_system_args, require_corpus
from scoring import predict_utterances
from store import open_features
from streams import use_cpu_streams
from utils import (ArgParser, NormTerms, UserError, evaluation_metrics, read_label_table, require_feature_files,
                   resolve_split, run_cli, select_device, split_items)


def parse_args(argv):
    p = ArgParser(prog='testing.py', description=__doc__.split('\n')[0])
    add_reference_args(p)
    add_corpus_args(p)
    g = p.add_argument_group('testing')
    g.add_argument('--checkpoint', metavar='FILE', help="score this checkpoint (its JSON says what it is); "
                   '-iter/-batch/-emo/-atten and --model-dir are then not used')
    g.add_argument('--model-dir', default=None, help='checkpoint folder (default ./Models, then ./trained_model_v1.6)')
    g.add_argument('--split', default=None, help='split to score (default Test, else Test1)')
    g.add_argument('--out', default=None, help='write file,true,pred rows to this CSV')
    g.add_argument('--score-batch', type=int, default=64, help='utterances scored per model call (default 64)')
    g.add_argument('--force', action='store_true', help='score even if the checkpoint was trained with other NormTerm terms')
    add_system_args(p)
    return p.parse_args(argv)


def locate_checkpoint(args):
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise UserError(f'{args.checkpoint}: checkpoint not found')
        return args.checkpoint
    name = checkpoint_name(args.iterations, args.batch_size, args.atten, args.emo)
    path = find_checkpoint(name, args.model_dir)
    if path is None:
        where = args.model_dir or './Models or ./trained_model_v1.6'
        raise UserError(f'{name}: checkpoint not found in {where} (train one with training.py, '
                        f'or run `make pretrained` for the released v1.6 files)')
    return path


def main(argv=None):
    args = parse_args(argv)
    require_corpus(args)
    device = select_device(args.device)
    ckpt = locate_checkpoint(args)
    norm = NormTerms.load(args.norm_dir)
    spec = read_spec(ckpt, None if args.checkpoint else args.atten, norm.feat_dim)
    require_task(spec, ckpt, ('utterance', 'chunk'), 'testing.py')
    if args.checkpoint:
        args.emo = spec.emo  # the attribute its JSON names
    check_norm(spec, norm, args.norm_dir, ckpt, args.force)
    model = use_cpu_streams(load_model(ckpt, spec, device), device, args.cpu_streams)
    print(f'Loaded checkpoint: {ckpt}')

    df = read_label_table(args.label_csv)
    split = args.split or resolve_split(df, 'test', args.label_csv)
    if args.split and split not in set(df['Split_Set'].astype(str)):
        raise UserError(f'{args.label_csv}: no rows with Split_Set {split!r}')
    fnames, y_true = split_items(df, split, args.emo, args.label_csv)
    require_feature_files(args.feat_dir, fnames, split)
    feats = open_features(args.store, args.feat_dir, fnames, norm)
    raw, seconds = predict_utterances(model, feats, device, args.score_batch, progress=True)
    pred = norm.denorm_label(raw, args.emo)
    ccc = evaluation_metrics(y_true, pred)

    if spec.task == 'chunk':  # the retrieval reference's testing.py lines
        info = read_description(ckpt)
        print('EmoRankerSeq_Info')
        print(f'Epochs: {info.get("epochs", "?")}')
        print(f'Batch_Size: {info.get("batch_size", "?")}')
        print(f'Model_Type: {spec.encoder}')
        print(f'{args.emo}-CCC: {ccc!r}')
    else:
        print('ChunkSeq2One')
        print(f'Iterations: {args.iterations}')
        print(f'Batch_Size: {args.batch_size}')
        print(f'Model_Type: {spec.encoder}')
        print(f'Attention_Type: {spec.head}')
        print(f'{args.emo}-CCC: {ccc!r}')
        print(f'Avg. Time Cost(ms/uttr): {1000 * seconds / len(fnames)!r}')
    if args.out:
        write_predictions(args.out, fnames, y_true, pred)
    return 0


def write_predictions(path, fnames, y_true, pred):
    try:
        with open(path, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'true', 'pred'])
            w.writerows(zip(fnames, map(repr, map(float, y_true)), map(repr, map(float, pred))))
    except OSError as e:
        raise UserError(f'{path}: cannot write the predictions ({e.strerror})')


if __name__ == '__main__':
    run_cli(main)
