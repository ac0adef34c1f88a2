"""Build a small demo corpus of synthesized speech in the MSP-Podcast layout.

    python make_demo_corpus.py --out demo_data            # ~360 utterances, well under 2 minutes
    python make_demo_corpus.py --out /tmp/demo --size 24 --seed 3
    python make_demo_corpus.py --attention-report -atten GatedVec -emo Act -iter 150 -batch 32
                                                          # chunk weights on the emotional sentence (see the end)

It writes
    DIR/Audios/demo_0001.wav ...   16 kHz mono 16-bit speech from espeak-ng
    DIR/labels_concensus.csv       FileName, EmoAct, EmoVal, EmoDom, EmoClass, SpkrID, Gender,
                                   Split_Set (Train/Validation/Test), EmoStart, EmoEnd, Duration (s)
    DIR/feat_mat/demo_0001.mat ... Audio_data (T, 131) from feature_extraction.extract_folder
    DIR/.complete                  written last, with the build parameters

No real emotion is acted here: each utterance gets three latent levels, arousal a,
valence v and dominance d, that set espeak-ng's prosody, and the labels are derived
from the same levels. The exact rule (a, v, u drawn uniformly from [-1, 1] per utterance):

    d         = clip(0.6 a + 0.6 u, -1, 1)            dominance goes with arousal, partly
    speed     = 170 + 55 a + speaker offset            words per minute (espeak -s)
    pitch     = speaker base + 14 a - 8 d              espeak -p (0..99); dominant = lower
    amplitude = 100 + 35 a + 30 d                      espeak -a (0..200); loudness
    range     = 100 + 80 v  (%)                        pitch range, SSML <prosody range>
    EmoAct = 4 + 2.5 a             + N(0, 0.25)
    EmoDom = 4 + 2.5 d             + N(0, 0.25)
    EmoVal = 4 + 1.8 v + 0.6 s     + N(0, 0.25)       s = the sentence's polarity (-1, 0, +1)
    all clipped to [1, 7] and rounded to 0.01.

So arousal is audible in rate, pitch and loudness; dominance in loudness and (low) pitch;
valence mostly in the liveliness of the intonation and partly in what is said, which
acoustic features cannot see (valence is the hardest attribute, as in real corpora).
Neutral prosody is a = v = d = 0 (labels 4). EmoClass is a coarse name of the quadrant:
N (|a| and |v| < 0.3), H (a >= 0, v >= 0), A (a >= 0, v < 0), S (a < 0, v < 0), O (a < 0, v >= 0).

Speakers are 20 espeak-ng voices (an accent plus a voice variant, each with its own base
pitch and rate offset); whole speakers go to Train (14), Validation (3) or Test (3), so the
splits are speaker-independent, and the utterances are shared out 70/15/15. An utterance is
1-5 sentences of one speaker joined by 0.2-0.5 s pauses, added until a length drawn from
[2.75, 11] s is reached (never over 11 s, never under 1 s). Its sentences all come from one
polarity class s (positive, neutral or negative wording).

About 22% of each split are "single emotional sentence" utterances: at least two sentences,
only one of which (the 1st, 2nd or 3rd) carries the emotional prosody and the wording of
polarity s; the others have neutral prosody and neutral wording. Their labels follow that
one sentence (its |a| is kept >= 0.35 so it stands out), and EmoStart/EmoEnd give its
start and end in seconds (empty for the other utterances). They are there for the
attention analysis: a good chunk-attention head should weight the chunks that overlap it.
`--attention-report` measures that for a trained demo model (DIR/Models, DIR/NormTerm): per split, the
weight mass the head puts on the chunks overlapping [EmoStart, EmoEnd] (weights normalised to sum 1 per
utterance; GatedVec's gates also raw), against uniform weights 1/C', whose mass there is the share of
overlapping chunks (chunk k spans frames [start_k, start_k + m) x 0.016 s, start_k from utils.chunk_starts).
"""
import contextlib
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
import scipy.io.wavfile
import scipy.signal

from utils import ArgParser, UserError, run_cli

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SIZE = 360
SR = 16000
MIN_DUR, MAX_DUR = 2.75, 11.0
SINGLE_FRACTION = 0.22  # share of utterances whose emotion sits in one sentence only
BUILD_VERSION = 1  # bump when the rule above changes, so old corpora are rebuilt

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

# (polarity, sentence): short sentences, so that even slow speech fits 11 s
SENTENCES = [
    (1, 'I am so glad you could make it to the party.'), (1, 'This is the best news I have heard all year.'),
    (1, 'We won the match and everyone was cheering.'), (1, 'Thank you, that was a wonderful surprise.'),
    (1, 'The garden looks beautiful in the spring sunshine.'), (1, 'She finally got the job she always wanted.'),
    (1, 'Our trip to the coast was absolutely lovely.'), (1, 'I really love the way you told that story.'),
    (1, 'The kids laughed all the way home.'), (1, 'What a great idea, let us do it together.'),
    (1, 'The new bakery down the road is fantastic.'), (1, 'He smiled and said it was a perfect day.'),
    (0, 'The meeting starts at ten in the morning.'), (0, 'Please put the boxes next to the door.'),
    (0, 'The train to the city leaves every hour.'), (0, 'I will send you the report on Tuesday.'),
    (0, 'The library is on the second floor.'), (0, 'We need to buy milk, bread and some rice.'),
    (0, 'The road was closed for repairs last week.'), (0, 'He moved to a smaller flat in October.'),
    (0, 'The numbers are listed in the second table.'), (0, 'Turn left at the corner and walk straight on.'),
    (0, 'The shop opens again after the holidays.'), (0, 'They talked about the plans for next year.'),
    (-1, 'I cannot believe you lost the keys again.'), (-1, 'The whole weekend was a complete disaster.'),
    (-1, 'Nobody listened to a single word I said.'), (-1, 'My phone broke and I missed the interview.'),
    (-1, 'It is too late now, everything is ruined.'), (-1, 'I am tired of waiting for this stupid bus.'),
    (-1, 'The food was cold and the service was awful.'), (-1, 'He left without saying goodbye to anyone.'),
    (-1, 'We lost all our savings in that deal.'), (-1, 'This is the worst day I have had in years.'),
    (-1, 'The rain ruined the whole wedding.'), (-1, 'Stop shouting, I have had enough of this.'),
]


def demo_dir():
    """Where the scripts' --demo flags keep the demo corpus: $DEMO_DIR or <repo>/demo_data (git-ignored)."""
    return os.environ.get('DEMO_DIR') or os.path.join(ROOT, 'demo_data')


def corpus_paths(out_dir):
    return {'audio_dir': os.path.join(out_dir, 'Audios'), 'feat_dir': os.path.join(out_dir, 'feat_mat'),
            'label_csv': os.path.join(out_dir, 'labels_concensus.csv')}


# ----------------------------------------------------------------------------------
# the plan: every random choice is made here, from the seed, before any synthesis

def emo_class(a, v):
    if abs(a) < 0.3 and abs(v) < 0.3:
        return 'N'
    if a >= 0:
        return 'H' if v >= 0 else 'A'
    return 'S' if v < 0 else 'O'


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
    x = scipy.signal.resample_poly(x, 320, 441)  # 22050 -> 16000 Hz
    x = x[:int(MAX_DUR * SR)]
    if len(x) < SR:  # never shorter than one chunk (1 s): pad with silence
        x = np.concatenate([x, np.zeros(SR - len(x))])
    # a faint dither: digital silence gives degenerate (log of zero) frames in the features
    x += np.random.default_rng(plan['dither_seed']).normal(0, 2.0, size=len(x))
    if span is not None:
        span = (round(span[0], 3), round(min(span[1], len(x) / SR), 3))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16), span


def check_espeak():
    if shutil.which('espeak-ng') is None:
        raise UserError('espeak-ng not found: apt-get install espeak-ng')
    _, sr = espeak('Test.', 'en', {'speed': 170, 'pitch': 50, 'amplitude': 100, 'range': 100})
    if sr != 22050:
        raise UserError(f'espeak-ng writes {sr} Hz, expected 22050 Hz (this build needs a 22.05 kHz espeak-ng)')


# ----------------------------------------------------------------------------------
# the build

@contextlib.contextmanager
def build_lock(out_dir):
    """One builder at a time per folder (two scripts' --demo may start together)."""
    import fcntl
    with open(os.path.join(out_dir, '.lock'), 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_marker(out_dir):
    try:
        with open(os.path.join(out_dir, '.complete')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


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
    with build_lock(out_dir):
        done = read_marker(out_dir)
        if done and not force:
            same = all(done.get(k) == v for k, v in params.items())
            if not same:
                raise UserError(f'{out_dir} holds a demo corpus built with {done}; pass --force to rebuild '
                                f'it with size {size}, seed {seed}, or choose another --out')
            if done.get('features') or not features:
                return paths
            extract_features(paths, workers, progress)  # same corpus, features still missing
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

        def one(plan):
            x, span = synthesize(plan)
            path = os.path.join(paths['audio_dir'], plan['FileName'])
            buf = io.BytesIO()
            scipy.io.wavfile.write(buf, SR, x)
            with open(path + '.tmp', 'wb') as f:
                f.write(buf.getvalue())
            os.replace(path + '.tmp', path)
            return span, len(x) / SR

        with ThreadPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(one, plans), total=len(plans), desc='synthesis', disable=not progress))
        rows = []
        for plan, (span, dur) in zip(plans, results):
            rows.append({k: plan[k] for k in ('FileName', 'EmoAct', 'EmoVal', 'EmoDom', 'EmoClass', 'SpkrID', 'Gender', 'Split_Set')})
            rows[-1].update({'EmoStart': span[0] if span else None, 'EmoEnd': span[1] if span else None, 'Duration': round(dur, 3)})
        df = pd.DataFrame(rows)
        df.to_csv(paths['label_csv'] + '.tmp', index=False)
        os.replace(paths['label_csv'] + '.tmp', paths['label_csv'])
        t_synth = time.time() - t0
        if features:
            extract_features(paths, workers, progress)
        write_marker(out_dir, {**params, 'features': bool(features), 'synthesis_s': round(t_synth, 1),
                               'build_s': round(time.time() - t0, 1)})
    return paths


def extract_features(paths, workers, progress=True):
    try:
        from feature_extraction import extract_folder
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
    path = os.path.join(out_dir, '.complete')
    with open(path + '.tmp', 'w') as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)


def ensure_demo_corpus(progress=True):
    """The demo corpus of the scripts' --demo flags: any complete one in demo_dir(), else built with the defaults."""
    out_dir = demo_dir()
    done = read_marker(out_dir)
    if done and done.get('features'):
        return corpus_paths(out_dir)
    if done and done.get('version') == BUILD_VERSION:  # built without features: add them
        return build_demo_corpus(out_dir, done['size'], done['seed'], progress=progress)
    print(f'building the demo corpus in {out_dir} (once; set DEMO_DIR to put it elsewhere) ...', file=sys.stderr)
    return build_demo_corpus(out_dir, force=True, progress=progress)


# ----------------------------------------------------------------------------------
# the attention analysis: do the heads weight the chunks of the one emotional sentence?

FRAME_HOP = 0.016  # seconds per feature frame (feature_extraction.HOP; not imported: it needs the audio stack)
SPLIT_ORDER = ('Test', 'Validation', 'Train')


def chunk_overlap(T, start, end, m, C, n):
    """Chunks of an utterance of T frames against the sentence [start, end] in seconds -> (overlaps (C',) bool,
    coverage (C',) the share of each chunk's span inside the sentence). Chunk k covers frames
    [start_k, start_k + m) with start_k from utils.chunk_starts; an utterance shorter than a chunk is padded at
    the front, so all its chunks cover the whole utterance [0, T)."""
    from utils import chunk_starts
    pad = max(m - T, 0)
    lo = chunk_starts(T + pad, m, C, n) - pad
    a, b = np.maximum(lo, 0) * FRAME_HOP, np.minimum(lo + m, T) * FRAME_HOP  # (C',) seconds
    inside = np.clip(np.minimum(b, end) - np.maximum(a, start), 0, None)
    return (a < end) & (b > start), inside / (b - a)


def attention_report(corpus_paths, model_dir, norm_dir, atten, emo, iterations, batch_size, split=None, device='cpu'):
    """Chunk weights of a trained head on the single-emotional-sentence utterances (rows with EmoStart) against
    uniform weights. `corpus_paths` is {'feat_dir', 'label_csv', ...} (build_demo_corpus's return value); the
    checkpoint is the reference's file name for atten/emo/iterations/batch_size in `model_dir`.

    Weights are normalised per utterance to sum 1 (a no-op for RnnAttenVec's softmax and NonAtten's mean;
    GatedVec's sigmoid gates do not sum to 1). Per split (all splits with such rows, or only `split`):
      n, chunks (C'), uniform (1/C')
      overlap_share      mean over utterances of the share of chunks overlapping [EmoStart, EmoEnd]: the weight
                         mass uniform weights put there (the baseline)
      weight_on_overlap  mean over utterances of the normalised weight mass on the overlapping chunks
      lift               weight_on_overlap / overlap_share (1 = no better than uniform)
      diff_se            standard error over utterances of (mass - share)
      above              utterances whose mass on the overlap exceeds their overlap share (by > 1e-6)
      mean_w_overlap, mean_w_other   normalised weight per chunk, pooled over the chunks of all utterances,
                         on overlapping and on other chunks (uniform: both 1/C')
      raw_overlap, raw_other         the same for the head's own weights (GatedVec: the raw gates 0..1)
      coverage_uniform, coverage_weighted   mean over utterances of the share of the chunks' time inside the
                         sentence, averaged uniformly and weighted by the normalised weights (a graded variant)
    """
    import pandas as pd
    import model as M
    from utils import MatFeatures, NormTerms, read_label_table, resolve_split, select_device
    name = M.checkpoint_name(iterations, batch_size, atten, emo)
    ckpt = os.path.join(model_dir, name)
    if not os.path.isfile(ckpt):
        raise UserError(f'{ckpt}: checkpoint not found (train it: python training.py --demo -iter {iterations} '
                        f'-batch {batch_size} -emo {emo} -atten {atten} --seed 0)')
    norm = NormTerms.load(norm_dir)
    cfg = M.read_config(ckpt, atten, norm.feat_dim)
    M.check_norm(cfg, norm, norm_dir, ckpt)
    dev = select_device(device) if isinstance(device, str) else device
    net = M.load_model(ckpt, cfg, dev)
    m, C, n = cfg['chunk_frames'], cfg['chunks'], cfg['scale']

    df = read_label_table(corpus_paths['label_csv'])
    for col in ('EmoStart', 'EmoEnd'):
        if col not in df.columns:
            raise UserError(f'{corpus_paths["label_csv"]}: no {col} column (not a demo corpus label table)')
    rows = df[df['EmoStart'].notna() & df['EmoEnd'].notna()]
    present = list(pd.unique(rows['Split_Set'].astype(str)))
    if split is not None:
        names = [resolve_split(df, split, corpus_paths['label_csv'])]
    else:
        names = [s for s in SPLIT_ORDER if s in present] + sorted(s for s in present if s not in SPLIT_ORDER)
    out = {'atten': atten, 'emo': emo, 'checkpoint': ckpt, 'chunks': C * n, 'uniform': 1.0 / (C * n), 'splits': {}}
    for s in names:
        part = rows[rows['Split_Set'].astype(str) == s]
        if len(part) == 0:
            raise UserError(f'{corpus_paths["label_csv"]}: no single-emotional-sentence rows (EmoStart) in split {s!r}')
        feats = MatFeatures(corpus_paths['feat_dir'], [str(f) for f in part['FileName']], norm)
        lengths = [len(feats[i]) for i in range(len(feats))]  # frames T of each utterance
        _, w_raw, _ = M.predict_utterances(net, feats, cfg, dev, 32, return_weights=True)  # (N, C')
        w_raw = np.asarray(w_raw, dtype=np.float64)
        w = w_raw / w_raw.sum(1, keepdims=True)
        masks, covs = zip(*(chunk_overlap(T, a, b, m, C, n) for T, a, b in
                            zip(lengths, part['EmoStart'].astype(float), part['EmoEnd'].astype(float))))
        ov, cov = np.array(masks), np.array(covs)  # (N, C')
        share, mass = ov.mean(1), (w * ov).sum(1)
        diff = mass - share
        pooled = lambda x, sel: float(x[sel].mean()) if sel.any() else float('nan')  # noqa: E731
        out['splits'][s] = {
            'n': len(part), 'overlap_share': float(share.mean()), 'weight_on_overlap': float(mass.mean()),
            'lift': float(mass.mean() / share.mean()),
            'diff_se': float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float('nan'),
            'above': int((diff > 1e-6).sum()),
            'mean_w_overlap': pooled(w, ov), 'mean_w_other': pooled(w, ~ov),
            'raw_overlap': pooled(w_raw, ov), 'raw_other': pooled(w_raw, ~ov),
            'coverage_uniform': float(cov.mean(1).mean()), 'coverage_weighted': float((w * cov).sum(1).mean())}
    return out


def format_attention_report(r):
    """The report as a small text table."""
    Cp, gated = r['chunks'], r['atten'] == 'GatedVec'
    lines = [f'{r["atten"]} {r["emo"]}: {r["checkpoint"]}',
             f"single-emotional-sentence utterances; C' = {Cp} chunks, uniform weight 1/{Cp} = {r['uniform']:.4f}; "
             'weights normalised to sum 1 per utterance',
             f'{"split":<11}{"utts":>5}{"uniform":>9}{"head":>7}{"diff ± s.e.":>16}{"lift":>7}{"above":>8}'
             f'{"w/chunk ov.":>13}{"w/chunk other":>15}{"coverage u/head":>17}' + (f'{"raw gate ov./other":>20}' if gated else '')]
    for s, v in r['splits'].items():
        d = v['weight_on_overlap'] - v['overlap_share']
        line = (f'{s:<11}{v["n"]:>5}{v["overlap_share"]:>9.3f}{v["weight_on_overlap"]:>7.3f}{d:>+9.3f} ± {v["diff_se"]:.3f}'
                f'{v["lift"]:>7.3f}{v["above"]:>5}/{v["n"]:<2}{v["mean_w_overlap"]:>13.4f}{v["mean_w_other"]:>15.4f}'
                f'{v["coverage_uniform"]:>11.3f}/{v["coverage_weighted"]:.3f}')
        if gated:
            line += f'{v["raw_overlap"]:>14.3f}/{v["raw_other"]:.3f}'
        lines.append(line)
    lines += ["uniform: the weight mass uniform (1/C') weights put on the chunks overlapping [EmoStart, EmoEnd] "
              '(= the share of chunks overlapping); head: the mass the head puts there; lift = head/uniform;',
              'above: utterances where the head puts more there than uniform; w/chunk: mean normalised weight of one '
              "chunk (uniform: 1/C'); coverage: share of chunk time inside the sentence, uniform/head-weighted"]
    return '\n'.join(lines)


def run_attention_report(args, out):
    """--attention-report: the report for the demo corpus in `out`, with its Models/ and NormTerm/."""
    done = read_marker(out)
    if not done or not done.get('features'):
        raise UserError(f'{out}: no complete demo corpus with features (build it: python make_demo_corpus.py, '
                        'or make demo)')
    r = attention_report(corpus_paths(out), os.path.join(out, 'Models'), os.path.join(out, 'NormTerm'), args.atten,
                         args.emo, args.iterations, args.batch_size, split=args.split, device=args.device)
    print(format_attention_report(r))
    return 0


# ----------------------------------------------------------------------------------

def main(argv=None):
    p = ArgParser(description='Build a demo corpus of synthesized emotional speech (espeak-ng) in the MSP-Podcast layout.')
    p.add_argument('--out', default=None, help='corpus folder (default $DEMO_DIR or <repo>/demo_data)')
    p.add_argument('--size', type=int, default=DEFAULT_SIZE, help=f'number of utterances (default {DEFAULT_SIZE})')
    p.add_argument('--seed', type=int, default=0, help='random seed of the corpus plan (default 0)')
    p.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                   help=f'parallel synthesis / feature extraction jobs (default {os.cpu_count() or 1}, the CPU count)')
    p.add_argument('--no-features', action='store_true', help='write audio and labels only, no feat_mat/')
    p.add_argument('--force', action='store_true', help='rebuild even if the folder holds a complete corpus')
    p.add_argument('--debug', action='store_true', help='show tracebacks of user errors')
    g = p.add_argument_group('attention report (on a built corpus; uses its Models/ and NormTerm/)')
    g.add_argument('--attention-report', action='store_true',
                   help='print how much chunk weight a trained head puts on the one emotional sentence, against uniform')
    g.add_argument('-atten', '--atten_type', dest='atten', default='RnnAttenVec',
                   choices=['NonAtten', 'GatedVec', 'RnnAttenVec', 'SelfAttenVec'], help='head (default RnnAttenVec)')
    g.add_argument('-emo', '--emo_attr', dest='emo', default='Act', choices=['Act', 'Val', 'Dom'],
                   help='attribute (default Act)')
    g.add_argument('-iter', '--iterations', dest='iterations', type=int, default=150,
                   help='-iter of the checkpoint (default 150)')
    g.add_argument('-batch', '--batch_size', dest='batch_size', type=int, default=32,
                   help='-batch of the checkpoint (default 32)')
    g.add_argument('--split', default=None, help='one split only (default: every split, Test first)')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'], help='default auto')
    args = p.parse_args(argv)
    if args.attention_report:
        return run_attention_report(args, args.out or demo_dir())
    if args.workers < 1:
        raise UserError(f'--workers {args.workers}: must be at least 1')
    out = args.out or demo_dir()
    t0 = time.time()
    before = read_marker(out)
    paths = build_demo_corpus(out, args.size, args.seed, args.workers, features=not args.no_features, force=args.force)
    if before is not None and before == read_marker(out):
        print(f'{out}: complete demo corpus already there, nothing to do')
    else:
        print(f'{out}: built {args.size} utterances in {time.time() - t0:.1f} s')
    for k, v in paths.items():
        print(f'  {k}: {v}')
    return 0


if __name__ == '__main__':
    run_cli(main)
