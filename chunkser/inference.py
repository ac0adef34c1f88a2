"""Inference on files: the library behind predict.py, and the inputs a user points at (audio or feature files,
folders of them) read into features (also retrieval.py's).

    from chunkser import predict_files
    df = predict_files(['talk.wav', 'clips/'], model_dir='trained_model_v1.6', norm_dir='NormTerm')

predict_files(paths, **options) -> the rows predict.py --out writes, as a DataFrame: file, Act, Val, Dom (1..7,
NaN where no checkpoint gives the attribute), with a categorical model Class (its letter) and p_<c> (each class's
probability, in the model's class order), then start, end (seconds), voiced (the share of speech: the voice-
activity detector's speech frames for audio, else the pitch tracker's voiced frames; NaN where there is neither).
Audio longer than `window` is cut into speech segments (segments.py; segments='fixed': equal windows), and the
stretches without speech get no row (rows.attrs['segments'] lists both, as --segments-out writes them).
Warnings (little speech, a clip shorter than the corpus's shortest turn) go to stderr and, for Python callers,
through warnings.warn as SpeechWarning (rows.attrs['warnings'] holds them too). The options are predict.py's long options as keyword arguments, same
defaults (see Options); chunks=True also returns the chunk rows of seq2seq models (predict.py --chunks-out).

What a row holds comes from the checkpoints (their JSON names encoder, head, task and targets; the objective of
those targets, objectives.objective_of, turns outputs into columns) and from the front end (FRONTENDS): a new
encoder, task, objective or front end is an entry there and an option here, not a new function.
"""
import json
import os
import sys
import warnings
from dataclasses import dataclass, fields

import numpy as np

from .features import lld
from .checkpoint import (SEARCH_DIRS, check_norm, checkpoint_name, find_checkpoint, is_onnx, load_model, read_spec,
                         require_task)
from .corpus import load_features
from .device import select_device
from .features.frontend import SSLFrontEnd, check_origin, describe, hop_of, identity, read_record
from .home import INSTALL_HINT, describe as describe_search, norm_dir_or_home
from .normterm import LabelTerms, NormTerms
from .objectives import CLASS, CSV_ORDER, attributes_of, emo_token, objective_of
from .scoring import predict_utterances
from .segments import MIN_SEGMENT
from .spec import DEFAULT_HEAD, SENTENCE_TASKS, TASKS, ModelSpec
from .utils import HOP, SAMPLE_RATE, UserError, chunk_spans

# The CSV: file, the attributes (always, empty where no model gives one), the other columns the models give (a
# Class model's Class, p_<c>...), then start, end, voiced. Attribute models alone: HEADER, as before Class existed.
HEADER = ['file', *CSV_ORDER, 'start', 'end', 'voiced']
CHUNK_HEADER = ['file', 'attribute', 'chunk', 'start', 'end', 'value']
SEGMENT_HEADER = ['file', 'start', 'end', 'speech', 'row']  # --segments-out: row 1 = scored, 0 = no speech, no row
SEGMENTS = ('vad', 'fixed')  # vad: speech segments of audio longer than `window`; fixed: equal windows
INPUT_EXTENSIONS = lld.AUDIO_EXTENSIONS + ('.mat',)
GROUP = 32    # input files held in memory at once (their features, windows and plots)

# Speech presence. The IS13 LLDs (time column dropped) start F0final_sma, voicingFinalUnclipped_sma (openSMILE's
# output order). F0final is 0 wherever the pitch tracker's voicing is under the config's cutoff of 0.7, which our
# 32 ms frames (SPEC: both framers at 32 ms) rarely reach for low voices, so F0 > 0 misses most male speech; the
# voicing itself separates speech from noise (README, "Is it speech?").
VOICING_COLUMN = 1   # voicingFinalUnclipped_sma: the pitch tracker's voicing probability, 0..1
VOICING_MIN = 0.5    # a frame is voiced above this (noise frames stay under it)
VOICED_MIN = 0.1     # a window with a smaller share of voiced frames gets a warning and is greyed in the plots


class SpeechWarning(UserWarning):
    """A row whose values mean little: little speech in it, or shorter than the corpus's shortest turn."""


@dataclass(frozen=True)
class FrontEnd:
    features: object      # (N,) 16 kHz mono samples -> (T, F) float64 raw features (no time column)
    voicing: int = None   # the feature column of a voicing probability; None: no pitch tracker, `voiced` empty
    hop: float = HOP      # seconds per frame
    record: dict = None   # frontend.py's record of a self-supervised front end (None: the IS13 LLDs)
    reads_audio: bool = False  # the checkpoints are audio networks: the 'features' are the waveform's samples


FRONTENDS = {'is13': FrontEnd(lambda x: lld.features_from_signal(x)[:, 1:], VOICING_COLUMN)}
WAVEFORM = FrontEnd(lambda x: np.asarray(x, dtype=np.float64)[:, None], None, 1.0 / SAMPLE_RATE, reads_audio=True)


@dataclass(frozen=True)
class Options:
    """predict.py's long options (`-` as `_`), same defaults, and the library's own (chunks, skip_errors)."""
    checkpoints: tuple = ()        # --checkpoint FILE...: exactly these, as their JSON says (no column twice)
    model_dir: str = None          # else the names below in model_dir, else checkpoint.SEARCH_DIRS (here, then in
                                   # $CHUNKSER_HOME, default ~/.cache/chunkser)
    norm_dir: str = None           # else the folder a checkpoint's JSON names, else ./NormTerm, else the per-user one
    emo: str = None                # -emo: None, one checkpoint per attribute (Act, Val, Dom); else the one checkpoint
                                   # of these targets: 'ActValDom' (or ['Act', 'Val', 'Dom']), 'Class', 'Dom', ...
    encoder: str = 'LSTM'          # -model
    atten: str = DEFAULT_HEAD
    iterations: int = 5000
    epochs: int = None             # -ep: names read epoch{E}, not iter{I}
    batch_size: int = 128
    window: float = 11.0           # longest span in seconds scored as one utterance; 0 never cuts
    segments: str = 'vad'          # audio longer than `window`: 'vad' speech segments (none in silence, noise,
                                   # music), 'fixed' consecutive equal windows; .mat inputs: always 'fixed'
    force: bool = False            # use norm_dir even if a checkpoint's JSON names other terms
    device: str = 'auto'
    cpu_streams: int = 0
    frontend: str = None           # audio -> features: None, the checkpoints' own (IS13, or the self-supervised model
                                   # their JSON records); a key of FRONTENDS; or NAME_OR_PATH of the recorded model
                                   # where it is now (its sha256 must match)
    chunks: bool = False           # also the chunk rows (seq2seq checkpoints only), as --chunks-out
    skip_errors: bool = False      # an unreadable input is named on stderr and skipped (predict.py), not raised
    flags: bool = False            # errors name predict.py's flags (--model-dir), not keyword arguments (model_dir=)

    def __post_init__(self):
        if isinstance(self.checkpoints, str):  # one path, not its characters
            object.__setattr__(self, 'checkpoints', (self.checkpoints,))
        if self.emo is not None:  # as -emo gives it (a list) or as names read it ('ActValDom')
            emo = self.emo if isinstance(self.emo, str) else emo_token(self.emo)
            if emo != CLASS and not attributes_of(emo):
                raise UserError(f'emo {self.emo!r}: expected Act, Val, Dom (one or several) or Class')
            object.__setattr__(self, 'emo', emo)
            if self.checkpoints:
                raise UserError('-emo and --checkpoint: a checkpoint\'s JSON says what it predicts; give one of them')
        if self.window != 0 and self.window < 1:
            raise UserError(f'--window {self.window}: expected 0 (never cut) or at least 1 second (one chunk)')
        if self.segments not in SEGMENTS:
            raise UserError(f'segments {self.segments!r}: expected {" or ".join(SEGMENTS)}')

    @classmethod
    def make(cls, **options):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f'predict_files: unknown option(s) {", ".join(unknown)} (known: {", ".join(sorted(known))})')
        return cls(**options)


def predict_files(paths, **options):
    """Files or folders (.wav/.flac/.mat) -> the rows of predict.py --out as a DataFrame (equal to read_csv of
    that CSV); with chunks=True, (rows, chunk rows). An unreadable input raises UserError naming it, unless
    skip_errors=True: then it is named on stderr, skipped and listed in rows.attrs['failed']."""
    opts = Options.make(**options)
    files = collect_inputs(paths)
    models = load_models(opts)
    rows, chunk_rows, failures, seg_rows, lines = [], [], [], [], []
    for it in scored_items(files, opts, models, failures):
        r, c = item_rows(it, models.header)
        rows += r
        chunk_rows += c
        seg_rows += segment_rows(it)
        lines += it['warnings']
        for line in it['warnings']:
            warnings.warn(line, SpeechWarning, stacklevel=2)
    df = table(models.header, rows, text=('file', CLASS))
    df.attrs.update(failed=failures, warnings=lines, segments=table(SEGMENT_HEADER, seg_rows, text=('file',)))
    if opts.chunks:
        return df, table(CHUNK_HEADER, chunk_rows, text=('file', 'attribute'))
    return df


def table(header, rows, text):
    """CSV rows (strings) -> DataFrame with the dtypes read_csv gives: numbers float ('' -> NaN), chunk int."""
    import pandas as pd  # heavy: only the library call needs it
    df = pd.DataFrame(rows, columns=header)
    for c in header:
        if c in ('chunk', 'row'):
            df[c] = df[c].astype('int64')
        elif c not in text:
            df[c] = pd.to_numeric(df[c].replace('', np.nan), errors='raise').astype('float64')
    return df


# ----------------------------------------------------------------------------------
# inputs, checkpoints, z-norm terms

def collect_inputs(paths):
    """Paths -> the files to score, folders expanded recursively in sorted order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in map(str, paths):
        if os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(INPUT_EXTENSIONS)]
            if not found:
                raise UserError(f'{p}: no .wav, .flac or .mat files in this folder')
            files += found
        elif os.path.isfile(p):
            if not p.lower().endswith(INPUT_EXTENSIONS):
                raise UserError(f'{p}: expected a .wav, .flac or .mat file, or a folder of them')
            files.append(p)
        else:
            raise UserError(f'{p}: file or folder not found')
    return files


def find_models(opts):
    """name (the targets: 'Act', 'ActValDom', 'Class') -> (checkpoint path, spec): --checkpoint FILEs, else the one
    checkpoint of -emo, else one per attribute (those missing are named, their columns stay empty)."""
    if opts.checkpoints:
        return given_models(opts)
    if opts.chunks:
        raise UserError('--chunks-out needs seq2seq checkpoints (task chunk): pass --checkpoint FILE, e.g. '
                        'trained_seq2seq_model_v1.6/LSTM_epoch30_batch128_EmoRankerSeq_Act.pth.tar')
    run = {'iterations': opts.iterations} if opts.epochs is None else {'epochs': opts.epochs}
    names = {emo: checkpoint_name(ModelSpec(encoder=opts.encoder, head=opts.atten, emo=emo), opts.batch_size, **run)
             for emo in ((opts.emo,) if opts.emo else CSV_ORDER)}
    found = {}
    for emo, name in names.items():
        path = find_checkpoint(name, opts.model_dir)
        if path:
            found[emo] = (path, read_spec(path, opts.atten))
    where = folder(opts.model_dir) if opts.model_dir else describe_search(SEARCH_DIRS)
    if opts.emo and not found:
        raise UserError(f'{names[opts.emo]}: checkpoint not found in {where} (train one with training.py -emo '
                        f'{" ".join(attributes_of(opts.emo)) or CLASS}, or pass {option(opts, "model_dir")} or '
                        f'{option(opts, "checkpoints")})')
    if not found:
        no_norm = not os.path.isdir(opts.norm_dir or norm_dir_or_home())  # one error for both, not two in turn
        raise UserError(f'no {opts.atten} checkpoint ({names["Act"]} or its Val/Dom siblings) in {where}'
                        f'{" and no NormTerm folder" if no_norm else ""}: {INSTALL_HINT}, or pass '
                        f'{option(opts, "model_dir")} DIR' + (f' and {option(opts, "norm_dir")} DIR' if no_norm else '')
                        + ('; -emo Act Val Dom or -emo Class' if opts.flags else "; emo='ActValDom' or emo='Class'")
                        + ' looks up one model of those targets instead')
    for emo in names:
        if emo not in found:
            print(f'warning: no {emo} checkpoint ({names[emo]}) in {where}: the {emo} column stays empty', file=sys.stderr)
    header_of(found)  # one checkpoint per column
    return found


def option(opts, name):
    """An option as the caller gave it: predict.py's flag (--model-dir) or predict_files' keyword (model_dir=)."""
    flag = {'checkpoints': 'checkpoint'}.get(name, name).replace('_', '-')
    return f'--{flag}' if opts.flags else f'{name}='


def folder(path):
    """A folder in a message; one that does not exist says so, and where a relative path was looked for."""
    if os.path.isdir(path):
        return path
    return f'{path} (no such folder{"" if os.path.isabs(path) else " in " + os.getcwd()})'


def given_models(opts):
    """--checkpoint FILE...: name -> (path, spec), as their JSON says; two that fill one column are refused."""
    found = {}
    for path in map(str, opts.checkpoints):
        if not os.path.isfile(path):
            raise UserError(f'{path}: checkpoint not found')
        spec = read_spec(path)
        require_task(spec, path, SENTENCE_TASKS, 'predict.py', hint='' if TASKS[spec.task].sentence else
                     'a ranker has no sentence value: rank its chunks with retrieval.py')
        if opts.chunks and not TASKS[spec.task].curve:
            raise UserError(f'{path}: --chunks-out needs seq2seq checkpoints (task chunk), this one is {spec.task!r}')
        header_of({**found, path: (path, spec)})  # names both files when a column is filled twice
        found[spec.emo] = (path, spec)
    return found


def header_of(found):
    """The CSV header of these checkpoints: file, Act, Val, Dom, the other columns they fill (in checkpoint order),
    start, end, voiced. A column two checkpoints would fill is a UserError naming both."""
    owner = {}
    for path, spec in found.values():
        for col in objective_of(spec).predict_columns():
            if col in owner:
                raise UserError(f'{path}: a second {col} checkpoint (after {owner[col]}): give one checkpoint per column')
            owner[col] = path
    return ['file', *CSV_ORDER, *[c for c in owner if c not in CSV_ORDER], 'start', 'end', 'voiced']


def load_norm(opts, found):
    """norm_dir, else the folder named in a checkpoint's JSON (training writes it), else ./NormTerm, else the
    per-user folder's (home.norm_dir_or_home). Audio networks: the label terms of each one's JSON (name -> terms)."""
    audio = {name: spec.reads_audio for name, (_, spec) in found.items()}
    if any(audio.values()):
        if not all(audio.values()):
            raise UserError(f'{next(p for n, (p, _) in found.items() if audio[n])}: an audio network (its backbone '
                            'inside) among checkpoints that read features: give checkpoints of one kind')
        return {name: LabelTerms.from_spec(spec, path) for name, (path, spec) in found.items()}
    named = [spec.norm_dir for _, spec in found.values() if spec.norm_dir]
    norm_dir = opts.norm_dir or next((d for d in named if os.path.isdir(d)), None) or norm_dir_or_home()
    if not os.path.isdir(norm_dir):
        raise UserError(f'{folder(norm_dir)}: NormTerm folder not found: {INSTALL_HINT} (with their NormTerm), or '
                        f'pass {option(opts, "norm_dir")} DIR')
    norm = NormTerms.load(norm_dir)
    for path, spec in found.values():
        check_norm(spec, norm, norm_dir, path, opts.force)
    return {name: norm for name in found}


@dataclass
class Models:
    nets: dict      # name -> (network, spec, objective)
    norms: dict     # name -> its z-norm terms (NormTerms; an audio network's LabelTerms)
    device: object
    header: list    # the CSV's columns (header_of)
    frontend: FrontEnd = FRONTENDS['is13']  # audio -> the features the checkpoints were trained on


def load_frontend(opts, found, device):
    """The front end of the checkpoints' features (their JSON's record; all must share one): IS13, or the
    self-supervised model, loaded from --frontend or where the record says, refused when its sha256 differ."""
    if any(spec.reads_audio for _, spec in found.values()):  # the waveform itself (load_norm: all of them)
        if opts.frontend not in (None, *FRONTENDS):
            for path, spec in found.values():
                check_origin(spec.frontend, opts.frontend, path)
        elif opts.frontend is not None:
            raise UserError(f'--frontend {opts.frontend}: the checkpoints are audio networks, their model inside')
        return WAVEFORM
    records = {}
    for path, spec in found.values():
        records.setdefault(json.dumps(identity(spec.frontend), sort_keys=True), (path, spec.frontend))
    (path, rec), *others = records.values()
    if others:
        raise UserError(f'{others[0][0]}: trained on features of {describe(others[0][1])}, but {path} on those of '
                        f'{describe(rec)}: give checkpoints of one front end')
    if rec is None or opts.frontend in FRONTENDS:
        if rec is not None or opts.frontend not in (None, *FRONTENDS):
            raise UserError(f'{path}: trained on features of {describe(rec)}, not of --frontend {opts.frontend}')
        return FRONTENDS[opts.frontend or 'is13']
    name = opts.frontend or (rec['folder'] if os.path.isdir(rec.get('folder', '')) else rec['frontend'])
    try:
        front = SSLFrontEnd(name, rec['layer'], rec['normalize'], device)
    except UserError as e:
        raise UserError(f'{e} (the front end of {path}; pass --frontend NAME_OR_PATH where it is now)')
    if identity(front.record) != identity(rec):
        raise UserError(f'{name}: another front end (weights sha256 {front.record["weights_sha256"][:12]}, config '
                        f'{front.record["config_sha256"][:12]}) than {path} was trained on ({describe(rec)}, config '
                        f'{rec["config_sha256"][:12]})')
    return FrontEnd(front.features, None, front.hop, rec)


def load_models(opts):
    """The checkpoints on the device, each with its objective, and their z-norm terms."""
    found = find_models(opts)
    norms = load_norm(opts, found)
    # exported models alone run on onnxruntime's CPU threads: no torch is imported
    device = 'cpu' if all(is_onnx(path) for path, _ in found.values()) else select_device(opts.device)
    nets = {name: (load_net(path, spec, device, opts.cpu_streams), spec, objective_of(spec))
            for name, (path, spec) in found.items()}
    return Models(nets, norms, device, header_of(found), load_frontend(opts, found, device))


def load_net(path, spec, device, cpu_streams=0):
    """A checkpoint on the device with its CPU streams, or an exported model (X.onnx) in onnxruntime."""
    if is_onnx(path):
        return load_model(path, spec)
    from .streams import use_cpu_streams
    return use_cpu_streams(load_model(path, spec, device), device, cpu_streams)


def load_input(path, keep_audio=False, frontend='is13'):
    """-> raw features (T, F) float64 without the time column, and the 16 kHz samples (N,) if asked for."""
    front = FRONTENDS[frontend] if isinstance(frontend, str) else frontend
    if path.lower().endswith('.mat'):  # features of another front end (its folder's frontend.json) are refused
        if front.reads_audio:
            raise UserError(f'{path}: the checkpoints are audio networks (their model inside): give audio files')
        have = read_record(os.path.dirname(path) or '.')
        if identity(have) != identity(front.record):
            raise UserError(f'{path}: features of {describe(have)}, but the checkpoints were trained on those of '
                            f'{describe(front.record)}')
        return load_features(path), None
    x = lld.load_audio(path)
    try:
        feats = front.features(x)
    except ValueError as e:
        raise UserError(f'{path}: {e}')
    return feats, (x if keep_audio else None)


def window_bounds(T, max_frames):
    """Frames [start, end) of consecutive equal windows of at most max_frames covering T frames: (k, 2).
    Equal lengths avoid a last window of a few frames, which the model would score from padding."""
    if max_frames <= 0 or T <= max_frames:
        return np.array([[0, T]])
    k = -(-T // max_frames)  # ceil
    edges = np.round(np.linspace(0, T, k + 1)).astype(int)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def voiced_share(raw, bounds, column):
    """Share of each window's frames whose voicing probability is over VOICING_MIN: (k,), or None without one."""
    if column is None or raw.shape[1] <= column:
        return None
    cum = np.concatenate([[0], np.cumsum(raw[:, column] > VOICING_MIN)])  # (T+1,) voiced frames so far (NaN: no)
    return (cum[bounds[:, 1]] - cum[bounds[:, 0]]) / np.maximum(bounds[:, 1] - bounds[:, 0], 1)


def window_chunk_spans(bounds, spec):
    """Seconds [start, end) of every chunk of every window: (k, C', 2). An audio network's windows are in samples,
    its chunks in its backbone's frames."""
    if spec.reads_audio:
        hop = hop_of(spec.frontend)
        return np.array([chunk_spans(spec.frames_of(e - s), spec.chunk_frames, spec.chunks, spec.scale) * hop
                         + s * spec.input_hop for s, e in bounds], dtype=np.float64)
    return np.array([chunk_spans(e - s, spec.chunk_frames, spec.chunks, spec.scale) + s for s, e in bounds],
                    dtype=np.float64) * hop_of(spec.frontend)


# ----------------------------------------------------------------------------------
# scoring

def cut(raw, wave, opts, front):
    """A recording -> its rows' frames [start, end) (k, 2), their speech share (k,) or None, and the stretches
    without speech (g, 2) in seconds or None. Audio: the voice-activity detector gives the speech share, and cuts
    audio longer than opts.window into speech segments (segments.py); otherwise (.mat, segments='fixed') equal
    windows, and the pitch tracker's voiced share."""
    T, max_frames = len(raw), int(opts.window / front.hop + 1e-9)  # 11 s -> 687 frames (550 at 0.02 s)
    if wave is None or opts.segments == 'fixed':
        bounds = window_bounds(T, max_frames)
        return bounds, voiced_share(raw, bounds, front.voicing), None
    from . import segments
    if max_frames <= 0 or T <= max_frames:  # one row, as with fixed windows
        mask = segments.speech_frames(segments.speech_probs(wave))
        whole = np.array([[0.0, T * front.hop]])
        return np.array([[0, T]]), segments.speech_share(mask, whole), np.zeros((0, 2))
    seg = segments.find_segments(wave, max_len=opts.window)
    bounds = np.clip(np.round(seg.spans / front.hop).astype(int), 0, T)  # (k, 2) frames
    keep = bounds[:, 1] > bounds[:, 0]
    return bounds[keep], seg.speech[keep], segments.gaps_of(bounds[keep] * front.hop, len(wave) / SAMPLE_RATE)


def load_group(paths, opts, norm, failures, keep_audio=False, front=FRONTENDS['is13']):
    """Input files -> items: path, z-normalised features (T, F), waveform (for plots), rows' frames (k, 2), their
    speech share (k,), the stretches without speech (seconds), float32 features, the seconds per frame and the
    recording's. An unreadable file raises, or with skip_errors is named on stderr and added to `failures`."""
    items = []
    for path in paths:
        try:
            raw, wave = load_input(path, keep_audio or opts.segments == 'vad', front)
        except UserError as e:
            if not opts.skip_errors:
                raise
            print(f'error: {e}', file=sys.stderr)
            failures.append(path)
            continue
        z = norm.normalize(raw)  # (T, F) float64, as the reference
        bounds, voiced, gaps = cut(raw, wave, opts, front)
        duration = len(z) * front.hop if wave is None else len(wave) / SAMPLE_RATE
        items.append({'path': path, 'z': z, 'wave': wave if keep_audio else None, 'bounds': bounds, 'hop': front.hop,
                      'voiced': voiced, 'gaps': gaps, 'duration': duration, 'audio': wave is not None,
                      'segments': [z[s:e].astype(np.float32) for s, e in bounds]})
    return items


def score_items(items, models):
    """Every window of every item with every model (batched; eval batch norm = one at a time), its outputs made
    results by its objective: item['res'][name] = values (column -> (k,)), weights (k, C'), spec, spans (k, C', 2)
    and, for seq2seq models, chunks (column -> (k, C') values on the 1..7 scale; else None)."""
    segments = [seg for it in items for seg in it['segments']]
    if not segments:  # no speech in any of them
        for it in items:
            it['res'] = {}
        return
    scores = {}
    for name, (net, spec, objective) in models.nets.items():
        raw, weights, values, _ = predict_utterances(net, segments, models.device, batch_size=32, return_chunks=True)
        norm = models.norms[name]
        chunks = None if values is None else {  # seq2seq: one value per chunk, made results like utterance values
            c: v.reshape(values.shape) for c, v in objective.results(values.reshape(-1), norm).items()}
        scores[name] = (objective.results(raw, norm), weights, chunks, spec)
    i = 0
    for it in items:
        k = len(it['bounds'])
        it['res'] = {name: {'values': {c: v[i:i + k] for c, v in res.items()}, 'weights': w[i:i + k], 'spec': spec,
                            'chunks': None if ch is None else {c: v[i:i + k] for c, v in ch.items()},
                            'spans': window_chunk_spans(it['bounds'], spec)}
                     for name, (res, w, ch, spec) in scores.items()}
        i += k


def scored_items(files, opts, models, failures, keep_audio=False):
    """Items of `files`, GROUP at a time, scored; on stderr, a line for each row with little speech or shorter than
    the corpus's shortest turn (also kept in it['warnings']), and one for a recording with stretches without speech."""
    for g in range(0, len(files), GROUP):
        norm = next(iter(models.norms.values()))  # the features' terms (an audio network's leave the waveform as it is)
        items = load_group(files[g:g + GROUP], opts, norm, failures, keep_audio, models.frontend)
        if items:
            score_items(items, models)
        for it in items:
            it['warnings'] = voicing_warnings(it) + short_warnings(it)
            for line in it['warnings'] + gaps_line(it):
                print(line, file=sys.stderr)
            yield it


def low_voiced(it):
    """(k,) bool: the windows with too little voiced speech for their values to mean anything."""
    v = it['voiced']
    return np.zeros(len(it['bounds']), bool) if v is None else v < VOICED_MIN


def voicing_warnings(it):
    """One line per window with little voiced speech."""
    lines = []
    for j in np.flatnonzero(low_voiced(it)):
        s, e = it['bounds'][j] * it['hop']
        lines.append(f'warning: {it["path"]} {s:.3f}-{e:.3f} s: {it["voiced"][j]:.0%} voiced frames (under '
                     f'{VOICED_MIN:.0%}): little voiced speech: the values are not meaningful')
    return lines


def short_warnings(it):
    """One line per row of audio shorter than the corpus's shortest turn (.mat inputs are taken as the corpus's)."""
    lines = []
    for s, e in it['bounds'] * it['hop'] if it['audio'] else []:
        if e - s < MIN_SEGMENT:
            lines.append(f'warning: {it["path"]} {s:.3f}-{e:.3f} s: {e - s:.2f} s, shorter than the corpus\'s shortest '
                         f'turn ({MIN_SEGMENT} s): the values are less reliable')
    return lines


def gaps_line(it):
    """The log line naming a recording's stretches without speech (no row), or none."""
    gaps = it['gaps']
    if gaps is None or not len(gaps):
        return []
    where = ', '.join(f'{s:.2f}-{e:.2f}' for s, e in gaps[:6]) + (' ...' if len(gaps) > 6 else '')
    return [f'{it["path"]}: {len(it["bounds"])} speech segment(s); no speech, no row: {len(gaps)} stretch(es), '
            f'{float((gaps[:, 1] - gaps[:, 0]).sum()):.1f} s ({where} s)']


def segment_rows(it):
    """--segments-out rows of one item: its rows' spans (row 1) and its stretches without speech (row 0), in time
    order, with their speech share."""
    v = it['voiced']
    rows = [(s * it['hop'], e * it['hop'], '' if v is None else f'{v[j]:.3f}', 1) for j, (s, e) in enumerate(it['bounds'])]
    rows += [(s, e, '', 0) for s, e in (it['gaps'] if it['gaps'] is not None else [])]
    return [[it['path'], f'{s:.3f}', f'{e:.3f}', sp, str(r)] for s, e, sp, r in sorted(rows)]


def cell(v):
    """A result as the CSV writes it: numbers to 6 decimals, class letters as they are."""
    return v if isinstance(v, str) else f'{v:.6f}'


def item_rows(it, header=HEADER):
    """The CSV rows of one item (one per window; `header` from header_of) and its chunk rows (seq2seq models: one
    per chunk)."""
    voiced = it['voiced']
    values = {c: v for r in it['res'].values() for c, v in r['values'].items()}  # column -> (k,)
    rows = [[it['path']] + [cell(values[c][j]) if c in values else '' for c in header[1:-3]]
            + [f'{s * it["hop"]:.3f}', f'{e * it["hop"]:.3f}', '' if voiced is None else f'{voiced[j]:.3f}']
            for j, (s, e) in enumerate(it['bounds'])]
    curves = {c: (r['spans'], v) for r in it['res'].values() if r['chunks'] is not None for c, v in r['chunks'].items()}
    chunk_rows = [[it['path'], emo, c, f'{a:.3f}', f'{b:.3f}', f'{v:.6f}']
                  for emo in CSV_ORDER if emo in curves
                  for c, ((a, b), v) in enumerate(zip(curves[emo][0].reshape(-1, 2), curves[emo][1].reshape(-1)))]
    return rows, chunk_rows
