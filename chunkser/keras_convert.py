"""Convert the Keras original's weight files (.h5, Keras 2.2.4 save_weights) into our checkpoints.

    python keras_convert.py FILE.h5 [FILE.h5 ...] [--out-dir DIR] [--encoder CNN|LSTM] [--head H] [--emo E]

The network and attribute come from the released file name, e.g.
`CNN_model[epoch100-batch256]_GatedVec_Act_weights.h5`, or from --encoder/--head/--emo (needed for other
names). Keras's LSTM is our encoder KerasLSTM and its SelfAttenVec our head MultiHeadAttenVec (docs/keras.md).
Each file becomes `{encoder}_epoch{E}_batch{B}_ChunkSeq2One_{head}_{emo}.pth.tar` (without epoch/batch in the
name: `{encoder}_keras_ChunkSeq2One_{head}_{emo}.pth.tar`), a plain state_dict, and the JSON beside it that
testing.py --checkpoint and predict.py --checkpoint read; by default next to the .h5 file.

Weights are assigned by position and shape in the order Keras loads them; every array's shape is checked,
every value must be finite, and a file named like a released one must have its sha256 (pretrained.py's sums),
unless --force. A wrong, truncated or tampered file is refused in one line, and nothing is written for it.
"""
import os
import re

import numpy as np
import torch

from .checkpoint import checkpoint_name, save_checkpoint
from .corpus import ATTRIBUTES
from .files import ensure_writable_dir, file_sha256
from .model import ModelSpec, build_model
from .utils import ArgParser, UserError, run_cli

# The Keras original (Chunk-Level-Attention-SER, MIT licence, Wei-Cheng Lin) at the commit of its v1.6 models.
KERAS_URL_BASE = ('https://github.com/winston-lin-wei-cheng/Chunk-Level-Attention-SER/raw/'
                  'c37badc0d73b0d10b6e458843628b449e00ea615')
KERAS_SHA256 = {
    'trained_model_v1.6/CNN_model[epoch100-batch256]_GatedVec_Act_weights.h5':
        'daeb4d61001a8f14447cc6f0a42b57861456df55c336643ec5f69b9b80d05b72',
    'trained_model_v1.6/CNN_model[epoch100-batch256]_GatedVec_Dom_weights.h5':
        '1aa6347f7f3efb90e160799851dfcecd72596bc4566db44c3932d2ab10e86c6c',
    'trained_model_v1.6/CNN_model[epoch100-batch256]_GatedVec_Val_weights.h5':
        'a5659d3e7023394b810721b7bf0b2f1625ff8e59b046dc9dbae5a2b173afc1de',
    'trained_model_v1.6/CNN_model[epoch100-batch256]_NonAtten_Act_weights.h5':
        'ccc015434235f6d6a25fe0252397de528500c145fedc4763c503d10ebc010d65',
    'trained_model_v1.6/CNN_model[epoch100-batch256]_NonAtten_Dom_weights.h5':
        '5bc148ecac215202f6f2880d18e983dd92914600d36c1dbfbffc6077cfb80370',
    'trained_model_v1.6/CNN_model[epoch100-batch256]_NonAtten_Val_weights.h5':
        '49140238b080226c1a57406d1f6ff17d74bd6ca23742acdbb617d0568af9d649',
    'trained_model_v1.6/LSTM_model[epoch100-batch128]_RnnAttenVec_Act_weights.h5':
        '497b245171cd7f5470f4573f5e0b6b3066a1e777e41edf587cb2b91657bcb638',
    'trained_model_v1.6/LSTM_model[epoch100-batch128]_RnnAttenVec_Dom_weights.h5':
        'e83ae4c8df5b4b804fe35ced07a53d2a90dfa01570de61a4cfc494a64daa086f',
    'trained_model_v1.6/LSTM_model[epoch100-batch128]_RnnAttenVec_Val_weights.h5':
        'a6081264672b66f3f5bbe90ddc09c070eed2d7ccc7bfba1bc2af48e885b54a63',
    'trained_model_v1.6/LSTM_model[epoch100-batch128]_SelfAttenVec_Act_weights.h5':
        '82644555ba685ef759eee0e8dfe2d2b60d279520e061d2113aee9ccd9540f33a',
    'trained_model_v1.6/LSTM_model[epoch100-batch128]_SelfAttenVec_Dom_weights.h5':
        '0bb15f874b4841aa60c6a8e77ee4eb4ba0f1b93ed093594f82ce7ee35e573092',
    'trained_model_v1.6/LSTM_model[epoch100-batch128]_SelfAttenVec_Val_weights.h5':
        'fa0d7991c926a17ceea5b0ac3c6923cc130bd47a4b2dfec6ba36dcf6d5a7f4f1',
}

NAME_RE = re.compile(r'^(?P<encoder>CNN|LSTM)_model\[epoch(?P<epochs>\d+)-batch(?P<batch>\d+)\]_'
                     r'(?P<head>[A-Za-z]+)_(?P<emo>Act|Dom|Val)_weights\.h5$')
ENCODER_OF = {'CNN': 'CNN', 'LSTM': 'KerasLSTM', 'KerasLSTM': 'KerasLSTM'}  # Keras name (or ours) -> ours
HEAD_OF = {'NonAtten': 'NonAtten', 'GatedVec': 'GatedVec', 'RnnAttenVec': 'RnnAttenVec',
           'SelfAttenVec': 'MultiHeadAttenVec', 'MultiHeadAttenVec': 'MultiHeadAttenVec'}


def parse_args(argv):
    p = ArgParser(prog='keras_convert.py', description=__doc__.split('\n')[0])
    p.add_argument('files', nargs='+', metavar='FILE.h5', help="the Keras original's weight files")
    p.add_argument('--out-dir', help='folder for the converted checkpoints (default: beside each .h5 file)')
    p.add_argument('--encoder', choices=list(ENCODER_OF), help='the encoder, when the file name does not say')
    p.add_argument('--head', choices=list(HEAD_OF), help="the head (Keras's name or ours), when the file name does not say")
    p.add_argument('--emo', choices=ATTRIBUTES, help='the attribute, when the file name does not say')
    p.add_argument('--force', action='store_true', help='convert a file named like a released one whose sha256 differs')
    return p.parse_args(argv)


def describe(path, encoder=None, head=None, emo=None):
    """(ModelSpec, provenance) of a weight file: flags first, then what its released-style name says."""
    m = NAME_RE.match(os.path.basename(path))
    encoder, head, emo = encoder or (m and m['encoder']), head or (m and m['head']), emo or (m and m['emo'])
    if not (encoder and head and emo):
        raise UserError(f'{path}: not a released Keras file name (CNN_model[epoch100-batch256]_GatedVec_Act_weights.h5): '
                        'pass --encoder, --head and --emo')
    if head not in HEAD_OF:
        raise UserError(f'{path}: unknown head {head!r} (expected one of {", ".join(HEAD_OF)})')
    spec = ModelSpec(encoder=ENCODER_OF[encoder], head=HEAD_OF[head], emo=emo, bn_momentum=0.01).check()  # Keras's 0.99
    prov = dict(keras_file=os.path.basename(path), keras_head=head)
    if m:
        prov.update(epochs=int(m['epochs']), batch_size=int(m['batch']))
    return spec, prov


def read_h5_arrays(path):
    """The arrays of every layer that holds weights, in the order Keras loads them: [(name, array)]."""
    import h5py  # imported here: only the converter needs it
    try:
        with h5py.File(path, 'r') as f:
            if 'layer_names' not in f.attrs:
                raise UserError(f'{path}: not a Keras weight file (no layer_names attribute)')
            out = []
            for layer in f.attrs['layer_names']:
                g = f[_text(layer)]
                for name in g.attrs.get('weight_names', []):
                    out.append((_text(name), np.asarray(g[_text(name)], dtype=np.float32)))
            return out
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f'{path}: file not found')
    except Exception as e:  # truncated or corrupt HDF5: h5py raises OSError, KeyError, ValueError...
        raise UserError(f'{path}: not a readable Keras weight file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})')


def _text(s):
    return s.decode() if isinstance(s, bytes) else str(s)


def _t(a):  # Keras Dense kernel (in, out) -> torch Linear weight (out, in)
    return a.T


def slots(spec):
    """Where each Keras array goes, in Keras's load order: [(state-dict key, index or None, Keras shape,
    transform to our layout)]."""
    H, F_in = spec.hidden_dim, spec.feat_dim
    out = []
    if spec.encoder == 'CNN':
        from .model import CNN1D, cnn_lengths
        ins = (F_in,) + CNN1D.CHANNELS[:-1]
        for l, (i, o, L) in enumerate(zip(ins, CNN1D.CHANNELS, cnn_lengths(spec.chunk_frames))):
            out += [(f'cnn.conv.{l}.weight', None, (3, i, o), lambda a: a.transpose(2, 1, 0)),  # (3,in,out)->(out,in,3)
                    (f'cnn.conv.{l}.bias', None, (o,), None)]
            out += [(f'cnn.bn.{l}.{k}', None, (L,), None) for k in ('weight', 'bias', 'running_mean', 'running_var')]
        out += [('cnn.dense.weight', None, (CNN1D.CHANNELS[-1] * L, H), _t), ('cnn.dense.bias', None, (H,), None)]
    else:  # KerasLSTM: kernel, recurrent kernel, bias per layer (Keras's layout kept), then the batch norm
        for l in range(spec.num_layers):
            out += [(f'lstm.kernel_l{l}', None, (F_in if l == 0 else H, 4 * H), None),
                    (f'lstm.recurrent_kernel_l{l}', None, (H, 4 * H), None), (f'lstm.bias_l{l}', None, (4 * H,), None)]
        out += [(f'bn.{k}', None, (H,), None) for k in ('weight', 'bias', 'running_mean', 'running_var')]
    out += HEAD_SLOTS[spec.head](H)
    out += [('fc1.weight', None, (H, H), _t), ('fc1.bias', None, (H,), None),
            ('fc2.weight', None, (H, 1), _t), ('fc2.bias', None, (1,), None)]
    return out


HEAD_SLOTS = {
    'NonAtten': lambda H: [],
    'GatedVec': lambda H: [('attn.0.weight', None, (H, 1), _t), ('attn.0.bias', None, (1,), None)],
    # SimpleRNN kernel, recurrent kernel, bias (its one bias goes to bias_ih; bias_hh stays 0); W_s; W_o, context first
    'RnnAttenVec': lambda H: [('attn.attn_rnn.weight_ih_l0', None, (H, H), _t),
                              ('attn.attn_rnn.weight_hh_l0', None, (H, H), _t),
                              ('attn.attn_rnn.bias_ih_l0', None, (H,), None),
                              ('attn.attn_dnn_score.weight', None, (H, H), _t),
                              ('attn.attn_dnn_out.weight', None, (2 * H, H), _t)],
    # the three heads' (3, H, 50) kernels in concatenation order, Dense(150 -> H), layer norm gamma and beta
    'MultiHeadAttenVec': lambda H: [('attn.kernel', j, (3, H, 50), None) for j in range(3)] + [
        ('attn.dense.weight', None, (150, H), _t), ('attn.dense.bias', None, (H,), None),
        ('attn.gamma', None, (H,), None), ('attn.beta', None, (H,), None)],
}


def assign(path, spec, arrays):
    """A model of `spec` holding the file's arrays; counts, shapes and finiteness checked, one line on a mismatch."""
    want = slots(spec)
    if len(arrays) != len(want):
        raise UserError(f'{path}: {len(arrays)} weight arrays, but a Keras {spec.encoder} {spec.head} network has '
                        f'{len(want)} (another network, or a damaged file)')
    model = build_model(spec)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if spec.head == 'RnnAttenVec':
        sd['attn.attn_rnn.bias_hh_l0'].zero_()  # Keras's SimpleRNN has one bias
    for (name, a), (key, j, shape, fn) in zip(arrays, want):
        if a.shape != shape:
            raise UserError(f'{path}: array {name} has shape {a.shape}, expected {shape} for {key} '
                            f'(not a Keras {spec.encoder} {spec.head} network, or a damaged file)')
        if not np.isfinite(a).all():
            raise UserError(f'{path}: array {name} holds NaN or Inf values (a damaged file)')
        t = torch.from_numpy(np.ascontiguousarray(fn(a) if fn else a))
        target = sd[key] if j is None else sd[key][j]
        if target.shape != t.shape:  # our model disagrees with the table above: a bug, not the user's file
            raise AssertionError(f'{key}: {tuple(t.shape)} vs {tuple(target.shape)}')
        target.copy_(t)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def check_released_sum(path, digest, force=False):
    """A file named like a released one must be that file: a flipped byte in an array passes every shape check."""
    want = KERAS_SHA256.get('trained_model_v1.6/' + os.path.basename(path))
    if want and digest != want and not force:
        raise UserError(f'{path}: sha256 {digest} is not the released file\'s {want} (modified or damaged; '
                        '--force converts it anyway)')


def convert(path, out_dir=None, encoder=None, head=None, emo=None, force=False):
    """One .h5 file -> our checkpoint (and its JSON); returns the checkpoint's path."""
    if not os.path.isfile(path):
        raise UserError(f'{path}: file not found')
    spec, prov = describe(path, encoder, head, emo)
    digest = file_sha256(path)
    check_released_sum(path, digest, force)
    model = assign(path, spec, read_h5_arrays(path))
    out_dir = ensure_writable_dir(out_dir or os.path.dirname(os.path.abspath(path)))
    dest = os.path.join(out_dir, checkpoint_name(spec, prov.get('batch_size'), epochs=prov.get('epochs')))
    save_checkpoint(dest, model, spec, **prov, keras_sha256=digest)
    return dest


def main(argv=None):
    args = parse_args(argv)
    for path in args.files:
        dest = convert(path, args.out_dir, args.encoder, args.head, args.emo, args.force)
        print(f'converted  {path} -> {dest}')
    return 0


if __name__ == '__main__':
    run_cli(main)
