"""The demo corpus of synthesized speech in the MSP-Podcast layout: its plan, synthesis, build and `use_demo`,
which resolves every script's --demo. make_demo_corpus.py is its command line; the rule is written out there.
"""
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import xml.sax.saxutils
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .files import FileLock, atomic_write_bytes, write_json
from .utils import SAMPLE_RATE, UserError

DEFAULT_SIZE = 360
MIN_DUR, MAX_DUR = 2.75, 11.0
SINGLE_FRACTION = 0.22  # share of utterances whose emotion sits in one sentence only
BUILD_VERSION = 3  # bump when the rule changes: old corpora are rebuilt, or migrated (MIGRATIONS) when only labels change
MIN_RATERS, MAX_RATERS = 3, 7  # simulated raters per utterance (labels_detailed.json)
RATER_SD = 0.9  # spread of a rater's rating around the consensus label, before rounding to 1..7
RATER_STREAM = 18  # the raters' random stream: SeedSequence([seed, 18]), apart from the plan's default_rng(seed)

# (espeak-ng voice, gender, split): whole speakers per split, both genders in each split
SPEAKERS = [
    ('en-us+m1', 'Male', 'Train'), ('en-us+f1', 'Female', 'Train'), ('en-gb+m2', 'Male', 'Train'),
    ('en-gb+f2', 'Female', 'Train'), ('en-gb-x-rp+m3', 'Male', 'Train'), ('en-gb-x-rp+f3', 'Female', 'Train'),
    ('en-gb-scotland+m4', 'Male', 'Train'), ('en-gb-scotland+f4', 'Female', 'Train'),
    ('en-029+m5', 'Male', 'Train'), ('en-029+f5', 'Female', 'Train'), ('en-us-nyc+m6', 'Male', 'Train'),
    ('en-gb-x-gbclan+f1', 'Female', 'Train'), ('en-gb-x-gbcwmd+m7', 'Male', 'Train'), ('en+f4', 'Female', 'Train'),
    ('en+m3', 'Male', 'Validation'), ('en-us+f3', 'Female', 'Validation'), ('en-gb-x-gbclan+m2', 'Male', 'Validation'),
    ('en-gb+m5', 'Male', 'Test'), ('en-us-nyc+f2', 'Female', 'Test'), ('en-029+m1', 'Male', 'Test'),
]
SPLIT_SHARE = {'Train': 0.70, 'Validation': 0.15, 'Test': 0.15}

# the wordings, one sentence a line, by polarity: short sentences, so that even slow speech fits 11 s
POSITIVE = """\
I am so glad you could make it to the party.
This is the best news I have heard all year.
We won the match and everyone was cheering.
Thank you, that was a wonderful surprise.
The garden looks beautiful in the spring sunshine.
She finally got the job she always wanted.
Our trip to the coast was absolutely lovely.
I really love the way you told that story.
The kids laughed all the way home.
What a great idea, let us do it together.
The new bakery down the road is fantastic.
He smiled and said it was a perfect day.
"""
NEUTRAL = """\
The meeting starts at ten in the morning.
Please put the boxes next to the door.
The train to the city leaves every hour.
I will send you the report on Tuesday.
The library is on the second floor.
We need to buy milk, bread and some rice.
The road was closed for repairs last week.
He moved to a smaller flat in October.
The numbers are listed in the second table.
Turn left at the corner and walk straight on.
The shop opens again after the holidays.
They talked about the plans for next year.
"""
NEGATIVE = """\
I cannot believe you lost the keys again.
The whole weekend was a complete disaster.
Nobody listened to a single word I said.
My phone broke and I missed the interview.
It is too late now, everything is ruined.
I am tired of waiting for this stupid bus.
The food was cold and the service was awful.
He left without saying goodbye to anyone.
We lost all our savings in that deal.
This is the worst day I have had in years.
The rain ruined the whole wedding.
Stop shouting, I have had enough of this.
"""
SENTENCES = [(polarity, text) for polarity, block in ((1, POSITIVE), (0, NEUTRAL), (-1, NEGATIVE))
             for text in block.splitlines()]


def demo_dir():
    """Where the scripts' --demo flags keep the demo corpus: $DEMO_DIR or ./demo_data of the current folder (in the
    checkout: git-ignored)."""
    return os.environ.get('DEMO_DIR') or os.path.abspath('demo_data')


def corpus_paths(out_dir):
    return {'audio_dir': os.path.join(out_dir, 'Audios'), 'feat_dir': os.path.join(out_dir, 'feat_mat'),
            'label_csv': os.path.join(out_dir, 'labels_concensus.csv')}


def detailed_path(out_dir):
    """The simulated raters' labels, in MSP-Podcast v1.6's labels_detailed.json layout."""
    return os.path.join(out_dir, 'labels_detailed.json')


# ----------------------------------------------------------------------------------
# the plan: every random choice is made here, from the seed, before any synthesis

# the low-arousal, positive-valence quadrant: "relaxed", a letter outside MSP-Podcast's (A S H U F D C N O X),
# whose O ("other") and X ("no agreement") are not classes to learn; version 1 called it O
RELAXED = 'R'


def emo_class(a, v):
    if abs(a) < 0.3 and abs(v) < 0.3:
        return 'N'
    if a >= 0:
        return 'H' if v >= 0 else 'A'
    return 'S' if v < 0 else RELAXED


def plan_corpus(size, seed):
    """One dict per utterance: speaker, split, sentences with their prosody, labels (see the module docstring)."""
    rng = np.random.default_rng(seed)
    by_pol = {q: [i for i, (p, _) in enumerate(SENTENCES) if p == q] for q in (-1, 0, 1)}
    # speaker traits: base pitch and a speaking-rate offset, so speakers differ beyond the variant
    traits = {v: (int(rng.integers(38, 63)), int(rng.integers(-12, 13))) for v, _, _ in SPEAKERS}
    # utterance counts per split (at least 2 each, so every split has a CCC)
    counts = {s: max(2, int(round(size * f))) for s, f in SPLIT_SHARE.items()}
    counts['Train'] = max(2, size - counts['Validation'] - counts['Test'])
    utts = []
    for split, n in counts.items():
        voices = [i for i, (_, _, s) in enumerate(SPEAKERS) if s == split]
        single = set(rng.choice(n, size=int(round(n * SINGLE_FRACTION)), replace=False).tolist()) if n >= 3 else set()
        for k in range(n):
            utts.append({'split': split, 'speaker': int(rng.choice(voices)), 'single': k in single})
    order = rng.permutation(len(utts))  # interleave the splits in the file numbering
    plans = []
    for num, j in enumerate(order, 1):
        u = utts[j]
        voice, gender, split = SPEAKERS[u['speaker']]
        base_pitch, rate_off = traits[voice]
        a, v, w = rng.uniform(-1, 1, size=3)
        if u['single']:
            a = np.sign(a) * (0.35 + 0.65 * abs(a))  # the emotional sentence should stand out from neutral
        d = float(np.clip(0.6 * a + 0.6 * w, -1, 1))
        # what is said: all sentences from one polarity class (-1, 0, +1); in a single-emotional-sentence
        # utterance only the emotional sentence, the others are neutral in content too.
        # 5 candidates; synthesize() keeps them in order until the utterance reaches its target length
        pol = int(rng.integers(-1, 2))
        emo_idx = int(rng.integers(3)) if u['single'] else -1
        if u['single']:
            picks = [int(i) for i in rng.choice(by_pol[0], size=5, replace=False)]
            picks[emo_idx] = int(rng.choice([i for i in by_pol[pol] if i not in picks]))
        else:
            picks = [int(i) for i in rng.choice(by_pol[pol], size=5, replace=False)]
        noise = rng.normal(0, 0.25, size=3)
        labels = {'EmoAct': 4 + 2.5 * a + noise[0], 'EmoVal': 4 + 1.8 * v + 0.6 * pol + noise[1],
                  'EmoDom': 4 + 2.5 * d + noise[2]}
        labels = {k: round(float(np.clip(x, 1, 7)), 2) for k, x in labels.items()}
        emo = prosody(a, v, d, base_pitch, rate_off)
        neutral = prosody(0.0, 0.0, 0.0, base_pitch, rate_off)
        sents = [(SENTENCES[i][1], emo if (not u['single'] or s == emo_idx) else neutral) for s, i in enumerate(picks)]
        plans.append({'FileName': f'demo_{num:04d}.wav', 'voice': voice, 'SpkrID': u['speaker'] + 1, 'Gender': gender,
                      'Split_Set': split, 'EmoClass': emo_class(a, v), **labels, 'sentences': sents,
                      'emo_idx': emo_idx, 'target': float(rng.uniform(MIN_DUR, MAX_DUR)),
                      'pauses': rng.uniform(0.2, 0.5, size=len(picks)).tolist(), 'dither_seed': int(rng.integers(2**31))})
    return plans


def prosody(a, v, d, base_pitch, rate_off):
    return {'speed': int(round(170 + 55 * a + rate_off)), 'pitch': int(np.clip(round(base_pitch + 14 * a - 8 * d), 0, 99)),
            'amplitude': int(np.clip(round(100 + 35 * a + 30 * d), 0, 200)), 'range': int(round(100 + 80 * v))}


# ----------------------------------------------------------------------------------
# synthesis

def espeak(text, voice, p):
    """One sentence -> (int16 samples, sample rate) from espeak-ng; pitch range through SSML."""
    ssml = f'<speak><prosody range="{p["range"]}%">{xml.sax.saxutils.escape(text)}</prosody></speak>'
    cmd = ['espeak-ng', '-m', '--stdout', '-v', voice, '-s', str(p['speed']), '-p', str(p['pitch']), '-a', str(p['amplitude'])]
    try:
        r = subprocess.run(cmd, input=ssml.encode(), capture_output=True, timeout=60)
    except FileNotFoundError:
        raise UserError('espeak-ng not found: apt-get install espeak-ng')
    if r.returncode != 0 or len(r.stdout) < 100:
        raise UserError(f'espeak-ng failed for voice {voice}: {r.stderr.decode(errors="replace").strip()[:200]}')
    return read_stream_wav(r.stdout)


def read_stream_wav(data):
    """espeak-ng's --stdout WAV has a 'streaming' data length (0x7fffffff): read the samples up to the end."""
    if data[:4] != b'RIFF' or data[8:12] != b'WAVE':
        raise UserError('espeak-ng wrote something that is not a WAV stream')
    pos, sr = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], 'little')
        if cid == b'fmt ':
            sr = int.from_bytes(data[pos + 12:pos + 16], 'little')
        if cid == b'data':
            body = data[pos + 8:]
            return np.frombuffer(body[:len(body) // 2 * 2], dtype='<i2'), sr
        pos += 8 + size
    raise UserError('espeak-ng wrote a WAV stream without samples')


def trim(x, sr, margin=0.03):
    """Cut espeak's leading/trailing silence, keeping a short margin, so pauses are ours to set."""
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 300)
    if len(loud) == 0:
        return x
    m = int(margin * sr)
    return x[max(0, loud[0] - m):loud[-1] + m + 1]


def synthesize(plan):
    """Synthesize one utterance: sentences joined by pauses, cut to <= 11 s, resampled to 16 kHz.
    Returns (samples int16, (EmoStart, EmoEnd) in seconds or None)."""
    parts = [trim(*espeak(text, plan['voice'], p)) for text, p in plan['sentences']]
    sr = 22050  # espeak-ng's native rate (checked below)
    gaps = [int(g * sr) for g in plan['pauses']]
    # keep sentences while under the target length; drop neutral ones to stay within 11 s
    keep = [0]
    for i in range(1, len(parts)):
        cur = sum(len(parts[j]) + gaps[j] for j in keep)
        # single-sentence-emotion utterances get at least one neutral sentence beside the emotional one
        want = cur < plan['target'] * sr or (plan['emo_idx'] >= 0 and len(keep) < 2)
        if i == plan['emo_idx'] or (want and cur + len(parts[i]) <= MAX_DUR * sr):
            keep.append(i)
    while sum(len(parts[j]) for j in keep) + sum(gaps[j] for j in keep[:-1]) > MAX_DUR * sr and len(keep) > 1:
        drop = next(j for j in reversed(keep) if j != plan['emo_idx'])
        keep.remove(drop)
    pieces, span, t = [], None, 0
    for n, j in enumerate(keep):
        if n:
            pieces.append(np.zeros(gaps[keep[n - 1]], dtype=np.int16))
            t += gaps[keep[n - 1]]
        if j == plan['emo_idx']:
            span = (t / sr, (t + len(parts[j])) / sr)
        pieces.append(parts[j])
        t += len(parts[j])
    x = np.concatenate(pieces).astype(np.float64)
    import scipy.signal  # the builder's own: --demo on a built corpus never pays for it
    x = scipy.signal.resample_poly(x, 320, 441)  # 22050 -> 16000 Hz
    x = x[:int(MAX_DUR * SAMPLE_RATE)]
    if len(x) < SAMPLE_RATE:  # never shorter than one chunk (1 s): pad with silence
        x = np.concatenate([x, np.zeros(SAMPLE_RATE - len(x))])
    # a faint dither: digital silence gives degenerate (log of zero) frames in the features
    x += np.random.default_rng(plan['dither_seed']).normal(0, 2.0, size=len(x))
    if span is not None:
        span = (round(span[0], 3), round(min(span[1], len(x) / SAMPLE_RATE), 3))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16), span


def check_espeak():
    if shutil.which('espeak-ng') is None:
        raise UserError('espeak-ng not found: apt-get install espeak-ng')
    _, sr = espeak('Test.', 'en', {'speed': 170, 'pitch': 50, 'amplitude': 100, 'range': 100})
    if sr != 22050:
        raise UserError(f'espeak-ng writes {sr} Hz, expected 22050 Hz (this build needs a 22.05 kHz espeak-ng)')


# ----------------------------------------------------------------------------------
# the build

def read_marker(out_dir):
    try:
        with open(os.path.join(out_dir, '.complete')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def relabel_relaxed(label_csv):
    """Version 1 -> 2: EmoClass O (the quadrant a < 0, v >= 0) becomes R; every other byte of the CSV stays."""
    with open(label_csv, newline='') as f:
        rows = list(csv.reader(f))
    col = rows[0].index('EmoClass')
    for r in rows[1:]:
        r[col] = RELAXED if r[col] == 'O' else r[col]
    buf = io.StringIO()
    csv.writer(buf, lineterminator='\n').writerows(rows)  # as pandas wrote it: \n, minimal quoting
    atomic_write_bytes(label_csv, buf.getvalue().encode())


def simulate_raters(label_csv, seed):
    """{file: {rater: {EmoAct, EmoVal, EmoDom, EmoClass}}} (the v1.6 labels_detailed.json layout) for the
    consensus labels of `label_csv`, in its row order: per utterance MIN_RATERS..MAX_RATERS raters WORKER00001..,
    each attribute's rating round(label + N(0, RATER_SD)) clipped to 1..7 (integers, so ties occur), the class the
    consensus one. Its own stream, SeedSequence([seed, RATER_STREAM]): the plan's draws stay as they are."""
    import pandas as pd
    df = pd.read_csv(label_csv)
    rng = np.random.default_rng([int(seed), RATER_STREAM])
    out = {}
    for r in df.itertuples(index=False):
        n = int(rng.integers(MIN_RATERS, MAX_RATERS + 1))
        vals = {a: np.clip(np.round(getattr(r, a) + rng.normal(0, RATER_SD, size=n)), 1, 7) for a in ('EmoAct', 'EmoVal', 'EmoDom')}
        out[r.FileName] = {f'WORKER{k + 1:05d}': {**{a: float(v[k]) for a, v in vals.items()}, 'EmoClass': r.EmoClass}
                           for k in range(n)}
    return out


def write_raters(out_dir, seed):
    """DIR/labels_detailed.json from the corpus's labels CSV (nothing else is read or written)."""
    raters = simulate_raters(corpus_paths(out_dir)['label_csv'], seed)
    atomic_write_bytes(detailed_path(out_dir), (json.dumps(raters, indent=2) + '\n').encode())


# version -> the labels rewrite to the next one (the audio is the same): f(out_dir, marker)
MIGRATIONS = {1: lambda out_dir, done: relabel_relaxed(corpus_paths(out_dir)['label_csv']),
              2: lambda out_dir, done: write_raters(out_dir, done['seed'])}  # 2 -> 3: labels_detailed.json added


def migrate(out_dir, done):
    """A complete corpus of an older version whose audio this rule still makes: its labels rewritten or added step
    by step and the marker's version raised, nothing synthesised again. Returns the marker."""
    while done.get('version') in MIGRATIONS:
        MIGRATIONS[done['version']](out_dir, done)  # idempotent: a crash before the marker is fine
        done = {**done, 'version': done['version'] + 1}
        write_marker(out_dir, done)
    return done


def build_demo_corpus(out_dir, size=DEFAULT_SIZE, seed=0, workers=None, features=True, force=False, progress=True):
    """Build the corpus in `out_dir` unless a complete one with these parameters is there already.
    Returns {'audio_dir', 'feat_dir', 'label_csv'}."""
    import pandas as pd
    from tqdm import tqdm
    if size < 6:
        raise UserError(f'--size {size}: need at least 6 utterances (2 per split)')
    workers = workers or os.cpu_count() or 1
    params = {'size': int(size), 'seed': int(seed), 'version': BUILD_VERSION}
    paths = corpus_paths(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f'{out_dir}: cannot create the corpus folder ({e.strerror})')
    with FileLock(os.path.join(out_dir, '.lock')):  # one builder per folder: two scripts' --demo may start together
        done = read_marker(out_dir)
        if done and not force:
            done = migrate(out_dir, done)
            same = all(done.get(k) == v for k, v in params.items())
            if not same:
                raise UserError(f'{out_dir} holds a demo corpus built with {done}; pass --force to rebuild '
                                f'it with size {size}, seed {seed}, or choose another --out')
            if done.get('features') or not features:
                return paths
            extract_demo_features(paths, workers, progress)  # same corpus, features still missing
            write_marker(out_dir, {**done, 'features': True})
            return paths
        check_espeak()
        t0 = time.time()
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, '.complete'))
        for d in (paths['audio_dir'], paths['feat_dir']):  # start clean: no stale files from another size
            shutil.rmtree(d, ignore_errors=True)
        os.makedirs(paths['audio_dir'])
        plans = plan_corpus(size, seed)
        from scipy.io import wavfile

        def one(plan):
            x, span = synthesize(plan)
            path = os.path.join(paths['audio_dir'], plan['FileName'])
            buf = io.BytesIO()
            wavfile.write(buf, SAMPLE_RATE, x)
            atomic_write_bytes(path, buf.getvalue())
            return span, len(x) / SAMPLE_RATE

        with ThreadPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(one, plans), total=len(plans), desc='synthesis', disable=not progress))
        rows = []
        for plan, (span, dur) in zip(plans, results):
            rows.append({k: plan[k] for k in ('FileName', 'EmoAct', 'EmoVal', 'EmoDom', 'EmoClass', 'SpkrID', 'Gender', 'Split_Set')})
            rows[-1].update({'EmoStart': span[0] if span else None, 'EmoEnd': span[1] if span else None, 'Duration': round(dur, 3)})
        df = pd.DataFrame(rows)
        atomic_write_bytes(paths['label_csv'], df.to_csv(index=False).encode())
        write_raters(out_dir, seed)
        t_synth = time.time() - t0
        if features:
            extract_demo_features(paths, workers, progress)
        write_marker(out_dir, {**params, 'features': bool(features), 'synthesis_s': round(t_synth, 1),
                               'build_s': round(time.time() - t0, 1)})
    return paths


def extract_demo_features(paths, workers, progress=True):
    try:
        from .features.lld import extract_folder
    except ImportError as e:
        raise UserError(f'feature extraction is not available ({e}); build with --no-features')
    os.makedirs(paths['feat_dir'], exist_ok=True)
    if progress:
        print(f'extracting features into {paths["feat_dir"]} ...', file=sys.stderr)
    failures = extract_folder(paths['audio_dir'], paths['feat_dir'], workers=workers, verbose=progress)
    if failures:
        path, err = failures[0]
        raise UserError(f'feature extraction failed for {len(failures)} files (first: {path}: {err})')


def write_marker(out_dir, info):
    write_json(os.path.join(out_dir, '.complete'), info)


def ensure_demo_corpus(progress=True):
    """The demo corpus of the scripts' --demo flags: any complete one in demo_dir(), else built with the defaults."""
    out_dir = demo_dir()
    done = read_marker(out_dir)
    if done and done.get('features') and done.get('version') == BUILD_VERSION:
        return corpus_paths(out_dir)
    if done and (done.get('version') == BUILD_VERSION or done.get('version') in MIGRATIONS):
        # built without features (they are added), or with older labels (rewritten, the audio kept)
        return build_demo_corpus(out_dir, done['size'], done['seed'], progress=progress)
    print(f'building the demo corpus in {out_dir} (once; set DEMO_DIR to put it elsewhere) ...', file=sys.stderr)
    return build_demo_corpus(out_dir, force=True, progress=progress)


def use_demo(args):
    """--demo: the demo corpus (built on first use) and its own NormTerm/ and Models/, so demo terms never mix
    with a real corpus's. Sets the corpus paths of a script's args; returns the corpus paths."""
    paths = ensure_demo_corpus()
    args.feat_dir, args.label_csv = paths['feat_dir'], paths['label_csv']
    args.norm_dir = os.path.join(demo_dir(), 'NormTerm')
    if getattr(args, 'store', None):
        args.store = os.path.join(demo_dir(), 'feat_store')
    for name in ('out_dir', 'model_dir'):
        if hasattr(args, name):
            setattr(args, name, os.path.join(demo_dir(), 'Models'))
    return paths
