"""Build a small demo corpus of synthesized speech in the MSP-Podcast layout.

    python make_demo_corpus.py --out demo_data            # ~360 utterances, well under 2 minutes
    python make_demo_corpus.py --out /tmp/demo --size 24 --seed 3

It writes
    DIR/Audios/demo_0001.wav ...   16 kHz mono 16-bit speech from espeak-ng
    DIR/labels_concensus.csv       FileName, EmoAct, EmoVal, EmoDom, EmoClass, SpkrID, Gender,
                                   Split_Set (Train/Validation/Test), EmoStart, EmoEnd, Duration (s)
    DIR/labels_detailed.json       simulated raters, MSP-Podcast v1.6's layout (below)
    DIR/feat_mat/demo_0001.mat ... Audio_data (T, 131) from lld.extract_folder
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
N (|a| and |v| < 0.3), H (a >= 0, v >= 0), A (a >= 0, v < 0), S (a < 0, v < 0), R (a < 0, v >= 0,
"relaxed": a letter of its own, outside MSP-Podcast's A S H U F D C N O X, whose O means "other"), so
`training.py --demo -emo Class --classes N H A S R` learns the five. A corpus built before R (version 1,
where that quadrant was O) gets its labels CSV rewritten on first use, its audio and features kept.

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
`attention_report.py` (the claims study, docs/claims.md) measures that for a grid of trained models.

Raters (labels_detailed.json, {file: {rater: {EmoAct, EmoVal, EmoDom, EmoClass}}}, raters WORKER00001, ...):
per utterance, in the labels CSV's order, n raters drawn from 3..7, each rating of an attribute
round(label + N(0, 0.9)) clipped to 1..7 (integers, so raters tie, as in MSP-Podcast), the class the
consensus one. They use a generator of their own, default_rng([seed, 18]), so the plan above (audio,
consensus labels) is the same with or without them; a corpus built before them (version 2) gets the file
on first use from its labels CSV, nothing synthesised.
"""
import os
import time

from ..demo import DEFAULT_SIZE, build_demo_corpus, demo_dir, read_marker
from ..utils import ArgParser, UserError, run_cli


def main(argv=None):
    p = ArgParser(prog='make_demo_corpus.py', description='Build a demo corpus of synthesized emotional speech (espeak-ng) in the MSP-Podcast layout.')
    p.add_argument('--out', default=None, help='corpus folder (default $DEMO_DIR or <repo>/demo_data)')
    p.add_argument('--size', type=int, default=DEFAULT_SIZE, help=f'number of utterances (default {DEFAULT_SIZE})')
    p.add_argument('--seed', type=int, default=0, help='random seed of the corpus plan (default 0)')
    p.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                   help=f'parallel synthesis / feature extraction jobs (default {os.cpu_count() or 1}, the CPU count)')
    p.add_argument('--no-features', action='store_true', help='write audio and labels only, no feat_mat/')
    p.add_argument('--force', action='store_true', help='rebuild even if the folder holds a complete corpus')
    args = p.parse_args(argv)
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
