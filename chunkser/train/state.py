"""The training state: everything that makes the rest of a resumed run the same as an uninterrupted one (the
iteration, the best validation figure, the history, this epoch's batch order and position, the model, the
optimizer, the shuffle generator and every rank's RNGs), its file X.resume.pt, and the stop signals that save it."""
import os
import random
import signal
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..corpus import iter_batches
from ..files import atomic_torch_save
from ..guards import read_resume, require_checkpoint
from ..utils import FEAT_DIM, UserError

# settings a resumed run must share with the run it continues
RESUME_KEYS = ('encoder', 'atten', 'emo', 'classes', 'class_weights', 'iterations', 'epochs', 'batch_size',
               'chunk_frames', 'chunks', 'scale', 'lr', 'adam_eps', 'bn_momentum', 'ccc_variance', 'val_every',
               'feat_dir', 'label_csv', 'norm_fingerprint', 'world_size', 'amp', 'task', 'pairs_per_epoch', 'prefs',
               'curves', 'hidden_dim', 'wav_dir', 'frontend', 'layers', 'finetune', 'frontend_lr',
               'freeze_frontend_steps', 'labels')
# what a state saved before a key existed ran with (a resume of such a run goes on)
EARLIER = dict(encoder='LSTM', classes=None, class_weights=None, epochs=None, adam_eps=1e-8, bn_momentum=0.1,
               ccc_variance='unbiased', task='utterance', pairs_per_epoch=None, prefs=None, curves=None,
               hidden_dim=FEAT_DIM, wav_dir=None, frontend=None, layers=None, finetune=None, frontend_lr=None,
               freeze_frontend_steps=None, labels=None)


@dataclass
class TrainState:
    it: int = 0                                   # iterations done
    best: float = float('inf')                    # best validation figure so far (-inf when higher is better)
    history: list = field(default_factory=list)   # one dict per validation
    recent: list = field(default_factory=list)    # training losses since the last validation
    batches: list = field(default_factory=list)   # this epoch's batches (utterance indices)
    pos: int = 0                                  # batches of this epoch done


def fresh_state(objective, seed, d):
    """The state of a run that starts now; dropout masks differ between ranks."""
    torch.manual_seed(seed + d.rank)
    return TrainState(best=-float('inf') if objective.higher_is_better else float('inf'))


def rng_state():
    np_state = np.random.get_state()
    return {'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]), 'python': random.getstate()}


def set_rng_state(s):
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])
    np.random.set_state((s['numpy'][0], s['numpy'][1].numpy(), *s['numpy'][2:]))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s['python']))


def save_resume(path, model, opt, gen, st, d, settings, seed, finished=False):
    """The whole state, every rank's RNGs included, written atomically by rank 0 (a collective: all ranks call)."""
    rngs = d.all_gather_state(rng_state())
    if d.main:
        s = asdict(st)
        s['order'] = torch.from_numpy(np.concatenate(st.batches)) if st.batches else torch.zeros(0, dtype=torch.long)
        del s['batches']
        atomic_torch_save({**s, 'iter': s.pop('it'), 'model': model.state_dict(), 'optimizer': opt.state_dict(),
                           'shuffle_rng': gen.get_state(), 'rng': rngs, 'seed': seed, 'settings': settings,
                           'finished': finished}, path)


def load_resume(path, settings, seed_arg, checkpoint=None):
    """X.resume.pt, checked field by field (guards.read_resume), its settings against this run's, then the best
    checkpoint its run saved beside it."""
    st = read_resume(path)
    for k in RESUME_KEYS:
        was = st['settings'].get(k, EARLIER.get(k))
        if was != settings.get(k):
            raise UserError(f'{path}: saved with {k}={was!r}, this run has {settings.get(k)!r}; '
                            f'resume with the same settings')
    if seed_arg is not None and seed_arg != st['seed']:
        raise UserError(f'{path}: saved with --seed {st["seed"]}, this run has --seed {seed_arg}')
    if checkpoint is not None:
        require_checkpoint(st, path, checkpoint)
    return st


def restore(saved, model, opt, gen, d, batch_size):
    """A TrainState and the model, optimizer, shuffle and RNG states from load_resume's dict."""
    model.load_state_dict(saved['model'])
    opt.load_state_dict(saved['optimizer'])
    gen.set_state(saved['shuffle_rng'])
    set_rng_state(saved['rng'][d.rank])
    return TrainState(saved['iter'], saved['best'], saved['history'], saved['recent'],
                      iter_batches(saved['order'].numpy(), batch_size, min_last=2 * d.world), saved['pos'])


class StopSignals:
    """Inside `with`: SIGINT and SIGTERM only set .signal, so the loop finishes its iteration, saves and exits."""

    def __enter__(self):
        self.signal = 0
        self.old = {s: signal.signal(s, self._set) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _set(self, num, frame):
        self.signal = num

    def agreed(self, d):
        """The signal any rank received, so every rank stops at the same iteration."""
        return int(d.all_reduce([self.signal], 'max')[0])

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
