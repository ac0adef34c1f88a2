"""The training loop, the same for every task (tasks.py says what differs): Adam over epochs of shuffled Train
batches; every --val-every iterations (and at the last one; with -ep at the end of each epoch) the whole
validation split is scored, the model saved when the validation figure strictly improved, the history, curves and
resume state written; SIGINT or SIGTERM saves the state and stops (--resume continues).

    fit(args, task)   args: training.py's options; task: a tasks.TRAINING_TASKS entry
"""
import contextlib
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import checkpoint_name, save_checkpoint
from ..corpus import iter_batches
from ..device import select_device, set_seed
from ..distrib import Dist, wrap_model
from ..files import ensure_writable_dir, write_csv
from ..guards import check_finite, run_lock
from ..model import ModelSpec, build_model
from ..streams import use_cpu_streams
from ..utils import UserError
from . import audio
from .state import StopSignals, fresh_state, load_resume, restore, save_resume
from .step import BatchReader, forward_backward, make_batch, validate

LOSS_NAMES = {'loss': '1 - CCC', 'macro_f1': 'cross-entropy'}  # the training loss beside each validation metric
AMP = {'bf16': torch.bfloat16, 'fp16': torch.float16}


# ----------------------------------------------------------------------------------
# the run: its model, its files, what it records

def describe_run(args, task, data, out_dir, world):
    """The model to train, its checkpoint path, and the settings a resumed run must share."""
    norm, objective = data.norm, data.objective
    spec = ModelSpec(encoder=args.encoder, head=args.atten, task=task.name, emo=objective.name,
                     classes=getattr(objective, 'classes', None), chunk_frames=args.chunk_frames, chunks=args.chunks,
                     scale=args.scale, bn_momentum=args.bn_momentum, hidden_dim=args.hidden_dim,
                     **audio.spec_fields(args, data)).check()
    ckpt = os.path.join(out_dir, checkpoint_name(spec, args.batch_size, iterations=args.iterations, epochs=args.epochs))
    settings = dict(encoder=args.encoder, atten=args.atten, emo=objective.name, classes=spec.classes,
                    class_weights=getattr(objective, 'class_weights', None), iterations=args.iterations,
                    epochs=args.epochs, batch_size=args.batch_size, chunk_frames=args.chunk_frames, chunks=args.chunks,
                    scale=args.scale, lr=args.lr, adam_eps=args.adam_eps, bn_momentum=args.bn_momentum,
                    ccc_variance=args.ccc_variance if objective.metric == 'loss' else None, val_every=args.val_every,
                    norm_fingerprint=spec.norm_fingerprint, world_size=world, amp=args.amp,
                    label_csv=os.path.abspath(args.label_csv), **audio.settings(args, data), task=task.name, **task.settings(args, data), hidden_dim=args.hidden_dim)
    return spec, ckpt, settings


def describe_training(args, task, data, settings, seed):
    """How the model was trained, for the JSON beside the checkpoint."""
    objective = data.objective
    run = dict(epochs=args.epochs) if args.epochs else dict(iterations=args.iterations)
    loss = {'ccc_variance': args.ccc_variance} if objective.metric == 'loss' else {'class_weights': objective.class_weights}
    return dict(**run, batch_size=args.batch_size, lr=args.lr, adam_eps=args.adam_eps, recipe=args.recipe, seed=seed,
                **audio.provenance(args, data), **loss, **task.provenance(args, data))


def schedule(args, n_train, world, sample=None):
    """(iterations, validate every): -iter as given; -ep E: E epochs of Train batches, validated after each (an
    epoch of `sample` items when the task draws a sample per epoch)."""
    if sample is not None:
        n_train = min(n_train, sample)
    if args.epochs is None:
        return args.iterations, args.val_every
    per_epoch = len(iter_batches(np.arange(n_train), args.batch_size, 2 * world))
    return args.epochs * per_epoch, per_epoch


# ----------------------------------------------------------------------------------
# logs

def plot_losses(path, history, metric):
    """The training loss and the validation figure over the iterations, or the epochs of an epoch run (a second
    axis when they differ), the best validation marked; titled with the run's name (its attribute)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    unit = 'epoch' if 'epoch' in history[0] else 'iter'
    x = [h[unit] for h in history]
    ax.plot(x, [h['train_loss'] for h in history], label='training (mean of the iterations before)')
    val = ax if metric == 'loss' else ax.twinx()
    v = [h[f'val_{metric}'] for h in history]
    val.plot(x, v, color='tab:orange', label=f'validation {metric}')
    best = max(range(len(v)), key=v.__getitem__) if metric != 'loss' else min(range(len(v)), key=v.__getitem__)
    val.plot(x[best], v[best], '*', color='tab:red', ms=12, label=f'best: {v[best]:.4f} at {unit} {x[best]}')
    ax.set_xlabel({'epoch': 'epoch', 'iter': 'iteration'}[unit])
    ax.set_ylabel(LOSS_NAMES[metric])
    ax.set_title(os.path.splitext(os.path.basename(path))[0], fontsize=9)
    if val is not ax:
        val.set_ylabel(f'validation {metric}')
    fig.legend(loc='upper right', bbox_to_anchor=(1, 1), bbox_transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_history(path, history):
    """One row per validation, under the keys of the first."""
    keys = list(history[0])
    write_csv(path, [keys] + [[h.get(k, '') for k in keys] for h in history])


def record_validation(st, value, objective, t_start, t_last, d, save_best, base, epoch=None):
    """History, best checkpoint (save_best() when the figure strictly improved, in the objective's direction), CSV,
    plot and log line of one validation; returns the time, the start of the next interval."""
    now, metric = time.perf_counter(), objective.metric
    value = check_finite(value, f'validation {metric} at iteration {st.it}')
    improved = value > st.best if objective.higher_is_better else value < st.best
    st.best = value if improved else st.best
    st.history.append({'iter': st.it, **({'epoch': epoch} if epoch is not None else {}),
                       'train_loss': float(np.mean(st.recent)), f'val_{metric}': value, f'best_val_{metric}': st.best,
                       'saved': int(improved), 'elapsed_s': round(now - t_start, 3)})
    if d.main:
        if improved:
            save_best()
        write_history(base + '.history.csv', st.history)
        plot_losses(base + '.png', st.history, metric)
        where = f'epoch {epoch} | iter {st.it}' if epoch is not None else f'iter {st.it}'
        name = metric.replace('_', '-')
        tqdm.write(f'{where} | train loss {np.mean(st.recent):.4f} | val {name} {value:.4f} | best {st.best:.4f}'
                   f'{" | saved" if improved else ""} | {(now - t_last) / len(st.recent):.3f} s/it')
    st.recent = []
    return now


# ----------------------------------------------------------------------------------
# the loop

class Trainer:
    """One run: its data, model, optimizer, shuffle generator and state, set up (or resumed) by __init__; run()
    trains to the last iteration or to a stop signal."""

    def __init__(self, args, task, t_start=None):
        self.args, self.task, self.t_start = args, task, time.perf_counter() if t_start is None else t_start
        d = self.d = Dist(select_device(args.device))
        if args.amp and d.device.type != 'cuda':
            raise UserError('--amp needs a CUDA device; the CPU path is fp32 only')
        self.say = print if d.main else (lambda *a, **k: None)
        self.data = task.load(args, d, self.say)
        out_dir = ensure_writable_dir(args.out_dir) if d.main else args.out_dir
        if args.batch_size < 2 * d.world:
            raise UserError(f'-batch {args.batch_size} is too small for {d.world} processes (at least {2 * d.world})')
        self.spec, self.ckpt, self.settings = describe_run(args, task, self.data, out_dir, d.world)
        self.sample = task.epoch_sample(args)
        self.iterations, self.val_every = schedule(args, len(self.data.train[1]), d.world, self.sample)
        self.base = self.ckpt[:-len('.pth.tar')]
        self.saved = load_resume(self.base + '.resume.pt', self.settings, args.seed, self.ckpt) if args.resume else None

    def setup(self):
        """Seed, model, optimizer, shuffle generator and state (fresh, or the saved run's)."""
        args, d, saved = self.args, self.d, self.saved
        self.seed = saved['seed'] if saved else args.seed if args.seed is not None else \
            int(np.random.SeedSequence().entropy % 2**31)
        set_seed(self.seed)  # the same initial weights on every rank
        self.model = audio.prepare(build_model(self.spec), self.data, args).to(d.device)
        self.opt = torch.optim.Adam(audio.param_groups(self.model, args.lr, args.frontend_lr), lr=args.lr,
                                    eps=args.adam_eps)
        self.gen = torch.Generator().manual_seed(self.seed)  # the epochs' shuffles, the same on every rank
        self.st = restore(saved, self.model, self.opt, self.gen, d, args.batch_size) if saved else \
            fresh_state(self.data.objective, self.seed, d)
        if d.world == 1:
            use_cpu_streams(self.model, d.device, args.cpu_streams)
        self.net = wrap_model(self.model, d, unused=self.model.backbone is not None).train()
        self.scaler = torch.amp.GradScaler('cuda', enabled=args.amp == 'fp16')
        self.provenance = describe_training(args, self.task, self.data, self.settings, self.seed)
        length = f'{args.epochs} epochs ({self.iterations} iterations)' if args.epochs else \
            f'{self.iterations} iterations'
        self.say(f'training {self.spec.encoder} {args.atten or self.spec.task} on {self.data.objective.name} for '
                 f'{length}, batch {args.batch_size}, device {d.device}' + (f' x {d.world} processes' if d.world > 1
                 else '') + f', seed {self.seed} -> {self.ckpt}'
                 + (f' (resumed at iteration {self.st.it}, batch {self.st.pos} of its epoch)' if saved else ''))

    def fetch(self, batch):
        """This rank's share of a global batch, on the device."""
        local, sizes = self.d.shard(batch)
        return (sizes, *make_batch(*self.data.train, local, self.spec, self.d.device))

    def save_state(self, finished=False):
        save_resume(self.base + '.resume.pt', self.model, self.opt, self.gen, self.st, self.d, self.settings,
                    self.seed, finished)

    def step(self, reader):
        """One optimizer step on the next batch; its loss joins the state's recent losses."""
        sizes, x, y = reader.next()
        audio.at_iteration(self.model, self.st.it, self.args.freeze_frontend_steps)
        self.opt.zero_grad(set_to_none=True)
        loss = forward_backward(self.net, x, y, self.data.objective, self.d, sizes, AMP.get(self.args.amp),
                                self.scaler)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.st.it += 1
        self.st.recent.append(check_finite(loss.item(), f'training loss at iteration {self.st.it}'))

    def validation(self, t_last):
        """Score the validation split, save the best model, write the logs and the resume state."""
        st, objective, (val_x, val_y) = self.st, self.data.objective, self.data.val
        # a sampling task validates a fresh sample too, drawn from `gen`: part of the resume state
        order = None if self.sample is None else torch.randperm(len(val_y), generator=self.gen).numpy()[:self.sample]
        value = validate(self.model, val_x, val_y, objective, self.d, self.args.batch_size, order)
        t_last = record_validation(st, value, objective, self.t_start, t_last, self.d, lambda: self.save_best(value),
                                   self.base, epoch=st.it // self.val_every if self.args.epochs else None)
        self.save_state(finished=st.it == self.iterations)
        return t_last

    def save_best(self, value):
        """The checkpoint and its JSON (an audio network's learned layer weights too, and their plot)."""
        layers = audio.layer_record(self.model)
        save_checkpoint(self.ckpt, self.model, self.spec, **self.provenance, iter_saved=self.st.it,
                        **{f'val_{self.data.objective.metric}': value}, **layers)
        if layers:
            audio.plot_layer_weights(self.base + '.layers.png', layers['layer_weights'],
                                     f'{os.path.basename(self.base)}: layer weights at iteration {self.st.it}')

    def run(self):
        """Train to the last iteration (0) or to a stop signal (128 + its number, the state saved)."""
        st, d = self.st, self.d
        reader = BatchReader(st, len(self.data.train[1]), self.args.batch_size, 2 * d.world, self.gen, self.fetch,
                             d.device, self.sample)
        bar = tqdm(total=self.iterations, initial=st.it, unit='it', disable=None if d.main else True,
                   dynamic_ncols=True)
        t_last = time.perf_counter()
        with StopSignals() as stop:
            try:
                while st.it < self.iterations:
                    self.step(reader)
                    bar.update(1)
                    if st.it % self.val_every == 0 or st.it == self.iterations:
                        t_last = self.validation(t_last)
                    signum = stop.agreed(d)
                    if signum and st.it < self.iterations:
                        self.save_state()
                        self.say(f'interrupted at iteration {st.it}: state saved to {self.base}.resume.pt; continue '
                                 'with --resume')
                        return 128 + signum
            finally:
                reader.close()
                bar.close()
        if d.main and not os.path.isfile(self.ckpt):
            raise UserError(f'{self.ckpt}: no validation improved on the start, so no checkpoint was written')
        self.say(f'best val {self.data.objective.metric.replace("_", "-")} {st.best:.4f} -> {self.ckpt}')
        return 0


def fit(args, task, t_start=None):
    """Train (or resume) the run args describe; returns the command's exit status."""
    trainer = Trainer(args, task, t_start)
    with run_lock(trainer.base) if trainer.d.main else contextlib.nullcontext():  # one run on these names at a time
        if trainer.saved is not None and trainer.saved['finished']:
            trainer.say(f'{trainer.base}.resume.pt: this run finished at iteration {trainer.saved["iter"]}; nothing '
                        'to resume')
            return 0
        trainer.setup()
        return trainer.run()
