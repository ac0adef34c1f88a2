"""BENCHMARKS.md and images/benchmark.png from the result dict of benchmarking.runs.run_all."""
import os
import platform

import numpy as np
import torch

NOTES = '## Notes'  # the hand-written section of an existing BENCHMARKS.md: kept when the report is rewritten
# the published code measured on this project's 2-core machine type, whose speed varies up to 2x from day to day
PUBLISHED = {'data': '670-860', 'train': '2.2-4.5', 'test': '12.7-17.5, about half', 'loop': '10-15 %', 'score': 'about 1.5x'}
REPRODUCES = (
    'Per item a full `scipy.io.loadmat` and float64 z-normalisation with boolean-index clipping; a torch DataLoader '
    'whose collate cuts chunks in Python loops into a float64 array, cast to float32 at the model input; the '
    'aggregation head in a Python loop over utterances; validation with autograd on; scoring one utterance at a time '
    'with autograd on (benchmarking/reference.py; its heads compute the same function as ours, tests/test_bench.py). '
    'Projections: headline = 5000 x s/iter + 100 validations x 6,000 x validation s/utterance (+ the store build for '
    'ours); testing = 10,000 x scoring ms/utt (+ the Test store build for ours).')


def mib(b):
    return f'{b / 2**20:.0f}'


def ratio(a, b):
    return f'{a / b:.2f}x' if b else 'n/a'


def table(header, rows):
    return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
            ['| ' + ' | '.join(str(v) for v in r) + ' |' for r in rows] + [''])


def machine_info():
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), platform.machine())
        with open('/proc/meminfo') as f:
            mem = f', {int(f.readline().split()[1]) / 2**20:.0f} GiB RAM'
    except OSError:
        cpu, mem = platform.machine(), ''
    return f'{cpu}, {os.cpu_count()} cores{mem}'


def header(R):
    a, n = R['args'], R['corpus']
    return ['# Benchmarks', '', f'- date: {R["date"]}', f'- machine: {R["machine"]}',
            f'- device: {a["device"]}, torch {torch.__version__}, numpy {np.__version__}, {R["threads"]} torch threads, '
            f'python {platform.python_version()}', f'- command: `{R["command"]}`',
            f'- load average before / after: {R["load_before"]} / {R["load_after"]} (a shared machine: compare only '
            'figures of one run)',
            f'- corpus: {n["utts"]} synthetic utterances of {a["min_frames"]}-{a["max_frames"]} frames (Train {n["train"]} '
            f'/ Validation {n["validation"]} / Test {n["test"]}); batch {a["batch"]}, {a["iters"]} timed training '
            f'iterations per head after a warm-up, validation of {a["val_utts"]} and scoring of {a["test_utts"]} '
            f'utterances; reference-style DataLoader with {a["ref_workers"]} workers in the component figures. Both '
            'pipelines run interleaved step by step, so both see the same load; each time is the best of its repetitions.',
            '']


def summary(R):
    """The headline comparisons: (figure, reference-style, ours, speed-up) rows."""
    d, rows = R['data'], []
    rows.append(('data pipeline, utterances/s', f'{d["ref"]["utt_per_s"]:.0f}', f'{d["ours"]["utt_per_s"]:.0f}',
                 ratio(d['ours']['utt_per_s'], d['ref']['utt_per_s'])))
    head = 'SelfAttenVec' if 'SelfAttenVec' in R['heads'] else next(iter(R['heads']))
    r, o = R['heads'][head]['ref'], R['heads'][head]['ours']
    for what, key, unit, f in ((f'training iteration, {head} (data + step)', 'it_s', 's', '.3f'),
                               (f'validation, {head}', 'val_s', 's', '.2f'),
                               (f'scoring, model time per utterance, {head}', 'score_model_ms', 'ms', '.2f')):
        rows.append((what, f'{r[key]:{f}} {unit}', f'{o[key]:{f}} {unit}', ratio(r[key], o[key])))
    rows.append(('projected headline run (-iter 5000 -batch 128, 100 validations)', f'{r["proj"]["train_h"]:.2f} h',
                 f'{o["proj"]["train_h"]:.2f} h', ratio(r['proj']['train_h'], o['proj']['train_h'])))
    x = R.get('processes')
    if x:
        for what, ref, ours in ((f'training.py -iter {x["iters"]}, whole process', 'ref_train', 'ours_train'),
                                ('testing.py, whole process', 'ref_test', 'ours_test'),
                                ('testing.py, feature store already built', 'ref_test', 'ours_test_warm')):
            rows.append((what, f'{x[ref]["wall_s"]:.1f} s', f'{x[ours]["wall_s"]:.1f} s', ratio(x[ref]['wall_s'], x[ours]['wall_s'])))
    sc = R.get('rss_scaling')
    if sc:
        rows.append(('peak RssAnon of training.py, ' + ' vs '.join(map(str, sc)) + ' utterances', '',
                     ' vs '.join(f'{mib(v["peak_rss"])} MiB' for v in sc.values()), ''))
    return ['## Summary', ''] + table(('figure', 'reference-style', 'ours', 'speed-up'), rows)


def baseline(R):
    """The reference-style figures beside the published code's, measured on this machine type."""
    rows = [('data pipeline, utterances/s', PUBLISHED['data'], f'{R["data"]["ref"]["utt_per_s"]:.0f}')]
    x, h = R.get('processes'), R['heads'].get('SelfAttenVec')
    if x:
        per_utt = 1000 * x['ref_test']['wall_s'] / R['corpus']['test']
        rows += [('training.py SelfAttenVec, s/iteration (whole process / iterations)', PUBLISHED['train'],
                  f'{x["ref_train"]["wall_s"] / x["iters"]:.2f}'),
                 ('testing.py, ms/utterance (whole process / utterances), model share', PUBLISHED['test'],
                  f'{per_utt:.1f}, {100 * x["ref_test"]["model_ms"] / per_utt:.0f} %')]
    if h:
        rows += [('SelfAttenVec step: share of the per-utterance head loop', PUBLISHED['loop'],
                  f'{100 * (h["ref"]["step_s"] - h["ours"]["step_s"]) / h["ref"]["step_s"]:.0f} %'),
                 ('scoring: batched model / one-at-a-time model', PUBLISHED['score'],
                  ratio(h['ref']['score_model_ms'], h['ours']['score_model_ms']))]
    return ["## Reference-style baseline against the published code's figures", '',
            'The published code was measured on this machine type; a strawman baseline would come out slower than '
            'these, a faithful one near them or faster on a fast day.', ''] + \
        table(('figure', 'published code', 'this run'), rows)


def per_head(R):
    peak, rows = R['peak']['gflops'], []
    for head, hr in R['heads'].items():
        for p, name in (('ref', 'reference-style'), ('ours', 'ours')):
            h = hr[p]
            rows.append((head, name, f'{h["it_s"]:.3f}', f'{h["data_s"]:.3f}', f'{h["step_s"]:.3f}',
                         f'{h["gflops"]:.1f} ({100 * h["gflops"] / peak:.0f} %)', f'{h["val_s"]:.2f}',
                         f'{h["score_ms"]:.2f} ({h["score_model_ms"]:.2f})', f'{h["proj"]["train_h"]:.2f}',
                         f'{h["proj"]["test_min"]:.1f}'))
        r, o = hr['ref'], hr['ours']
        rows.append((head, '**speed-up**', f'**{ratio(r["it_s"], o["it_s"])}**', ratio(r['data_s'], o['data_s']),
                     ratio(r['step_s'], o['step_s']), '', ratio(r['val_s'], o['val_s']),
                     f'**{ratio(r["score_ms"], o["score_ms"])}** ({ratio(r["score_model_ms"], o["score_model_ms"])})',
                     f'**{ratio(r["proj"]["train_h"], o["proj"]["train_h"])}**', ratio(r['proj']['test_min'], o['proj']['test_min'])))
    libs = ', '.join(f'{k} {v:.0f}' for k, v in R['peak'].items() if k != 'gflops')
    return ['## Training, validation, scoring per head', ''] + table(
        ('head', 'pipeline', 's/iter', 'data s', 'model step s', 'GFLOPS (% of matmul peak)', 'validation s',
         'scoring ms/utt (model)', 'projected headline run h', 'projected v1.6 testing min'), rows) + [
        "Same function: from the same seeded weights both pipelines' predictions agree to " +
        ', '.join(f'{h} {v["max_pred_diff"]:.1e}' for h, v in R['heads'].items()) + ' (max abs difference).', '',
        f'Matmul peak (fp32 {R["args"]["peak_size"]}^2, best of 10, at the start and the end of the run, the higher kept): '
        f'{peak:.1f} GFLOPS ({libs}). GFLOPS of a step: model.estimate_flops (the matrix products from the shapes, '
        'forward + backward = 3x forward) over the step time.', '']


def per_encoder(R):
    rows = [(name, e['head'], f'failed: {e["error"]}', '', '', '', '') if 'error' in e else
            (name, e['head'], f'{e["score_ms"]:.2f}', f'{e["model_ms"]:.2f}', f'{e["gflops"]:.1f}', f'{e["params"]:,}',
             f'{e["vs_lstm"]:.2f}x' if e['vs_lstm'] else 'n/a') for name, e in R['encoders'].items()]
    return ['## Scoring per encoder', '', f'Every registered encoder (model.ENCODERS) with the {R["args"]["encoder_head"]} '
            f'head, scoring {R["args"]["test_utts"]} utterances as testing.py does (scoring.predict_utterances, CPU streams '
            'where they apply), the encoders in turn round after round, best of 3 rounds.', ''] + \
        table(('encoder', 'head', 'ms/utt', 'model ms/utt', 'GFLOPS', 'parameters', 'ms/utt vs LSTM'), rows)


def data_and_store(R):
    d, b = R['data'], R['build']
    return ['## Data pipeline and store', '', 'Both pipelines alternate batch by batch, best batch of each.', ''] + table(
        ('path', 'utterances/s', 'ms per batch'),
        [(f'reference-style (Dataset + collate, {R["args"]["ref_workers"]} workers, float64 -> float32)',
          f'{d["ref"]["utt_per_s"]:.0f}', f'{d["ref"]["batch_ms"]:.1f}'),
         ('ours (store gather into a reused float32 buffer)', f'{d["ours"]["utt_per_s"]:.0f}', f'{d["ours"]["batch_ms"]:.1f}'),
         ('**speed-up**', f'**{ratio(d["ours"]["utt_per_s"], d["ref"]["utt_per_s"])}**', '')]) + [
        f'Store build (store.py\'s default processes): {b["utts"]} utterances in {b["build_s"]:.1f} s ({b["utt_per_s"]:.0f} '
        'utt/s), charged in the projections above (Train + Validation to the training run, Test to testing).', '']


def processes(R):
    x, n, a = R['processes'], R['corpus'], R['args']
    rows = [(what, f'{x[r]["wall_s"]:.1f}', f'{x[o]["wall_s"]:.1f}', f'**{ratio(x[r]["wall_s"], x[o]["wall_s"])}**',
             ratio(x[r]['wall_s'] - x['floor_s'], x[o]['wall_s'] - x['floor_s']),
             f'{mib(x[r]["peak_rss"])} / {mib(x[o]["peak_rss"])}')
            for what, r, o in (('training', 'ref_train', 'ours_train'), ('testing', 'ref_test', 'ours_test'),
                               ('testing, store already built', 'ref_test', 'ours_test_warm'))]
    rows.append(('testing, printed model ms/utt', f'{x["ref_test"]["model_ms"]:.2f}', f'{x["ours_test"]["model_ms"]:.2f}',
                 ratio(x['ref_test']['model_ms'], x['ours_test']['model_ms']), '', ''))
    return ['## Whole processes (cold start included)', '',
            f'`training.py -iter {x["iters"]} -batch {x["batch"]} -emo Act -atten SelfAttenVec` on the {n["utts"]}-utterance '
            f'corpus and `testing.py` on its {n["test"]}-utterance Test split, against `bench.py ref-train|ref-test` '
            f'({a["process_workers"]} DataLoader workers); they alternate {x["repeat"]} time(s), the fastest run of each '
            'counts. Our store is deleted before each run and built inside it.', ''] + table(
        ('process', 'reference-style s', 'ours s', 'speed-up', 'without the start-up floor', 'peak RssAnon MiB ref / ours'),
        rows) + [f'Start-up floor: a bare `python -c "import torch, scipy.io, pandas"` took {x["floor_s"]:.1f} s. Test CCC '
                 f'of the same checkpoint: reference-style {x["ref_test"]["ccc"]!r}, ours {x["ours_test"]["ccc"]!r}.', '']


def make_report(R, previous=''):
    """The report's markdown; the NOTES section of `previous` (the BENCHMARKS.md it replaces) is kept."""
    L = header(R) + summary(R) + baseline(R) + per_head(R) + per_encoder(R) + data_and_store(R)
    if R.get('processes'):
        L += processes(R)
    if R.get('rss_scaling'):
        L += ['## Peak RssAnon of training against corpus size', ''] + table(
            ('utterances', 'peak RssAnon MiB', 'wall s'),
            [(n, mib(v['peak_rss']), f'{v["wall_s"]:.1f}') for n, v in R['rss_scaling'].items()])
    L += ['## What the reference-style path reproduces', '', REPRODUCES, '']
    notes = previous[previous.find('\n' + NOTES):].strip() if '\n' + NOTES in previous else ''
    return '\n'.join(L + ([notes, ''] if notes else []))


def plot(R, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    heads, enc = list(R['heads']), {k: v for k, v in R['encoders'].items() if 'score_ms' in v}
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, key, title in zip(axes, ('it_s', 'score_ms'), ('training s / iteration', 'scoring ms / utterance')):
        for k, (p, colour) in enumerate((('ref', '#c44e52'), ('ours', '#4c72b0'))):
            ax.bar(np.arange(len(heads)) + (k - 0.5) * 0.38, [R['heads'][h][p][key] for h in heads], 0.38,
                   color=colour, label='reference-style' if p == 'ref' else 'ours')
        ax.set_xticks(np.arange(len(heads)), heads, rotation=15)
        ax.set_title(title)
    axes[0].legend(loc='lower right')
    axes[2].bar(list(enc), [e['score_ms'] for e in enc.values()], color='#4c72b0')
    axes[2].set_title(f'scoring ms / utterance per encoder ({R["args"]["encoder_head"]})')
    d = R['data']
    axes[3].bar(['reference-style', 'ours'], [d['ref']['utt_per_s'], d['ours']['utt_per_s']], color=['#c44e52', '#4c72b0'])
    axes[3].set_yscale('log')
    axes[3].set_title('data pipeline utterances / s (log)')
    for ax in axes:
        ax.grid(axis='y', alpha=0.3)
    fig.suptitle(f'{R["machine"]} | {R["args"]["device"]}, {R["threads"]} thread(s) | torch {torch.__version__} | '
                 f'batch {R["args"]["batch"]} | {R["date"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(R, out):
    """<out>/BENCHMARKS.md (keeping its hand-written notes) and <out>/images/benchmark.png; returns the text."""
    path = os.path.join(out, 'BENCHMARKS.md')
    previous = open(path).read() if os.path.isfile(path) else ''
    text = make_report(R, previous)
    os.makedirs(os.path.join(out, 'images'), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    plot(R, os.path.join(out, 'images', 'benchmark.png'))
    return text
