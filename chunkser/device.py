"""Where the work runs: the device (CUDA -> MPS -> CPU), seeds, worker processes."""
import os
import random
import signal
import threading
import time

import numpy as np

from .utils import UserError


def select_device(name='auto'):
    """auto: CUDA -> MPS -> CPU. On CUDA TF32 stays off, so numbers match fp32 CPU runs."""
    import torch  # here, not at the top: the feature extraction's workers and ONNX scoring import this module
    if name == 'auto':
        if torch.cuda.is_available():
            name = 'cuda'
        elif getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            name = 'mps'
        else:
            name = 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device is available')
    if name == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise UserError('--device mps: no MPS device is available')
    if name == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(name)


def set_seed(seed):
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_workers(reserve=0):
    """Worker processes by default: the CPUs less `reserve` kept for this process's own share, 1..8
    (a parent that receives and writes every result, as the feature store's, reserves one)."""
    return max(1, min((os.cpu_count() or 1) - reserve, 8))


def ignore_sigint():
    """Initializer of worker processes: Ctrl-C is the parent's to handle (it cancels the queue and shuts the
    pool down), so a worker finishes its current item instead of dying mid-write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_init(poll_s=0.5):
    """Initializer of worker processes: ignore_sigint, and exit when the parent is gone. A parent killed outright
    (SIGKILL, OOM killer) cannot shut its pool down, and its workers would wait on the task queue forever: a daemon
    thread sees the parent change (the worker is re-parented) and ends the worker."""
    ignore_sigint()
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)
    threading.Thread(target=watch, name='parent-watch', daemon=True).start()
