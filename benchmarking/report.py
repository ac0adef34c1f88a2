"""BENCHMARKS.md and images/benchmark.png from the result dict of benchmarking.runs.run_all."""
import math
import os
import platform
import re

import numpy as np
import torch

NOTES = '## Notes'  # the hand-written section of an existing BENCHMARKS.md: kept when the report is rewritten
NAMES, COLOURS = {'ref': 'reference-style', 'ours': 'ours'}, {'ref': '#c44e52', 'ours': '#4c72b0'}
REPRODUCES = ('Per item a full `scipy.io.loadmat` and float64 z-normalisation; a DataLoader whose collate cuts chunks '
              'in Python loops into float64, cast to float32 at the model; the aggregation head in a Python loop over '
              'utterances; validation and one-at-a-time scoring with autograd on. It computes our function (tests).')


def g(v):
    """Four significant digits, no exponent: 52268, 1.088, 0.01214."""
    return f'{v:.{max(0, 3 - math.floor(math.log10(abs(v))))}f}' if v else '0'


def ratio(a, b):
    return f'{a / b:.2f}x' if b else 'n/a'


def mib(b):
    return f'{b / 2**20:.0f}'


def table(header, rows):
    return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
            ['| ' + ' | '.join(str(v) for v in r) + ' |' for r in rows] + [''])


def machine_info():
    cpu = platform.machine()
    if os.path.isfile('/proc/cpuinfo'):
        cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), cpu)
    return f'{cpu}, {os.cpu_count()} cores'


def run_line(R):
    return (f'{R["date"]}, {R["machine"]}, {R["args"]["device"]}, {R["threads"]} torch threads, '
            f'torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}: '
            f'`{R["command"]}`; load average {R["load_before"]} before, {R["load_after"]} after')


def header(R):
    a, n = R['args'], R.get('corpus')
    return ['# Benchmarks', '', f'- {run_line(R)} (compare only figures of one run)'] + ([
            f'- {n["utts"]} synthetic utterances of {a["min_frames"]}-{a["max_frames"]} frames (Train {n["train"]} / '
            f'Validation {n["validation"]} / Test {n["test"]}); batch {a["batch"]}, {a["iters"]} timed training '
            f'iterations per head after a warm-up, validation of {a["val_utts"]} and scoring of {a["test_utts"]} '
            'utterances (3 rounds); both pipelines in one process, interleaved step by step (the same load), each '
            'time the best of its repeats.'] if n else []) + ['']


def per_head(R):
    peak, rows = R['peak']['gflops'], []
    for head, hr in R['heads'].items():
        r, o = hr['ref'], hr['ours']
        rows += [(head, NAMES[p], g(h['it_s']), f'{g(h["data_s"])} ({g(h["data_utt_per_s"])})', g(h['step_s']),
                  f'{g(h["gflops"])} ({100 * h["gflops"] / peak:.0f} %)', g(h['val_s']),
                  f'{g(h["score_ms"])} ({g(h["score_model_ms"])})') for p, h in (('ref', r), ('ours', o))]
        rows.append((head, '**speed-up**', f'**{ratio(r["it_s"], o["it_s"])}**', ratio(r['data_s'], o['data_s']),
                     ratio(r['step_s'], o['step_s']), '', ratio(r['val_s'], o['val_s']),
                     f'**{ratio(r["score_ms"], o["score_ms"])}** ({ratio(r["score_model_ms"], o["score_model_ms"])})'))
    return [TITLES['heads'], ''] + table(
        ('head', 'pipeline', 's/iter', 'data s (utterances/s)', 'model step s', 'GFLOPS (% of matmul peak)',
         'validation s', 'scoring ms/utt (model)'), rows) + [
        "Same function: from the same seeded weights both pipelines' predictions agree to " +
        ', '.join(f'{h} {v["max_pred_diff"]:.1e}' for h, v in R['heads'].items()) + ' (max abs difference).', '',
        'Data: a training batch read into float32 chunks (ours: training.make_batch). GFLOPS of a step: '
        'model.estimate_flops (forward + backward = 3x forward) over the step time. Matmul peak (fp32 '
        f'{R["args"]["peak_size"]}^2, best of 10, at the start and the end, the higher kept): {peak:.1f} GFLOPS '
        '(' + ', '.join(f'{k} {v:.0f}' for k, v in R['peak'].items() if k != 'gflops') + ').', '']


def per_encoder(R):
    rows = [(name, e['head'], g(e['score_ms']), g(e['model_ms']), g(e['gflops']), f'{e["params"]:,}',
             f'{e["vs_lstm"]:.2f}x' if e['vs_lstm'] else 'n/a') for name, e in R['score-encoders'].items()]
    return [TITLES['score-encoders'], '', f'Every registered encoder (model.ENCODERS) scores {R["args"]["test_utts"]} '
            'utterances as testing.py does (scoring.predict_utterances, CPU streams if they apply); 3 rounds.', ''] + \
        table(('encoder', 'head', 'ms/utt', 'model ms/utt', 'GFLOPS', 'parameters', 'ms/utt vs LSTM'), rows)


# MSP-Podcast v1.6 as the retrieval follow-up trains on it (docs/retrieval.md: about 44,000 Train sentences; the Validation
# count is that of the released EmoChunkRankSeq/validation_*.json), for the projection of the whole pipeline
V16 = dict(train=44_000, validation=5_958, ranker_epochs=20, pairs_per_epoch=100_000, seq2seq_epochs=30)


def projection(R):
    """Hours of one attribute's pipeline (ranker training with its validations, ranks of Train + Validation, seq2seq
    training with its validations) from this run's per-step figures: {stage: (work, ref h, ours h)}."""
    r, B, v = R['retrieval'], R['args']['batch'], V16
    ranker_steps, val_batches = v['ranker_epochs'] * -(-v['pairs_per_epoch'] // B), -(-v['validation'] // B)
    seq_steps = v['seq2seq_epochs'] * -(-v['train'] // B)
    hours = lambda k, steps, val: {p: (steps * r[k][p]['it_s'] + val * r[k][p]['val_s']) / 3600 for p in ('ref', 'ours')}
    sentences = v['train'] + v['validation']
    stages = {
        'ranker training': (f'{v["ranker_epochs"]} epochs x {ranker_steps // v["ranker_epochs"]:,} steps of {B} pairs, '
                            'each epoch validated on as many pairs', hours('ranker_step', ranker_steps, ranker_steps)),
        'chunk ranks': (f'Train + Validation, {sentences:,} sentences',
                        {p: sentences * r[f'{p}_s'] / 3600 for p in ('ref', 'ours')}),
        'seq2seq training': (f'{v["seq2seq_epochs"]} epochs x {seq_steps // v["seq2seq_epochs"]:,} steps of {B} '
                             f'utterances, each epoch validated on {v["validation"]:,}',
                             hours('seq2seq_step', seq_steps, v['seq2seq_epochs'] * val_batches))}
    return {k: (work, h['ref'], h['ours']) for k, (work, h) in stages.items()}


def per_sentence_retrieval(R):
    r, B = R['retrieval'], R['args']['batch']
    steps = []
    for key, what in (('ranker_step', f'ranker, {r["ranker_step"]["pairs"]} sentence pairs '
                                      f'({r["ranker_step"]["chunk_pairs"]:,} chunk pairs)'),
                      ('seq2seq_step', f'seq2seq, {r["seq2seq_step"]["utts"]} utterances')):
        x = r[key]
        steps += [(what, NAMES[p], g(x[p]['it_s']), g(x[p]['data_s']), g(x[p]['step_s']), g(x[p]['gflops']),
                   g(x[p]['val_s'])) for p in ('ref', 'ours')]
        steps.append((what, '**speed-up**', f'**{ratio(x["ref"]["it_s"], x["ours"]["it_s"])}**',
                      ratio(x['ref']['data_s'], x['ours']['data_s']), ratio(x['ref']['step_s'], x['ours']['step_s']),
                      '', ratio(x['ref']['val_s'], x['ours']['val_s'])))
    P = projection(R)
    total = [sum(v[i] for v in P.values()) for i in (1, 2)]
    proj = [(k, work, g(ref), g(ours), ratio(ref, ours)) for k, (work, ref, ours) in P.items()]
    proj += [('**one attribute**', '', f'**{g(total[0])}**', f'**{g(total[1])}**', f'**{ratio(*total)}**'),
             ('three attributes (Act, Val, Dom)', '', g(3 * total[0]), g(3 * total[1]), ratio(*total))]
    return [TITLES['retrieval'], '', "The retrieval follow-up's stages, measured in one run (both pipelines under the "
            'same load), random-weight networks.', '', f'**Chunk ranks.** Ranking the 22 chunks of each of {r["utts"]} '
            'scored utterances: the reference calls the ranker once per ordered pair (462 x 2 batch-1 LSTM passes), '
            'retrieval.py encodes each chunk once and compares all pairs batched. Target: 100x.', ''] + \
        table(('reference loop s/utt', 'retrieval.py s/utt', 'speed-up', 'wins equal'),
              [(g(r['ref_s']), g(r['ours_s']), f'{r["speedup"]:.0f}x', r['same_wins'])]) + [
        '**Training steps.** The ranker: ours training.py\'s own pieces (training.PairFeatures over the feature store, '
        'make_batch, forward_backward with objectives.RankerObjective, Adam; CPU streams as training.py sets them), '
        'the reference-style one a DataLoader over pairs (both `.mat` files loaded per item, float64 normalisation, '
        'the chunks cut in the collate), the ranker called on each side, cross-entropy, Adam. The seq2seq model '
        '(task chunk): ours make_batch and forward_backward with objectives.Curves (0.5 CCC of the utterances + 0.5 '
        'CCC of the chunks), the reference-style one the DataLoader of the sequence-to-one benchmark, 0.5 CCC of the '
        f'utterances + 0.5 CCC of the chunks. In turn, the best of {R["args"]["iters"]} step(s) after a warm-up; the '
        'validation batch (eval mode, no autograd, the best of 2) is the same batch size. Target: the '
        'ranker step 1.3x.', ''] + table(('network, batch', 'pipeline', 's/step', 'data s', 'model step s', 'GFLOPS',
                                         'validation batch s'), steps) + [
        f'Same function: from the same weights the two ranker pipelines\' logits agree to '
        f'{r["ranker_step"]["max_logit_diff"]:.1e} (max abs difference, 4 pairs).', '',
        f'**Projection on MSP-Podcast v1.6** from these figures at batch {B} (hours on this machine, one attribute: '
        f'about {V16["train"]:,} Train and {V16["validation"]:,} Validation sentences; ranker {V16["ranker_epochs"]} '
        f'epochs of {V16["pairs_per_epoch"]:,} pairs, seq2seq {V16["seq2seq_epochs"]} epochs over Train). Training '
        'steps times steps, validation batches times their count, ranks per sentence times sentences; start-up, '
        'the feature store build (ours) and the preference labels are left out.', ''] + table(
        ('stage', 'work', 'reference-style h', 'ours h', 'speed-up'), proj)


PROCESSES = (('training.py, whole process', 'ref_train', 'ours_train'),
             ('testing.py, whole process', 'ref_test', 'ours_test'),
             ('testing.py, feature store already built', 'ref_test', 'ours_test_warm'))


def processes(R):
    x, n, fl = R['processes'], R['corpus'], R['processes']['floor_s']
    rows = [(what, g(x[r]['wall_s']), g(x[o]['wall_s']), ratio(x[r]['wall_s'], x[o]['wall_s']),
             ratio(x[r]['wall_s'] - fl, x[o]['wall_s'] - fl), f'{mib(x[r]["peak_rss"])} / {mib(x[o]["peak_rss"])}')
            for what, r, o in PROCESSES]
    rows.append(('testing.py, printed model ms/utt', g(x['ref_test']['model_ms']), g(x['ours_test']['model_ms']),
                 ratio(x['ref_test']['model_ms'], x['ours_test']['model_ms']), '', ''))
    return [TITLES['processes'], '',
            f'`training.py -iter {x["iters"]} -batch {x["batch"]} -emo Act -atten SelfAttenVec` on the {n["utts"]}-'
            f'utterance corpus and `testing.py` on its {n["test"]}-utterance Test split, against `bench.py ref-train|'
            f'ref-test` ({R["args"]["process_workers"]} DataLoader workers); they alternate {x["repeat"]} time(s), the '
            'fastest run of each counts. Our store is deleted before each run and built inside it.', ''] + table(
        ('process', 'reference-style s', 'ours s', 'speed-up', 'without start-up floor', 'peak RssAnon MiB ref / ours'),
        rows) + [f'Start-up floor: a bare `python -c "import torch, scipy.io, pandas"` took {g(fl)} s. Test CCC of the '
                 f'same checkpoint: reference-style {x["ref_test"]["ccc"]!r}, ours {x["ours_test"]["ccc"]!r}.', '']


def train_encoders(R):
    a, rows = R['args'], [(head, enc, g(e['step_s']), f'{e["vs_lstm"]:.2f}x', g(e['gflops']))
                          for head, encs in R['train-encoders'].items() for enc, e in encs.items()]
    return [TITLES['train-encoders'], '', f"training.py's step (zero_grad, forward_backward, Adam) on a batch of "
            f'{a["batch"]} utterances for every registered encoder (model.ENCODERS) under the same head; CPU streams '
            f'where they apply (in training: nn.LSTM); the encoders in turn, the best of {a["iters"]} step(s) '
            "after a warm-up; the row `LSTM -emo Class` is the LSTM's categorical step (8 classes, weighted "
            "cross-entropy). Targets: the CNN's step at least 1.5x faster than the LSTM's (0.67x its "
            "time), the Keras LSTM's within 3x, the categorical step within 10 % of the regression step (1.10x).", ''] + table(('head', 'encoder', 's/step', 'step vs LSTM', 'GFLOPS'),
                                                              rows)


def startup_section(R):
    S = R['startup']
    if 'missing' in S:
        return [TITLES['startup'], '', f'Not measured: {S["missing"]} not found (bench.py --model-dir / --norm-dir, '
                                       'or the released set installed by pretrained.py).', '']
    im, runs_s = S['imports'], lambda k: ', '.join(g(v) for v in S['runs'][k])
    return [TITLES['startup'], '', f'`testing.py` scoring a {S["utts"]}-utterance synthetic corpus with the released '
            f'`{os.path.basename(S["checkpoint"])}` (its feature store built by an untimed warm-up run of each '
            f'command), against a bare `{FLOOR}`: {len(S["runs"]["floor"])} round(s) of one run of each (which goes '
            'first alternates), the medians; the ratio of the medians, and the median of the ratios of the rounds '
            "(each round's two runs one after the other, under about the same load). Target: testing.py "
            'within 1.25x of the bare imports.', ''] + table(
        ('process', 'median s', 'runs s'), [(f'`{FLOOR}`', g(S['floor_s']), runs_s('floor')),
                                            ('testing.py', g(S['testing_s']), runs_s('testing')),
                                            ('**ratio of the medians**', f'**{S["ratio"]:.2f}x**', ''),
                                            ("median of the rounds' ratios", f'{S["round_ratio"]:.2f}x', '')]) + [
        f'Imports of testing.py (`python -X importtime`, one more run): {g(im["total_s"])} s in all; self time by '
        'package: ' + ', '.join(f'{k} {g(v)}' for k, v in im['packages'][:6]) + ' s. The costliest third-party '
        'imports and the modules of ours that make them (cumulative s): ' + '; '.join(
            f'{via} -> {m} {g(v)}' for via, m, v in im['imports'][:5] if v >= 0.01 * im['total_s']) + '.', '']


def deploy_section(R):
    D = R['deploy']
    if 'missing' in D:
        return [TITLES['deploy'], '', f'Not measured: {D["missing"]} not found (bench.py --model-dir).', '']
    C = D['cold']
    rows = [(k, g(D[k]['ms']), f'{D["torch"]["ms"] / D[k]["ms"]:.2f}x', g(D[k]['cpu_ms']), g(D[k]['audio_h_per_cpu_h']))
            for k in ('torch', 'onnx', 'int8')]
    return [TITLES['deploy'], '', f'The released `{MODEL}` scored on {D["utts"]} synthetic utterances (batch '
            f'{D["batch"]}, {D["threads"]} torch thread(s)): our torch scoring with CPU streams, the export through '
            "onnxruntime (its default threads), and its int8 export; the best of 3 rounds taken in turn. Audio hours "
            "per CPU hour: the utterances' audio over the CPU time of scoring them plus openSMILE's IS13 LLDs "
            f'({g(D["features_cpu_per_audio_s"] * 1000)} CPU ms per audio second, on a 5 s wav). Files: .pth.tar '
            f'{D["size_pth"] / 2**20:.2f} MiB, .onnx {D["size_f32"] / 2**20:.2f} MiB, int8 {D["size_int8"] / 2**20:.2f} '
            'MiB.', ''] + table(
        ('model', 'ms / utterance', 'speed-up over torch', 'CPU ms / utterance', 'audio h / CPU h (IS13 + model)'),
        rows) + [f'Cold start of `predict.py` on one 5 s wav with the three SelfAttenVec models (Act, Val, Dom): '
                     f'{len(C["runs"]["pth"])} round(s) of one run of each, which goes first alternating, after an '
                     'untimed warm-up of each; the medians.', ''] + table(
        ('models', 'median s', 'runs s'), [('.pth.tar (torch)', g(C['pth_s']), ', '.join(g(v) for v in C['runs']['pth'])),
                                           ('.onnx (no torch imported)', g(C['onnx_s']),
                                            ', '.join(g(v) for v in C['runs']['onnx'])),
                                           ('**.pth.tar / .onnx**', f'**{C["ratio"]:.2f}x**', '')]) + ['']


MODEL = 'LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_Act.pth.tar'

# One MSP-Podcast v1.12 training run, for the fine-tuning projection. The mean speaking turn is the release's
# readme's whole corpus (207,136 speaking turns, 324 h 23 min); the Train count is an assumption, not checked
# against the release's Partition.txt; 20 epochs is the challenge baseline's setting (docs/finetuning.md).
V112 = dict(train=84_030, corpus_turns=207_136, corpus_s=324 * 3600 + 23 * 60, epochs=20)
FT_ROWS = {'finetune': ('fine-tuned', 'fp32', 'off'), 'finetune-ckpt': ('fine-tuned', 'fp32', 'on'),
           'finetune-bf16': ('fine-tuned', 'bf16 autocast', 'off'),
           'finetune-bf16-ckpt': ('fine-tuned', 'bf16 autocast', 'on'),
           'frozen': ('frozen', 'fp32', '-'), 'frozen-bf16': ('frozen', 'bf16 autocast', '-')}
FT_DEVICES = {'cpu': ('finetune', 'frozen'), 'cuda': tuple(FT_ROWS)}  # finetune.DEVICE_VARIANTS


def finetune_projection(step_s, batch, seconds, v=V112):
    """Projected hours of one training run from a measured step of `batch` utterances of `seconds` each:
    epochs x ceil(Train / batch) steps, each scaled from `seconds` to the mean utterance (linear in length)."""
    mean_s = v['corpus_s'] / v['corpus_turns']
    return v['epochs'] * -(-v['train'] // batch) * step_s * mean_s / seconds / 3600


def finetune_row(F, device, name, cuda_available):
    """One table row: measured figures and the projection, or why the variant was not run."""
    what = (device.upper() if device == 'cpu' else 'CUDA',) + FT_ROWS[name]
    v = F['variants'].get(name) if F['device'] == device else None
    if v is None:
        why = 'no GPU' if device == 'cuda' and not cuda_available else \
            f'--device {F["device"]}' if F['device'] != device else 'not in this run'
        return what + (f'not run ({why})',) + ('',) * 5
    return what + (g(v['step_s']), g(v['cpu_s']) if device == 'cpu' else '-', ', '.join(g(t) for t in v['steps_s']),
                   mib(v['peak_bytes']), mib(v['step_peak_bytes']),
                   f'{finetune_projection(v["step_s"], F["batch"], F["seconds"]):,.0f}')


def finetune_section(R, cuda_available=None):
    F, v, sec = R['finetune'], V112, f'{R["finetune"]["seconds"]:g} s'
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    one = F['variants'].get('finetune') or next(iter(F['variants'].values()))
    mean_s = v['corpus_s'] / v['corpus_turns']
    rows = [finetune_row(F, d, n, cuda_available) for d, names in FT_DEVICES.items() for n in names]
    gpu = next((x['gpu'] for x in F['variants'].values() if x.get('gpu')), None)
    return [TITLES['finetune'], '',
            f'One training step of an audio network with random weights: a {F["model_type"]} of {F["layers"]} '
            f'layers, hidden size {F["hidden"]} ({F["config"]}; {one["backbone_params"]:,} parameters), its last '
            f'layer read by the LSTM chunk encoder (hidden size {F["head_hidden"]}, chunks of {F["chunk_frames"]} '
            f'frames = 1 s) and the {F["head"]} head ({one["head_params"]:,} parameters); a batch of {F["batch"]} x '
            f'{sec} of random audio, regression on one attribute (1 - CCC). The trainer\'s own pieces: '
            'model.build_model, train.audio.prepare (gradient checkpointing) and param_groups (head 1e-4, '
            "transformer 1e-5: training.py's defaults), Adam, train.step.forward_backward (autocast for bf16). "
            'Fine-tuned: the transformer trains, its convolutions frozen as in training'
            + (f' ({one["trained_params"]:,} parameters trained)' if 'finetune' in F['variants'] else '') +
            '; frozen: only the head trains, the backbone runs without autograd. Each variant in a process of its '
            f'own: one warm-up step, then the median of {F["steps"]} step(s) (**measured**). Memory: on the CPU the '
            "process's peak resident set (VmHWM), and that peak less the resident set once the model is built; on "
            'CUDA torch.cuda.max_memory_allocated, and that less the memory allocated once the model is built'
            + (f' ({gpu})' if gpu else '') + '.', ''] + table(
        ('device', 'transformer', 'precision', 'gradient checkpointing', 's/step (median)', 'CPU s/step',
         'steps s (warm-up first)', 'peak MiB', "step's peak MiB over the built model", 'projected h per run'),
        rows) + [
        f'**Projection** (the last column, **not measured**): one MSP-Podcast v1.12 training run of {v["epochs"]} '
        f"epochs (the challenge baseline's setting) over {v['train']:,} Train utterances (an assumed count, not "
        f"checked against the release's partition): {v['epochs']} x {-(-v['train'] // F['batch']):,} steps of "
        f"{F['batch']} utterances, each step's time scaled from {sec} to the mean speaking turn, {mean_s:.2f} s "
        f"(the v1.12 release's readme as quoted, not checked here: {v['corpus_turns']:,} turns, 324 h 23 min; "
        f"Train about "
        f"{v['train'] * mean_s / 3600:.0f} h). Linear in length (the attention's quadratic part left out); "
        'validation, data loading and start-up left out; on this machine, at the load of the run.', '']


def rss_section(R):
    return [TITLES['rss-scaling'], ''] + table(('utterances', 'peak RssAnon MiB', 'wall s'), [
        (n, mib(v['peak_rss']), g(v['wall_s'])) for n, v in R['rss-scaling'].items()])


FLOOR = 'python -c "import torch, scipy.io, pandas"'
TITLES = {'heads': '## Training, validation, scoring per head', 'score-encoders': '## Scoring per encoder',
          'train-encoders': '## Training step per encoder', 'retrieval': '## Chunk retrieval',
          'processes': '## Whole processes (cold start included)', 'startup': '## Start-up',
          'deploy': '## Deploying: ONNX, int8 and the cold start of predict',
          'finetune': '## Fine-tuning: a self-supervised model\'s training step',
          'rss-scaling': '## Peak RssAnon of training against corpus size'}  # the report's order
BUILDERS = {'heads': per_head, 'score-encoders': per_encoder, 'train-encoders': train_encoders,
            'retrieval': per_sentence_retrieval, 'processes': processes, 'startup': startup_section,
            'deploy': deploy_section, 'finetune': finetune_section, 'rss-scaling': rss_section}
ORDER = list(TITLES.values()) + ['## What the reference-style path reproduces', NOTES]


def splice(previous, blocks):
    """`previous` markdown with its '## ' sections of the titles in `blocks` ({title: text}) replaced, the others
    kept; a section it lacks goes in the report's order (before the first later one it has)."""
    parts = re.split(r'(?m)^(?=## )', previous)
    pre, secs = parts[0], [[p.split('\n', 1)[0], p.rstrip() + '\n\n'] for p in parts[1:]]
    rank = lambda t: ORDER.index(NOTES) if t.startswith(NOTES) else ORDER.index(t) if t in ORDER else -1  # notes: any
    for title, text in blocks.items():
        have = [t for t, _ in secs]
        if title in have:
            secs[have.index(title)][1] = text
        else:
            later = [i for i, t in enumerate(have) if rank(t) > rank(title)]
            secs.insert(later[0] if later else len(secs), [title, text])
    return (pre + ''.join(text for _, text in secs)).rstrip() + '\n'


def make_report(R, previous=''):
    """The report's markdown; the NOTES section of `previous` (the BENCHMARKS.md it replaces) is kept. A run of
    some sections (R['only']) rewrites just those in `previous`, each saying when and how it was measured."""
    sections = [BUILDERS[k](R) for k in TITLES if k in R]
    if R.get('only'):
        blocks = {L[0]: '\n'.join(L[:1] + ['', f'_Measured alone: {run_line(R)}._'] + L[1:]) + '\n' for L in sections}
        return splice(previous or '\n'.join(header(R)) + '\n', blocks)
    notes = previous[previous.find('\n' + NOTES):].strip() if '\n' + NOTES in previous else ''
    L = header(R) + sum(sections, []) + ['## What the reference-style path reproduces', '', REPRODUCES, '']
    return '\n'.join(L + ([notes, ''] if notes else []))


def plot(R, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    heads, enc = list(R['heads']), R['score-encoders']
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, key in zip(axes, ('data_utt_per_s', 'it_s', 'score_ms')):
        for k, p in enumerate(('ref', 'ours')):
            ax.bar(np.arange(len(heads)) + 0.4 * k - 0.2, [R['heads'][h][p][key] for h in heads], 0.4, color=COLOURS[p])
        ax.set_xticks(np.arange(len(heads)), heads, rotation=15)
    axes[3].bar(list(enc), [e['score_ms'] for e in enc.values()], color=COLOURS['ours'])
    for ax, title in zip(axes, ('data pipeline utterances / s (log)', 'training s / iteration',
                                'scoring ms / utterance', 'encoders: scoring ms / utt (NonAtten)')):
        ax.set(title=title, yscale='log' if 'log' in title else 'linear')
    axes[1].legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()], NAMES.values(), loc='lower right')
    fig.suptitle(f'{R["machine"]} | {R["args"]["device"]}, {R["threads"]} thread(s) | torch {torch.__version__} | '
                 f'batch {R["args"]["batch"]} | {R["date"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(R, out):
    """<out>/BENCHMARKS.md (keeping its hand-written notes, or with --only its other sections) and
    <out>/images/benchmark.png."""
    path = os.path.join(out, 'BENCHMARKS.md')
    previous = open(path).read() if os.path.isfile(path) else ''
    with open(path, 'w') as f:
        f.write(make_report(R, previous))
    if 'heads' in R and 'score-encoders' in R:  # a run of other sections alone leaves the plot as it is
        os.makedirs(os.path.join(out, 'images'), exist_ok=True)
        plot(R, os.path.join(out, 'images', 'benchmark.png'))
