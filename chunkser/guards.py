"""What a training run checks as it goes: its figures are finite, the state it resumes is whole, and it is the
only run writing its files.

    check_finite(loss, 'training loss at iteration 12')   a NaN or infinite figure stops the run (NonFinite)
    read_resume(base + '.resume.pt', base + '.pth.tar')   a resume state checked field by field before use
    run_lock(base)                                        held for the run: a second run on the same names is refused
"""
import math
import numbers
import os
import pickle

from .files import RunLock
from .utils import UserError


# ----------------------------------------------------------------------------------
# figures

class NonFinite(UserError):
    """A loss or validation figure became NaN or infinite: the run stops (one line, non-zero exit) and saves
    nothing from that point on."""


def check_finite(value, what):
    """`value` (a float, a 0-d tensor or array) as a float, or NonFinite naming `what` and the value."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise NonFinite(f'{what} is {value!r}, not a number')
    if not math.isfinite(x):
        raise NonFinite(f'{what} is {x}: training stopped (non-finite labels or ratings, a learning rate too '
                        'high, or a diverging model); nothing was saved from this point')
    return x


# ----------------------------------------------------------------------------------
# the resume state

def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_tensor(v):
    import torch
    return isinstance(v, torch.Tensor)


def _is_state_dict(v):
    return isinstance(v, dict) and all(isinstance(k, str) and _is_tensor(t) for k, t in v.items())


# field -> (what it must be, the check): what training saves in X.resume.pt
RESUME_FIELDS = {
    'iter': ('a whole number of iterations >= 0', lambda v: _is_int(v) and v >= 0),
    'best': ('the best validation figure (a number)', lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    'history': ('a list of one dict per validation', lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v)),
    'recent': ('a list of training losses', lambda v: isinstance(v, list)),
    'order': ('a tensor of utterance indices', lambda v: _is_tensor(v) and v.dim() == 1),
    'pos': ('a whole number of batches >= 0', lambda v: _is_int(v) and v >= 0),
    'model': ("the model's state_dict", _is_state_dict),
    'optimizer': ("the optimizer's state_dict", lambda v: isinstance(v, dict) and 'state' in v and 'param_groups' in v),
    'shuffle_rng': ("the shuffle generator's state (a tensor)", _is_tensor),
    'rng': ("every process's RNG states (a list)", lambda v: isinstance(v, list) and len(v) > 0),
    'seed': ('the seed (a whole number)', _is_int),
    'settings': ('the run\'s settings (a dict)', lambda v: isinstance(v, dict)),
    'finished': ('whether the run finished (true or false)', lambda v: isinstance(v, bool)),
}


def read_resume(path, checkpoint=None):
    """X.resume.pt as a dict whose every field is what training saves (RESUME_FIELDS), loaded without running code.
    Refused in one line: a missing or unreadable file, a plain state_dict or any other dict given in its place, a
    field of the wrong type, and (with `checkpoint`, the run's X.pth.tar) a state whose run saved a best
    checkpoint that is not beside it (a resume.pt copied alone into another folder would end naming a file that
    does not exist)."""
    import torch
    if not os.path.isfile(path):
        raise UserError(f'{path}: no training state to resume (a run saves it at its first validation)')
    try:
        st = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable training state ({type(e).__name__}; expected the .resume.pt a '
                        'training run writes)')
    if not isinstance(st, dict):
        raise UserError(f'{path}: expected a training state (a dict of {", ".join(RESUME_FIELDS)}), found a '
                        f'{type(st).__name__}')
    missing = [k for k in RESUME_FIELDS if k not in st]
    if missing:
        plain = _is_state_dict(st)
        raise UserError(f'{path}: not a training state' + (' (a plain state_dict: a checkpoint, not a resume file)'
                        if plain else '') + f': no {", ".join(missing[:3])}' + (' ...' if len(missing) > 3 else ''))
    for k, (want, ok) in RESUME_FIELDS.items():
        if not ok(st[k]):
            raise UserError(f'{path}: its {k} is not {want} (a damaged or edited training state)')
    if st['pos'] > 0 and len(st['order']) == 0:
        raise UserError(f'{path}: {st["pos"]} batches of an epoch done, but no epoch order (a damaged training state)')
    if checkpoint is not None:
        require_checkpoint(st, path, checkpoint)
    return st


def require_checkpoint(st, path, checkpoint):
    """A state whose run saved its best model must have that checkpoint beside it (a resume.pt copied alone into
    another folder would end naming a file that does not exist)."""
    if any(h.get('saved') for h in st['history']) and not os.path.isfile(checkpoint):
        raise UserError(f'{path}: its run saved its best model as {checkpoint}, which is not there (a resume file '
                        'copied without its checkpoint?); copy the checkpoint beside it, or train afresh')


# ----------------------------------------------------------------------------------
# one run per set of names

def run_lock(base, what='a training run'):
    """The lock of the run whose files are base + '.pth.tar', '.json', '.resume.pt', ...: base + '.lock', held
    inside `with`; a second run on the same names is refused in one line naming the running one."""
    return RunLock(base + '.lock', what)
