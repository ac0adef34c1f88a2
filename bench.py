"""Benchmark our pipeline against a reference-style one on a synthetic corpus (CPU, or CUDA).

    python bench.py [--utts 1200] [--batch 128] [--heads H ...] [--rss-scaling] [--out .]   (many minutes)
    python bench.py --quick --out /tmp/b         (a smoke run of every section at tiny sizes)
    python bench.py --only startup,train-encoders  (those sections alone, rewritten in an existing BENCHMARKS.md)
    python bench.py --only deploy --test-utts 300  (ONNX and int8 against torch; predict.py's cold start: only so)
    python bench.py --only finetune [--device cuda]  (a base-sized WavLM's training step, fine-tuned, frozen: only so)
    python bench.py ref-train|ref-test ...       the published training.py / testing.py, reference-style

benchmarking/: reference.py the reference-style path, runs.py the measurements (log lines `[bench] figure: k=v`),
report.py <out>/BENCHMARKS.md and <out>/images/benchmark.png."""
import datetime
import os
import shutil
import sys
import tempfile

import torch

from benchmarking import finetune, reference, report, runs, startup
from chunkser.device import select_device
from chunkser.model import HEADS
from chunkser.utils import DEFAULT_M, ArgParser, UserError, run_cli

QUICK = dict(utts=24, min_frames=64, max_frames=120, batch=4, iters=1, val_utts=8, test_utts=6, retrieval_utts=1,
             process_iters=2, process_workers=0, process_repeat=1, rss_sizes=[16, 32], peak_size=256,
             startup_runs=1, ft_batch=2, ft_seconds=1.0, ft_steps=1)


def parse_args(argv):
    p = ArgParser(prog='bench.py', description=__doc__.split('\n')[0])  # argument errors: one line, exit 2
    g = p.add_argument_group('corpus')
    g.add_argument('--utts', type=int, default=1200, help='synthetic utterances, 1/6 Train, 1/12 Val (default 1200)')
    g.add_argument('--min-frames', type=int, default=172, help='shortest utterance, frames (default 172 = 2.75 s)')
    g.add_argument('--max-frames', type=int, default=688, help='longest utterance, frames (default 688 = 11 s)')
    g = p.add_argument_group('components (both pipelines in this process)')
    g.add_argument('--batch', type=int, default=128, help='batch size (default 128)')
    g.add_argument('--iters', type=int, default=5, help='timed training iterations per head, per encoder (default 5)')
    g.add_argument('--val-utts', type=int, default=384, help='utterances validated per head (default 384)')
    g.add_argument('--test-utts', type=int, default=300, help='utterances scored per head, per encoder (default 300)')
    g.add_argument('--retrieval-utts', type=int, default=3, help='sentences ranked both ways (default 3)')
    g.add_argument('--heads', nargs='+', choices=list(HEADS), help='heads measured (default all; --quick: two)')
    g.add_argument('--encoder-heads', nargs='+', choices=list(HEADS),
                   help="the head of every encoder's timed training steps (default GatedVec)")
    g = p.add_argument_group('whole processes')
    g.add_argument('--no-processes', action='store_true', help='skip the whole training.py / testing.py runs')
    g.add_argument('--process-iters', type=int, default=20, help='-iter of whole training runs (default 20)')
    g.add_argument('--process-workers', type=int, default=12, help='ref-train DataLoader workers (default 12)')
    g.add_argument('--process-repeat', type=int, default=2, help='alternating runs, the fastest counts (default 2)')
    g.add_argument('--rss-scaling', action='store_true', help='peak RssAnon of training.py on corpora of --rss-sizes')
    g.add_argument('--rss-sizes', type=lambda s: [int(v) for v in s.split(',')], default=[1000, 10000])
    g = p.add_argument_group('start-up (testing.py on 12 utterances with a released checkpoint, against bare imports)')
    g.add_argument('--model-dir', help=f'folder of {startup.CHECKPOINT} (default {startup.SHARED}/trained_model_v1.6)')
    g.add_argument('--norm-dir', help=f'its NormTerm (default {startup.SHARED}/NormTerm)')
    g.add_argument('--startup-runs', type=int, default=5, help='runs of each, in turn; the medians count (default 5)')
    finetune.add_arguments(p)
    g = p.add_argument_group('system and output')
    g.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='(default cpu)')
    g.add_argument('--threads', type=int, default=0, help='torch threads, scripts included (default 0: torch\'s)')
    g.add_argument('--peak-size', type=int, default=2048, help='n of the n x n matmul peak (default 2048)')
    g.add_argument('--work', default=None, help='folder for the corpus, kept (default: a temporary folder, removed)')
    g.add_argument('--out', default='.', help='where BENCHMARKS.md and images/benchmark.png go (default .)')
    g.add_argument('--quick', action='store_true', help='tiny sizes, every section (components: seconds)')
    g.add_argument('--only', action='append', type=lambda v: v.split(','), metavar='SECTION[,SECTION]',
                   help=f'run only these sections ({", ".join(runs.SECTIONS)}; repeatable) and rewrite only their part '
                        'of an existing BENCHMARKS.md')
    a = p.parse_args(argv)
    if a.quick:
        vars(a).update(QUICK)
    a.heads = a.heads or (['NonAtten', 'SelfAttenVec'] if a.quick else list(HEADS))
    a.encoder_heads = a.encoder_heads or ['GatedVec']
    a.only = [v.strip() for vs in a.only or () for v in vs if v.strip()]
    unknown = sorted(set(a.only) - set(runs.SECTIONS))
    if unknown:
        raise UserError(f'--only {",".join(unknown)}: no such section (sections: {", ".join(runs.SECTIONS)})')
    skip = {'processes'} if a.no_processes else set()
    skip |= set() if a.rss_scaling else {'rss-scaling'}
    skip |= {'deploy'}  # with --only deploy: it exports models and starts predict.py 2 x (runs + 1) times
    skip |= {'finetune'}  # with --only finetune: minutes of a base-sized model's steps on a CPU
    a.sections = [k for k in runs.SECTIONS if (k in a.only if a.only else k not in skip)]
    a.retrieval_utts = min(a.retrieval_utts, a.test_utts)
    if a.batch < 2 or min(a.iters, a.startup_runs, a.ft_steps) < 1 or a.utts < 8 or \
            not DEFAULT_M <= a.min_frames <= a.max_frames or a.ft_batch < 2 or not a.ft_seconds > 0:
        raise UserError(f'need --batch >= 2, --iters >= 1, --startup-runs >= 1, --utts >= 8, {DEFAULT_M} '
                        '<= --min-frames <= --max-frames (the published chunk split needs a chunk\'s frames), '
                        '--ft-batch >= 2, --ft-seconds > 0, --ft-steps >= 1')
    if a.device == 'cuda':
        select_device('cuda')
    return a


def bench_main(argv):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
        runs.CHILD_ENV['OMP_NUM_THREADS'] = str(a.threads)
    load = lambda: ', '.join(f'{v:.1f}' for v in os.getloadavg())
    meta = {'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'), 'machine': report.machine_info(),
            'command': 'python bench.py ' + ' '.join(argv), 'load_before': load(), 'threads': torch.get_num_threads(),
            'only': bool(a.only)}
    work = a.work or tempfile.mkdtemp(prefix='ser_bench_')
    try:
        R = dict(runs.run_all(a, work), **meta, args=vars(a), load_after=load())
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    report.write_report(R, a.out)
    runs.log('report', path=os.path.join(a.out, 'BENCHMARKS.md'))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = {'ref-train': reference.ref_train_main, 'ref-test': reference.ref_test_main}
    return commands[argv[0]](argv[1:]) if argv[:1] and argv[0] in commands else bench_main(argv)


if __name__ == '__main__':
    run_cli(main)
