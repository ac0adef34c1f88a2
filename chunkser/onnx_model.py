"""Exported models (onnx_export.py, `chunkser export`) scored with onnxruntime, without torch.

X.onnx takes the (B, C', m, F) float32 chunks of B utterances ('chunks', B dynamic) and gives, in this order:
  values         (B,) or (B, k)   the network's raw outputs: the z-scored attribute value(s), or a Class model's logits
  probabilities  (B, K)           Class models only: softmax of the logits, in the model's class order
  weights        (B, C')          how much each chunk counts in the utterance's value
  chunk_values   (B, C')          seq2seq models (task 'chunk') only: the z-scored value of each chunk
  chunk_scores   (B, C', 2)       rankers (task 'ranker') only, their one output: f(chunk)
An audio network's X.onnx (its self-supervised model inside) takes one utterance a call instead: its (1, N) float32
16 kHz waveform ('waveform', N dynamic, no padding), and gives the same outputs for B = 1; predict_onnx calls it once
an utterance, so batching changes no number.
X.json beside it is the checkpoint's description (spec.ModelSpec's fields, how it was trained) plus an 'onnx' entry:
the opset, the tools that exported it and the file's sha256, checked before the file is used.
"""
import os
import re

import numpy as np

from .files import file_sha256, read_json
from .utils import UserError, chunk_batch


def is_onnx(path):
    return str(path).lower().endswith('.onnx')


def input_name(spec):
    """The one input of an exported model of `spec`: an audio network's waveform, else the chunks."""
    return 'waveform' if spec.reads_audio else 'chunks'


def output_names(spec):
    """The outputs of an exported model of `spec`, in order (see the module's docstring)."""
    if spec.task == 'ranker':
        return ['chunk_scores']
    return ['values'] + (['probabilities'] if spec.emo == 'Class' else []) + ['weights'] + \
        (['chunk_values'] if spec.task == 'chunk' else [])


class OnnxNet:
    """An exported model in an onnxruntime session. Stands where a torch model does in scoring.py: .spec, eval(),
    chunk_scores; run(x) gives the outputs by name."""

    def __init__(self, path, spec, session):
        self.path, self.spec, self.session = path, spec, session
        self.names = [o.name for o in session.get_outputs()]
        self.streams = None  # no CPU streams: onnxruntime has its own threads

    def eval(self):
        return self

    def run(self, x):  # x: (B, C', m, F) float32, an audio network's (1, N) -> {output name: array}
        feed = {input_name(self.spec): np.ascontiguousarray(x, dtype=np.float32)}
        return dict(zip(self.names, self.session.run(None, feed)))

    def chunk_scores(self, x):
        """A ranker's f(chunk) for x (N, m, F) chunks (a torch tensor, as testing.py gives it) -> (N, 2)."""
        import torch  # testing.py's ranker test is a torch path
        C = self.spec.chunks_per_utterance
        z = x.cpu().numpy()
        out = self.run(z.reshape(-1, C, *z.shape[1:]))['chunk_scores']  # (N / C', C', 2)
        return torch.from_numpy(out.reshape(-1, out.shape[-1]))


def load_onnx(path, spec, threads=0):
    """X.onnx with its JSON -> OnnxNet. A JSON without the export's record, a file whose sha256 is not the recorded
    one, a file onnxruntime cannot read (corrupt, an opset it does not know): one line naming the file."""
    jp = os.path.splitext(path)[0] + '.json'  # checkpoint.description_path
    record = read_json(jp).get('onnx') if os.path.isfile(jp) else None
    if not isinstance(record, dict) or not isinstance(record.get('sha256'), str):
        raise UserError(f'{jp}: not the description of an exported model (no "onnx" entry with its sha256): '
                        'write both files with chunkser export')
    try:
        have = file_sha256(path)
    except OSError as e:
        raise UserError(f'{path}: cannot read the model ({e.strerror})')
    if have != record['sha256']:
        raise UserError(f'{path}: sha256 {have[:12]}, but {os.path.basename(jp)} records {record["sha256"][:12]}: '
                        'the file is corrupt or not the one exported with this JSON; export it again')
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: its warnings are not the user's
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime raises its own classes (Fail, InvalidGraph, ...)
        raise UserError(f'{path}: onnxruntime {ort.__version__} cannot load this model: {load_failure(e)}')
    got = [o.name for o in session.get_outputs()]
    if got != output_names(spec) or [i.name for i in session.get_inputs()] != [input_name(spec)]:
        raise UserError(f'{path}: outputs {got}, but a {spec.task} model of {spec.emo} has {output_names(spec)}')
    return OnnxNet(path, spec, session)


def load_failure(error):
    """onnxruntime's reason for refusing a model, in a few words: an opset newer than it knows, else its message
    without the C++ source location."""
    msg = ' '.join(str(error).split())
    m = re.search(r'Opset (\d+) is under development.*?till opset (\d+)', msg)
    if m:
        return f'opset {m[1]}, newer than it knows (up to {m[2]}): export with an older --opset, or update onnxruntime'
    msg = re.sub(r'^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from \S+ failed: ?)?', '', msg)
    msg = re.sub(r'/\S+\.(h|cc):\d+ [^)]*\) ', '', msg)  # the C++ file and function that raised
    return msg[:300] or type(error).__name__


def predict_onnx(net, utterances, batch_size=64, return_chunks=False):
    """scoring.predict_utterances for an OnnxNet: raw outputs (N,) [, chunk weights (N, C'), chunk values (N, C') or
    None], and the seconds spent in the model. An audio network's (N_i, 1) waveforms: one call each."""
    import time
    s = net.spec
    preds, weights, values, seconds = [], [], [], 0.0
    step = 1 if s.reads_audio else batch_size
    for i in range(0, len(utterances), step):
        idx = np.arange(i, min(i + step, len(utterances)))
        if s.reads_audio:
            x = np.asarray(utterances[i], dtype=np.float32).reshape(1, -1)  # (1, N)
        else:
            x = chunk_batch(utterances, idx, s.chunk_frames, s.chunks, s.scale)  # (b*C', m, F)
            x = x.reshape(len(idx), s.chunks_per_utterance, *x.shape[1:])
        t0 = time.perf_counter()
        out = net.run(x)
        seconds += time.perf_counter() - t0
        preds.append(out['values'])
        weights.append(out['weights'])
        values.append(out.get('chunk_values'))
    preds = np.concatenate(preds) if preds else np.zeros(0, np.float32)
    if return_chunks:
        values = None if not values or values[0] is None else np.concatenate(values)
        return preds, np.concatenate(weights), values, seconds
    return preds, seconds
