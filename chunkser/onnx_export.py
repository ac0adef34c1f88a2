"""Checkpoints -> ONNX models that onnxruntime scores without torch (`chunkser export`, onnx_model.py scores them).

Every encoder x head x task exports (model.py: ENCODERS x HEADS x TASKS): the (B, C', m, F) chunks in, the outputs
onnx_model.output_names lists out, B dynamic. An audio network exports with its backbone: one utterance's (1, N)
waveform in, N dynamic (ExportedAudio). The TorchScript-based exporter (dynamo=False) traces the networks as
they run, in a second or two a model; torch.export's (dynamo=True) exports them too, to the same outputs, many times
slower. The Keras LSTM's loop over time becomes one ONNX LSTM node per layer (its gates hard sigmoids), not m traced
steps. --int8: onnxruntime's dynamic quantization of the weights to int8 (activations quantized on the fly).
"""
import io
import logging
import os
import tempfile
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import chunks_of
from .checkpoint import description_path, exported_path, load_model, read_description, read_spec
from .files import atomic_write_bytes, ensure_writable_dir, write_json
from .features.frontend import frame_count
from .model import KerasLSTM
from .onnx_model import load_onnx, output_names
from .utils import UserError

OPSET = 17  # what the TorchScript exporter writes best; onnxruntime 1.16 and later read it


class KerasLSTMLayer(torch.autograd.Function):
    """One layer of the Keras LSTM as ONNX's LSTM operator, whose gates may be hard sigmoids (ONNX's HardSigmoid,
    alpha 0.2, beta 0.5, is Keras's): one node instead of the traced loop of m steps. W, R, B in ONNX's layout."""

    @staticmethod
    def forward(ctx, x, W, R, B):  # x: (m, N, in) -> (m, N, H); only its shape is traced (the node is symbolic's)
        return x.new_zeros(x.shape[0], x.shape[1], R.shape[-1])

    @staticmethod
    def symbolic(g, x, W, R, B):
        H = R.type().sizes()[-1]
        y = g.op('LSTM', x, W, R, B, hidden_size_i=H, activations_s=['HardSigmoid', 'Tanh', 'Tanh'],
                 activation_alpha_f=[0.2, 1.0, 1.0], activation_beta_f=[0.5, 0.0, 0.0])
        return g.op('Squeeze', y, g.op('Constant', value_t=torch.tensor([1])))  # (m, 1, N, H) -> (m, N, H)


KERAS_TO_ONNX = (0, 3, 1, 2)  # Keras's gates i, f, c, o -> ONNX's order i, o, f, c


def keras_to_onnx(kernel, recurrent, bias):
    """Keras's kernel (in, 4H), recurrent kernel (H, 4H), bias (4H,) -> ONNX's W (1, 4H, in), R (1, 4H, H), B (1, 8H)."""
    H = recurrent.shape[0]
    order = torch.cat([torch.arange(k * H, (k + 1) * H) for k in KERAS_TO_ONNX])
    return (kernel[:, order].T[None], recurrent[:, order].T[None],
            torch.cat([bias[order], torch.zeros_like(bias)])[None])


class ExportedKerasLSTM(nn.Module):
    """KerasLSTM's forward with each layer one ONNX LSTM node: (N, m, F) -> (N, H). Its weights in ONNX's layout,
    copied at construction (the export's constants)."""

    def __init__(self, lstm):
        super().__init__()
        self.num_layers = lstm.num_layers
        with torch.no_grad():
            for l in range(lstm.num_layers):
                p = [getattr(lstm, f'{k}_l{l}').detach() for k in ('kernel', 'recurrent_kernel', 'bias')]
                for name, t in zip('WRB', keras_to_onnx(*p)):
                    self.register_buffer(f'{name}{l}', t.contiguous())

    def forward(self, x):
        x = x.transpose(0, 1)  # (m, N, F)
        for l in range(self.num_layers):
            x = KerasLSTMLayer.apply(x, getattr(self, f'W{l}'), getattr(self, f'R{l}'), getattr(self, f'B{l}'))  # (m, N, H)
        return x[-1]


class Exported(nn.Module):
    """The network with the exported interface: (B, C', m, F) chunks -> onnx_model.output_names(spec)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.spec = net, net.spec
        if isinstance(net.encoder, KerasLSTM):  # its loop becomes ONNX LSTM nodes (the module's weights are shared)
            setattr(net, net.encoder_key, ExportedKerasLSTM(net.encoder))

    def forward(self, x):  # x: (B, C', m, F)
        s = self.spec
        C = s.chunks_per_utterance
        chunks = x.reshape(-1, s.chunk_frames, s.feat_dim)  # (B*C', m, F)
        if s.task == 'ranker':
            return self.net.chunk_scores(chunks).reshape(-1, C, s.outputs)  # (B, C', 2)
        y, w, v = self.net(chunks, return_chunks=True)  # (B,) or (B, k); (B, C'); (B, C') or None
        outs = [y] + ([F.softmax(y, dim=1)] if s.emo == 'Class' else []) + [w]
        return tuple(outs + ([v] if v is not None else []))


def chunk_weights(w, frames, m, k):
    """(1, T) frame weights of the utterance's T = frames frames -> (1, k) chunk weights: ChunkLevelSER.chunk_weights
    with utils.chunk_spans written in tensor operations, so that T stays dynamic in the graph."""
    j = torch.arange(k)  # (k,)
    step = torch.where(frames >= m, (frames - m) // max(k - 1, 1), torch.zeros_like(frames)) if k > 1 else \
        torch.zeros_like(frames)
    lo = torch.where(frames >= m, j * step, torch.zeros_like(j))  # (k,) an utterance shorter than m: [0, T)
    hi = torch.where(frames >= m, lo + m, frames.expand(k))  # (k,)
    cum = F.pad(torch.cumsum(w, dim=1), (1, 0))  # (1, T + 1): weight of the frames before t
    mass = cum[:, hi] - cum[:, lo]  # (1, k)
    return mass / mass.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


class ExportedAudio(nn.Module):
    """An audio network with the exported interface: one utterance's (1, N) float32 waveform, N dynamic, no padding
    -> onnx_model.output_names(spec). Backbone.forward's path for one utterance whose samples are all valid:
    normalised over its N samples, zero-padded to one receptive field if shorter, the model, the chunk split of its
    frames (or, for an utterance-level head, all of them; the frame weights gathered by chunk)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.spec, self.backbone = net, net.spec, net.backbone
        if isinstance(net.encoder, KerasLSTM):  # its loop becomes ONNX LSTM nodes (the module's weights are shared)
            setattr(net, net.encoder_key, ExportedKerasLSTM(net.encoder))

    def waveform(self, x):
        """(1, N) -> (1, max(N, R)) the backbone's input (R its receptive field) and () its sample count."""
        bb = self.backbone
        n = torch.ones_like(x[0], dtype=torch.long).sum()  # () N, as a tensor: dynamic in the graph
        if bb.normalize:  # Backbone.waveforms: zero mean, unit variance over the samples, in float64
            w64, count = x.double(), n.clamp(min=1).double()
            mean = w64.sum(1, keepdim=True) / count
            var = ((w64 - mean) ** 2).sum(1, keepdim=True) / count
            x = ((w64 - mean) / torch.sqrt(var + 1e-7)).to(x.dtype)
        padded = torch.cat([x, x.new_zeros(1, bb.receptive)], dim=1)  # (1, N + R)
        n = n.clamp(min=bb.receptive)
        return padded[:, torch.arange(n)], n  # (1, max(N, R)), ()

    def forward(self, x):  # x: (1, N) float32
        bb, net, s = self.backbone, self.net, self.spec
        wave, n = self.waveform(x)
        frames = frame_count(n, bb.kernels, bb.strides)  # ()
        mask = {'attention_mask': torch.ones_like(wave, dtype=torch.long)} if bb.masked else {}
        h = bb.mixed(bb.model(wave, output_hidden_states=True, **mask).hidden_states)  # (1, T, D)
        if s.reads_frames:  # ChunkLevelSER.from_frames in eval mode (its dropouts are identities)
            u, fw = net.attn(h)  # (1, 2D), (1, T)
            y = net.fc2(F.relu(net.norm(net.fc1(u)))).squeeze(-1)  # (1,) or (1, k)
            w = chunk_weights(fw, frames, s.chunk_frames, s.chunks_per_utterance)
            v = None
        else:
            chunks = chunks_of(h, frames[None], s.chunk_frames, s.chunks_per_utterance)  # (C', m, D)
            y, w, v = net.from_chunks(net.encode(chunks), return_chunks=True)
        outs = [y] + ([F.softmax(y, dim=1)] if s.emo == 'Class' else []) + [w]
        return tuple(outs + ([v] if v is not None else []))


def export_audio_bytes(net, opset=OPSET):
    """An audio network in eval mode -> the bytes of its ONNX file: one utterance per call, its length dynamic."""
    names = output_names(net.spec)
    x = torch.zeros(1, 16000)  # any length: N is dynamic
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the exporter's and transformers' notes on traced shapes
        torch.onnx.export(ExportedAudio(net).eval(), (x,), buf, dynamo=False, opset_version=opset,
                          input_names=['waveform'], output_names=names,
                          dynamic_axes={'waveform': {1: 'samples'}})
    return buf.getvalue()


def export_bytes(net, opset=OPSET):
    """A model in eval mode -> the bytes of its ONNX file (dynamic batch)."""
    spec = net.spec
    wrapped = Exported(net).eval()
    x = torch.zeros(2, spec.chunks_per_utterance, spec.chunk_frames, spec.feat_dim)  # any batch: B is dynamic
    names = output_names(spec)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the exporter's notes on its deprecation and traced shapes
        torch.onnx.export(wrapped, (x,), buf, dynamo=False, opset_version=opset, input_names=['chunks'],
                          output_names=names, dynamic_axes={n: {0: 'batch'} for n in ['chunks', *names]})
    return buf.getvalue()


def quantize_int8(data):
    """onnxruntime's dynamic quantization (int8 weights) of an ONNX model's bytes -> the quantized model's bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory(prefix='chunkser_int8_') as d:
        src, dst = os.path.join(d, 'float.onnx'), os.path.join(d, 'int8.onnx')
        with open(src, 'wb') as f:
            f.write(data)
        logging.disable(logging.WARNING)  # its advice to pre-process (shape inference) is not the user's
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        with open(dst, 'rb') as f:
            return f.read()


def tool_versions():
    import onnx
    import onnxruntime
    return {'torch': torch.__version__, 'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__}


def export_checkpoint(ckpt, int8=False, opset=OPSET):
    """A checkpoint -> (its ONNX bytes, the JSON to write beside them: the checkpoint's description plus 'onnx')."""
    import hashlib
    if not os.path.isfile(ckpt):
        raise UserError(f'{ckpt}: checkpoint not found')
    spec = read_spec(ckpt)
    if spec.reads_frames and not spec.reads_audio:  # its input is the utterance's frames (B, T, F), not chunks
        raise UserError(f'{ckpt}: head {spec.head} reads whole utterances; export supports the chunk-level networks')
    if spec.reads_audio:  # one utterance's waveform a call, its backbone inside
        data = export_audio_bytes(load_model(ckpt, spec), opset)
        inputs = {'waveform': [1, 'samples']}
    else:
        data = export_bytes(load_model(ckpt, spec), opset)
        inputs = {'chunks': ['batch', spec.chunks_per_utterance, spec.chunk_frames, spec.feat_dim]}
    if int8:
        data = quantize_int8(data)
    record = dict(opset=opset, exporter='torch.onnx (TorchScript-based, dynamo=False)', **tool_versions(),
                  int8=bool(int8), sha256=hashlib.sha256(data).hexdigest(), source=os.path.basename(ckpt),
                  inputs=inputs,
                  outputs=output_names(spec))
    return data, dict(read_description(ckpt), **spec.to_json(), onnx=record)


def export(checkpoints, out_dir, int8=False, opset=OPSET):
    """Each checkpoint -> OUT_DIR/NAME.onnx and NAME.json: all are exported before any file is written (a checkpoint
    that cannot be read writes nothing), each file is written whole and read back as predict reads it. -> the paths."""
    ensure_writable_dir(out_dir)
    done = []
    for ckpt in checkpoints:
        data, desc = export_checkpoint(ckpt, int8, opset)
        path = os.path.join(out_dir, os.path.basename(exported_path(ckpt)))
        if os.path.abspath(description_path(path)) == os.path.abspath(description_path(ckpt)):
            raise UserError(f'{ckpt}: --out-dir is its own folder, where {os.path.basename(description_path(path))} '
                            'describes the checkpoint: export to another folder')
        if any(p == path for p, _, _ in done):
            raise UserError(f'{ckpt}: a second checkpoint named {os.path.basename(path)}: export them to separate folders')
        done.append((path, data, desc))
    for path, data, desc in done:
        try:
            atomic_write_bytes(path, data)
            write_json(description_path(path), desc)
        except OSError as e:
            raise UserError(f'{path}: cannot write the model ({e.strerror})')
        load_onnx(path, read_spec(path))  # reads back: the sha256 and onnxruntime's check
    return [p for p, _, _ in done]
