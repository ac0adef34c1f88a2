"""Export checkpoints as ONNX models, scored by predict.py and testing.py with onnxruntime, without torch.

    python export.py CHECKPOINT [CHECKPOINT ...] --out-dir DIR [--int8]

Writes DIR/NAME.onnx and DIR/NAME.json for each NAME.pth.tar: the (B, C', m, F) chunks in; the sentence value(s) or
a Class model's logits and class probabilities, the chunk weights and (seq2seq models) the chunk values out; B is
dynamic. An audio network (its self-supervised model inside) exports with that model: one utterance's (1, N) 16 kHz
waveform a call, N dynamic, the same outputs for B = 1. The JSON is the checkpoint's description (or what its reference-style name says) plus the export's
opset, tool versions and the ONNX file's sha256, which predict.py checks. Put DIR where predict.py looks for models
(--model-dir DIR, or --checkpoint DIR/NAME.onnx): a folder without NAME.pth.tar is searched for NAME.onnx.
--int8 quantizes the weights to int8 (onnxruntime's dynamic quantization): a smaller file whose predictions move a
little (docs/deploying.md has the figures).
"""
from ..onnx_export import OPSET, export
from ..utils import ArgParser, run_cli


def parse_args(argv):
    p = ArgParser(prog='export.py', description=__doc__.split('\n')[0])
    p.add_argument('checkpoints', nargs='+', metavar='CHECKPOINT', help='.pth.tar files (with their JSON, if any)')
    p.add_argument('--out-dir', required=True, metavar='DIR', help='folder for NAME.onnx and NAME.json (not the '
                   "checkpoints' own)")
    p.add_argument('--int8', action='store_true', help="int8 weights (onnxruntime's dynamic quantization)")
    p.add_argument('--opset', type=int, default=OPSET, help=f'ONNX opset (default {OPSET})')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path in export(args.checkpoints, args.out_dir, args.int8, args.opset):
        print(path)
    return 0


if __name__ == '__main__':
    run_cli(main)
