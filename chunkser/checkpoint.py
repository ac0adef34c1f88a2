"""Checkpoints: a plain state_dict in X.pth.tar, the ModelSpec that rebuilds it in X.json beside it.

Names follow the references (checkpoint_name builds them, parse_checkpoint_name reads them):
  {encoder}_iter{I}_batch{B}_ChunkSeq2One_{head}_{emo}.pth.tar   the PyTorch reference (epoch{E} for -ep runs,
                                                                 'keras' for a Keras file of unknown recipe)
  {encoder}_epoch{E}_batch{B}_EmoRankerSeq_{emo}.pth.tar         the retrieval follow-up's seq2seq models
  {encoder}_epoch{E}_batch{B}_{emo}_ranker.pth.tar               and its emotion rankers
The scripts look for them in --model-dir, else ./Models, ./trained_model_v1.6, ./trained_model_keras_v1.6, then the
same folders in the per-user folder (home.py: $CHUNKSER_HOME, else ~/.cache/chunkser). Files without a JSON (the
released v1.6 ones) are described by their name. Loading never runs code (weights_only=True).
A model exported by `chunkser export` (X.onnx, onnx_model.py) stands wherever X.pth.tar does: a folder without
X.pth.tar is searched for X.onnx, and --checkpoint X.onnx is scored with onnxruntime, without torch.
"""
import os
import pickle
import re

from .files import atomic_torch_save, read_json, write_json
from .home import describe, with_home
from .onnx_model import is_onnx, load_onnx
from .spec import TASKS, ModelSpec
from .utils import FEAT_DIM, UserError

SEARCH_DIRS = ('./Models', './trained_model_v1.6', './trained_model_keras_v1.6')
_RUN = r'(?:iter(?P<iterations>\d+)|epoch(?P<epochs>\d+))_batch(?P<batch_size>\d+)'
NAME_FORMATS = {  # task -> its names (the references')
    'utterance': '{encoder}_{run}_ChunkSeq2One_{head}_{emo}.pth.tar',
    'chunk': '{encoder}_{run}_EmoRankerSeq_{emo}.pth.tar',
    'ranker': '{encoder}_{run}_{emo}_ranker.pth.tar',
}
NAME_RES = {  # task -> the pattern of its names
    'utterance': re.compile(rf'^(?P<encoder>[A-Za-z]+)_(?:{_RUN}|keras)_ChunkSeq2One_(?P<head>[A-Za-z]+)_'
                            r'(?P<emo>Class|(?=[AVD])(?:Act)?(?:Val)?(?:Dom)?)\.pth\.tar$'),
    'chunk': re.compile(rf'^(?P<encoder>[A-Za-z]+)_{_RUN}_EmoRankerSeq_(?P<emo>Act|Dom|Val)\.pth\.tar$'),
    'ranker': re.compile(rf'^(?P<encoder>[A-Za-z]+)_{_RUN}_(?P<emo>Act|Dom|Val)_ranker\.pth\.tar$'),
}


def checkpoint_name(spec, batch_size=None, iterations=None, epochs=None):
    """The file name of a model of `spec` trained for `iterations` (or `epochs`) with `batch_size`; with
    neither (a Keras file whose name does not say), the run reads 'keras'."""
    if iterations is not None and epochs is not None:
        raise ValueError('checkpoint_name: iterations or epochs, not both')
    run = 'keras' if batch_size is None else \
        f'iter{iterations}_batch{batch_size}' if iterations is not None else f'epoch{epochs}_batch{batch_size}'
    return NAME_FORMATS[spec.task].format(encoder=spec.encoder, run=run, head=spec.head, emo=spec.emo)


def parse_checkpoint_name(name):
    """A checkpoint_name -> (ModelSpec fields it names, {'iterations' | 'epochs', 'batch_size'}), or None."""
    for task, pattern in NAME_RES.items():
        m = pattern.match(os.path.basename(name))
        if m:
            fields = dict(encoder=m['encoder'], head=m.groupdict().get('head'), task=task, emo=m['emo'])
            run = {k: int(m[k]) for k in ('iterations', 'epochs', 'batch_size') if m[k] is not None}
            return fields, run
    return None


def description_path(ckpt_path):
    """The JSON beside a checkpoint: X.pth.tar -> X.json."""
    base = ckpt_path[:-len('.pth.tar')] if ckpt_path.endswith('.pth.tar') else os.path.splitext(ckpt_path)[0]
    return base + '.json'


def find_checkpoint(name, model_dir=None, search=SEARCH_DIRS):
    """--model-dir if given, else the `search` folders in order (SEARCH_DIRS), then the same in the per-user folder
    (home.with_home); None when not found."""
    for d in [model_dir] if model_dir else with_home(search):
        for path in (os.path.join(d, name), exported_path(os.path.join(d, name))):
            if os.path.isfile(path):
                return path
    return None


def exported_path(ckpt_path):
    """Where `chunkser export` writes the ONNX model of a checkpoint: X.pth.tar -> X.onnx."""
    return description_path(ckpt_path)[:-len('.json')] + '.onnx'



def locate_checkpoint(given, name, model_dir=None, search=SEARCH_DIRS, hint=''):
    """--checkpoint FILE when given (it must exist), else `name` searched (find_checkpoint); not found: one
    line naming the file, where it looked and `hint` (how to get one)."""
    if given:
        if not os.path.isfile(given):
            raise UserError(f'{given}: checkpoint not found')
        return given
    path = find_checkpoint(name, model_dir, search)
    if path is None:
        where = model_dir or describe(search)
        raise UserError(f'{name}: checkpoint not found in {where}' + (f' ({hint})' if hint else ''))
    return path


def read_spec(ckpt_path, head=None, feat_dim=FEAT_DIM):
    """The ModelSpec of a checkpoint: its JSON, else what its reference-style name says. With `head` (the
    scripts' -atten), a checkpoint of another head is refused."""
    jp = description_path(ckpt_path)
    if is_onnx(ckpt_path) and not os.path.isfile(jp):
        raise UserError(f'{ckpt_path}: no {os.path.basename(jp)} beside it: an exported model is described by the JSON '
                        'that chunkser export writes with it (copy both files)')
    if os.path.isfile(jp):
        spec = ModelSpec.from_json(read_json(jp), jp)
        if head is not None and spec.head != head:
            raise UserError(f'{jp}: this checkpoint has head {spec.head}, not -atten {head}')
        return spec
    named = parse_checkpoint_name(ckpt_path)
    if named is None or named[0]['task'] != 'utterance':
        if head is None:
            raise UserError(f'{ckpt_path}: no {os.path.basename(jp)} beside it and not a reference-style name '
                            '(LSTM_iter5000_batch128_ChunkSeq2One_<head>_<emo>.pth.tar): cannot tell which network it is')
        named = (dict(encoder='LSTM', head=head, emo='Act'), {})
    fields = dict(named[0], head=head or named[0]['head'])
    try:
        return ModelSpec(**fields, feat_dim=feat_dim).check()
    except UserError as e:
        raise UserError(f'{ckpt_path}: {e}')


def read_description(ckpt_path):
    """The whole JSON beside a checkpoint (its spec and how it was trained, e.g. epochs), or {} without one."""
    jp = description_path(ckpt_path)
    return read_json(jp) if os.path.isfile(jp) else {}


def require_task(spec, ckpt_path, tasks, script, hint=''):
    """A checkpoint of another task (a ranker where a seq2seq model is expected, ...) is refused in one line,
    naming the file, what it is and what `script` expected; `hint` (what to do instead) is appended."""
    if spec.task not in tasks:
        raise UserError(f'{ckpt_path}: a {spec.task!r} model ({TASKS[spec.task].doc}); {script} needs '
                        + ' or '.join(f'a {t!r} model' for t in tasks) + (f' ({hint})' if hint else ''))


def save_checkpoint(path, model, spec, **provenance):
    """The state_dict (on the CPU) and, beside it, the spec plus how it was trained; both written atomically. A
    full disk is one line naming the file (the old checkpoint, if any, stays whole)."""
    import torch  # torch where a model is saved or loaded: the ONNX path needs none
    try:
        atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        write_json(description_path(path), dict(spec.to_json(), **provenance, torch=torch.__version__))
    except OSError as e:
        raise UserError(f'{path}: cannot write the checkpoint ({e.strerror})')


def check_norm(spec, norm, norm_dir, ckpt, force=False):
    """A checkpoint used with other z-norm terms than it was trained on gives wrong numbers silently:
    refuse unless forced. Checkpoints without JSON (the released ones) carry no fingerprint."""
    want = spec.norm_fingerprint
    if not want and spec.norm_dir and os.path.abspath(spec.norm_dir) != os.path.abspath(norm_dir) and not force:
        raise UserError(f'{ckpt}: trained with NormTerm {spec.norm_dir}, but --norm-dir is {norm_dir}, and its JSON '
                        'has no fingerprint to tell whether they hold the same terms; pass --norm-dir '
                        f'{spec.norm_dir} or --force')
    if want and want != norm.fingerprint() and not force:
        raise UserError(f'{ckpt}: trained with NormTerm {spec.norm_dir} (fingerprint {want}), but {norm_dir} '
                        f'holds other terms ({norm.fingerprint()}); pass the right --norm-dir or --force')


def load_state_dict(path):
    """A plain state_dict, loaded without running any code (weights_only=True)."""
    import torch
    try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise UserError(f'{path}: checkpoint not found')
    except pickle.UnpicklingError as e:
        msg = str(e)
        if 'GLOBAL' not in msg:  # not a refused import: the bytes are simply not a pickle
            raise UserError(f'{path}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)')
        what = next((ln.strip() for ln in msg.splitlines() if 'GLOBAL' in ln), '')
        raise UserError(f'{path}: refused: the file needs to run code to load, only plain tensors are accepted ({what})')
    except Exception as e:
        raise UserError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})')
    if isinstance(sd, dict) and 'state_dict' in sd and isinstance(sd['state_dict'], dict):
        sd = sd['state_dict']
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f'{path}: expected a plain state_dict of tensors')
    return sd


def load_model(path, spec, device='cpu'):
    """Load `path` into the model of `spec` with strict=True; mismatches in one line. The names and shapes are
    compared on a model built on the meta device (no memory), so a JSON that lies about the sizes is refused
    before anything of its size is allocated. An exported model (X.onnx): onnx_model.OnnxNet, on the CPU."""
    if is_onnx(path):
        return load_onnx(path, spec)
    import torch
    sd = load_state_dict(path)
    with torch.device('meta'):
        want = build_model(spec).state_dict()
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing or extra:
        guess = _guess_head(sd)
        hint = f' (it looks like a {guess} checkpoint)' if guess and guess != spec.head else ''
        raise UserError(f'{path}: not a {spec.head} checkpoint{hint} of encoder {spec.encoder}: '
                        f'{len(missing)} keys missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})')
    for k, v in want.items():
        if sd[k].shape != v.shape:
            raise UserError(f'{path}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)} '
                            f'(feature width {spec.feat_dim}, hidden {spec.hidden_dim})')
    model = build_model(spec)
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()


def build_model(spec):
    """model.build_model, imported on first use: model.py imports torch, which scoring an exported model needs not."""
    from .model import build_model as build
    return build(spec)


def _guess_head(sd):
    """The head whose parameter names a state_dict holds (None when it matches none)."""
    from .model import HEADS
    keys = {k.split('.', 1)[1] for k in sd if k.startswith('attn.')}
    for name, cls in HEADS.items():
        if keys == set(cls(2).state_dict()):
            return name
    return None
