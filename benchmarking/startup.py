"""Start-up: `testing.py` scoring a 12-utterance corpus with a released checkpoint against a bare
`python -c "import torch, scipy.io, pandas"`, run in turn; and what testing.py's imports cost (python -X importtime)."""
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.environ.get('SHARED_DIR') or os.path.join(os.path.dirname(ROOT), 'shared'), 'upstream-v1.6')
CHECKPOINT = 'LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_Act.pth.tar'
FLOOR = [sys.executable, '-c', 'import torch, scipy.io, pandas']
UTTS = 12


def timed_run(cmd, cwd, env):
    """Wall seconds and output (stdout and stderr) of a command that must succeed."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {p.returncode}):\n{p.stdout[-3000:]}')
    return wall, p.stdout


def first_party():
    """Names of this project's modules (the repository's .py files and packages)."""
    return {f[:-3] if f.endswith('.py') else f for f in os.listdir(ROOT)
            if f.endswith('.py') or os.path.isfile(os.path.join(ROOT, f, '__init__.py'))}


def import_times(text):
    """python -X importtime's lines (in `text`) -> [(module, self s, cumulative s, importers)] in import order;
    importers: the modules above it in the import tree, outermost first."""
    rows = []
    for line in text.splitlines():
        if line.startswith('import time:') and 'self [us]' not in line:
            own, cum, name = line[len('import time:'):].split('|')
            rows.append((name.strip(), int(own) / 1e6, int(cum) / 1e6, (len(name) - len(name.lstrip()) - 1) // 2))
    out, stack = [], []  # a module is printed after its imports: read backwards, importers come first
    for name, own, cum, depth in reversed(rows):
        del stack[depth:]
        out.append((name, own, cum, tuple(stack)))
        stack.append(name)
    return out[::-1]


def summarise_imports(rows, ours, top=10):
    """What the report and the log show of import_times' rows: the total s; self s per top-level package; the
    costliest third-party imports our modules make themselves (cumulative s; with the chain of our modules that
    leads to it, '(top level)': the script itself, an import at run time or Python's own start-up); the modules
    of most self time (with the nearest of ours above them)."""
    packages = {}
    for name, own, _, _ in rows:
        packages[name.split('.')[0]] = packages.get(name.split('.')[0], 0.0) + own
    is_ours = lambda m: m.split('.')[0] in ours
    edges = [(' > '.join(up) or '(top level)', name, cum) for name, own, cum, up in rows
             if not is_ours(name) and all(map(is_ours, up))]
    return {'total_s': sum(r[1] for r in rows), 'packages': sorted(packages.items(), key=lambda kv: -kv[1])[:top],
            'imports': sorted(edges, key=lambda e: -e[2])[:top],
            'self': [(name, own, next((m for m in reversed(up) if is_ours(m)), '-'))
                     for name, own, _, up in sorted(rows, key=lambda r: -r[1])[:top]]}


def measure(c, work, env):
    """The start-up figures (c: the run's settings: model_dir, norm_dir, device, startup_runs): after an untimed
    warm-up of each (the page cache; testing.py's feature store built), startup_runs runs of each command in
    turn, alternating which goes first; their medians and ratios; testing.py's import times. {'missing': path}
    when the released checkpoint or NormTerm is not there."""
    model_dir = c['model_dir'] or os.path.join(SHARED, 'trained_model_v1.6')
    norm_dir = c['norm_dir'] or os.path.join(SHARED, 'NormTerm')
    need = (os.path.join(model_dir, CHECKPOINT), os.path.join(norm_dir, 'feat_norm_means.mat'))
    missing = [p for p in need if not os.path.isfile(p)]
    if missing:
        return {'missing': missing[0]}
    from chunkser.synthetic import write_corpus
    d = os.path.join(work, 'startup')
    feat_dir, label_csv = write_corpus(d, size=UTTS, seed=0, splits=(0, 0, 1))  # all Test
    test = [sys.executable, os.path.join(ROOT, 'testing.py'), '-iter', '5000', '-batch', '128', '-emo', 'Act',
            '-atten', 'SelfAttenVec', '--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir,
            '--model-dir', model_dir, '--store', os.path.join(d, 'store'), '--device', c['device']]
    cmds = {'floor': FLOOR, 'testing': test}
    for cmd in cmds.values():
        timed_run(cmd, d, env)
    walls = {k: [] for k in cmds}
    for i in range(c['startup_runs']):
        for k in (list(cmds) if i % 2 == 0 else list(cmds)[::-1]):
            walls[k].append(timed_run(cmds[k], d, env)[0])
    wall, text = timed_run(test[:1] + ['-X', 'importtime'] + test[1:], d, env)
    imports = summarise_imports(import_times(text), first_party())
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {'utts': UTTS, 'runs': walls, 'floor_s': med['floor'], 'testing_s': med['testing'],
            'ratio': med['testing'] / med['floor'],  # and the median of each round's, the same load on both runs:
            'round_ratio': statistics.median(t / f for t, f in zip(walls['testing'], walls['floor'])),
            'checkpoint': need[0], 'imports': imports, 'importtime_wall_s': wall}
