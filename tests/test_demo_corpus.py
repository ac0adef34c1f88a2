"""The espeak-ng demo corpus: layout, labels, speaker-independent splits, the single-emotional-sentence
part, features one-to-one with the audio, and the idempotent second build.

Needs espeak-ng: skipped where it is missing, a failure under CI (CI installs it)."""
import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.io.wavfile

from chunkser.commands import attention_report
from chunkser import demo as mdc
from chunkser.commands import make_demo_corpus
from chunkser.retrieval import raters
from conftest import missing, need_transformers
from chunkser.utils import UserError

SIZE = 24


def corpus_mtimes(out):
    """file -> mtime of a corpus's audio and feature files (a migration must not touch them)."""
    return {f: os.path.getmtime(os.path.join(out, d, f))
            for d in ('Audios', 'feat_mat') for f in os.listdir(os.path.join(out, d))}


def need_espeak():
    if shutil.which('espeak-ng') is None:
        missing('espeak-ng not installed (apt-get install espeak-ng)')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    need_espeak()
    out = str(tmp_path_factory.mktemp('demo'))
    paths = mdc.build_demo_corpus(out, size=SIZE, seed=1, workers=2, features=True, progress=False)
    return out, paths


@pytest.fixture
def no_build(monkeypatch):
    """Fails the test if anything is synthesized or extracted: a complete corpus must be used as it is."""
    def refuse(*args, **kwargs):
        raise AssertionError('the complete corpus was built again')
    for name in ('check_espeak', 'synthesize', 'extract_demo_features'):
        monkeypatch.setattr(mdc, name, refuse)


def test_layout(corpus):
    out, paths = corpus
    assert paths == {'audio_dir': os.path.join(out, 'Audios'), 'feat_dir': os.path.join(out, 'feat_mat'),
                     'label_csv': os.path.join(out, 'labels_concensus.csv')}
    df = pd.read_csv(paths['label_csv'])
    for col in ('FileName', 'EmoAct', 'EmoVal', 'EmoDom', 'EmoClass', 'SpkrID', 'Gender', 'Split_Set', 'EmoStart', 'EmoEnd'):
        assert col in df.columns
    assert len(df) == SIZE and df.FileName.is_unique
    assert sorted(os.listdir(paths['audio_dir'])) == sorted(df.FileName)
    for f in df.FileName[:5]:
        sr, x = scipy.io.wavfile.read(os.path.join(paths['audio_dir'], f))
        assert sr == 16000 and x.dtype == np.int16 and x.ndim == 1
        assert 1.0 <= len(x) / sr <= 11.0
    assert json.load(open(os.path.join(out, '.complete')))['size'] == SIZE


def test_labels_and_splits(corpus):
    df = pd.read_csv(corpus[1]['label_csv'])
    for col in ('EmoAct', 'EmoVal', 'EmoDom'):
        assert df[col].between(1, 7).all()
        assert df[col].std() > 0.3  # labels vary
    assert set(df.Split_Set) == {'Train', 'Validation', 'Test'}
    assert (df.Split_Set == 'Train').mean() > 0.5
    speakers = df.groupby('Split_Set').SpkrID.apply(set)
    assert not (speakers['Train'] & speakers['Validation'])
    assert not (speakers['Train'] & speakers['Test'])
    assert not (speakers['Validation'] & speakers['Test'])
    assert set(df.Gender) <= {'Male', 'Female'}


def test_single_emotional_sentence(corpus):
    paths = corpus[1]
    df = pd.read_csv(paths['label_csv'])
    single = df[df.EmoStart.notna()]
    assert 0.1 <= len(single) / len(df) <= 0.35
    assert set(single.Split_Set) == {'Train', 'Validation', 'Test'}  # spread over all splits
    assert df.EmoEnd.notna().equals(df.EmoStart.notna())
    for _, r in single.iterrows():
        sr, x = scipy.io.wavfile.read(os.path.join(paths['audio_dir'], r.FileName))
        assert 0 <= r.EmoStart < r.EmoEnd <= len(x) / sr + 1e-3
        assert r.EmoEnd - r.EmoStart >= 0.5
        # the neutral sentences are really there: the emotional one is not the whole utterance
        assert r.EmoEnd - r.EmoStart < len(x) / sr - 0.5


def test_features_match_audio(corpus):
    _, paths = corpus
    wavs = sorted(os.path.splitext(f)[0] for f in os.listdir(paths['audio_dir']))
    mats = sorted(os.path.splitext(f)[0] for f in os.listdir(paths['feat_dir']))
    assert wavs == mats
    x = scipy.io.loadmat(os.path.join(paths['feat_dir'], mats[0] + '.mat'))['Audio_data']
    sr, w = scipy.io.wavfile.read(os.path.join(paths['audio_dir'], mats[0] + '.wav'))
    assert x.shape[1] == 131 and abs(x.shape[0] - len(w) / sr / 0.016) < 5


def test_second_build_is_a_noop(corpus, no_build):
    out, paths = corpus
    before = {f: os.path.getmtime(os.path.join(paths['audio_dir'], f)) for f in os.listdir(paths['audio_dir'])}
    again = mdc.build_demo_corpus(out, size=SIZE, seed=1, workers=2, features=True, progress=False)
    assert again == paths  # nothing synthesized or extracted (no_build), no file rewritten
    assert before == {f: os.path.getmtime(os.path.join(paths['audio_dir'], f)) for f in os.listdir(paths['audio_dir'])}
    with pytest.raises(UserError, match='--force'):  # another size in the same folder is refused
        mdc.build_demo_corpus(out, size=SIZE + 6, seed=1, progress=False)


def test_ensure_uses_a_complete_corpus(corpus, monkeypatch, no_build):
    out, paths = corpus
    monkeypatch.setenv('DEMO_DIR', out)
    marker = open(os.path.join(out, '.complete')).read()
    assert mdc.ensure_demo_corpus(progress=False) == paths  # nothing synthesized or extracted (no_build)
    assert open(os.path.join(out, '.complete')).read() == marker


def test_plan_is_deterministic():
    a, b = mdc.plan_corpus(40, seed=5), mdc.plan_corpus(40, seed=5)
    assert a == b and a != mdc.plan_corpus(40, seed=6)
    split_of = {v: s for v, _, s in mdc.SPEAKERS}
    assert all(split_of[p['voice']] == p['Split_Set'] for p in a)


def test_classes_are_five_of_their_own():
    """EmoClass names the quadrants N H A S and R (a < 0, v >= 0: "relaxed"), never MSP-Podcast's O ("other")."""
    assert [mdc.emo_class(a, v) for a, v in ((0.1, -0.1), (0.5, 0.5), (0.5, -0.5), (-0.5, -0.5), (-0.5, 0.5))] == \
        ['N', 'H', 'A', 'S', 'R']
    assert {p['EmoClass'] for p in mdc.plan_corpus(200, seed=0)} == {'N', 'H', 'A', 'S', 'R'}


def test_version_1_corpus_migrates_by_its_labels(corpus, tmp_path, monkeypatch, no_build):
    """A version-1 corpus (that quadrant labelled O) is brought to this rule by rewriting its labels CSV alone: R
    for O, every other byte as it was, no audio or feature file synthesised (no_build) or touched."""
    out, paths = corpus
    old = str(tmp_path / 'v1')
    shutil.copytree(out, old, ignore=shutil.ignore_patterns('NormTerm', 'Models', '.lock'))  # other tests' files
    want = open(paths['label_csv'], 'rb').read()
    assert want.count(b',R,') > 0 and b',O,' not in want  # EmoClass is the only one-letter column
    label_csv, marker = mdc.corpus_paths(old)['label_csv'], os.path.join(old, '.complete')
    with open(label_csv, 'wb') as f:
        f.write(want.replace(b',R,', b',O,'))
    done = {**json.load(open(marker)), 'version': 1}
    json.dump(done, open(marker, 'w'))
    before = corpus_mtimes(old)
    monkeypatch.setenv('DEMO_DIR', old)
    assert mdc.ensure_demo_corpus(progress=False) == mdc.corpus_paths(old)
    assert open(label_csv, 'rb').read() == want
    assert json.load(open(marker)) == {**done, 'version': mdc.BUILD_VERSION}
    assert corpus_mtimes(old) == before
    assert mdc.build_demo_corpus(old, size=SIZE, seed=1, progress=False) == mdc.corpus_paths(old)  # now current
    assert open(label_csv, 'rb').read() == want


def test_simulated_raters(corpus):
    """labels_detailed.json (the v1.6 layout, read by raters.py): 3-7 raters per utterance, integer ratings 1..7
    scattered around the consensus label (so ties occur), the consensus class."""
    out, paths = corpus
    df = pd.read_csv(paths['label_csv'])
    got = raters.read_raters(os.path.join(out, 'labels_detailed.json'))
    assert list(got) == list(df.FileName)
    assert all(3 <= len(r) <= 7 for r in got.values())
    assert {len(r) for r in got.values()} != {len(next(iter(got.values())))}  # the number of raters varies
    ties = spread = 0
    for row in df.itertuples():
        rs = got[row.FileName]
        assert list(rs) == [f'WORKER{k:05d}' for k in range(1, len(rs) + 1)]
        assert {r['EmoClass'] for r in rs.values()} == {row.EmoClass}
        for a in raters.ATTRS:
            v = np.array([r[a] for r in rs.values()])
            assert ((v == np.round(v)) & (v >= 1) & (v <= 7)).all()
            ties += len(set(v)) < len(v)
            spread += len(set(v)) > 1
    assert ties > 0 and spread > len(df)  # raters tie, and disagree (more than one attribute per utterance)
    for a in raters.ATTRS:
        means = np.array([np.mean([r[a] for r in got[f].values()]) for f in df.FileName])
        assert np.abs(means - df[a].to_numpy()).mean() < 0.5, a  # scattered around the label, not off it
        assert np.corrcoef(means, df[a])[0, 1] > 0.8, a


def test_version_2_corpus_gets_its_raters(corpus, tmp_path, monkeypatch, no_build):
    """A corpus built before labels_detailed.json (version 2) gets it on first use, the same file a fresh build
    writes; its labels CSV, audio and features stay as they are (nothing synthesised: no_build)."""
    out, paths = corpus
    old = str(tmp_path / 'v2')
    shutil.copytree(out, old, ignore=shutil.ignore_patterns('NormTerm', 'Models', '.lock'))
    want = open(os.path.join(out, 'labels_detailed.json'), 'rb').read()
    detailed, marker = os.path.join(old, 'labels_detailed.json'), os.path.join(old, '.complete')
    os.remove(detailed)
    done = {**json.load(open(marker)), 'version': 2}
    json.dump(done, open(marker, 'w'))
    label_csv = mdc.corpus_paths(old)['label_csv']
    csv_bytes = open(label_csv, 'rb').read()
    before = corpus_mtimes(old)
    monkeypatch.setenv('DEMO_DIR', old)
    assert mdc.ensure_demo_corpus(progress=False) == mdc.corpus_paths(old)
    assert open(detailed, 'rb').read() == want
    assert open(label_csv, 'rb').read() == csv_bytes and corpus_mtimes(old) == before
    assert json.load(open(marker)) == {**done, 'version': mdc.BUILD_VERSION}


PLAN_5 = 'fbb54bce1914c8621cc66fb4ed9e5c6f46bc3c772b7116a80ea7941f81921a09'  # version 2's plan_corpus(40, seed=5)


def test_raters_leave_the_plan_alone():
    """The raters draw from a stream of their own: the whole plan of a seed (what is synthesised, the consensus
    labels) is what it was before they existed."""
    p = mdc.plan_corpus(40, seed=5)
    assert hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest() == PLAN_5


def test_missing_espeak_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(mdc.shutil, 'which', lambda name: None)
    with pytest.raises(UserError, match='espeak-ng not found: apt-get install espeak-ng'):
        mdc.build_demo_corpus(str(tmp_path / 'x'), size=12, progress=False)


def test_main_cli(tmp_path):
    need_espeak()
    out = str(tmp_path / 'cli')
    assert make_demo_corpus.main(['--out', out, '--size', '8', '--no-features', '--workers', '2']) == 0
    assert len(pd.read_csv(os.path.join(out, 'labels_concensus.csv'))) == 8
    with pytest.raises(UserError):
        make_demo_corpus.main(['--out', out, '--size', '3'])


def test_demo_dir(monkeypatch, tmp_path):
    """$DEMO_DIR, else ./demo_data of the current folder (the checkout's, when run from it; a pip user's own)."""
    monkeypatch.setenv('DEMO_DIR', '/somewhere/demo')
    assert mdc.demo_dir() == '/somewhere/demo'
    monkeypatch.delenv('DEMO_DIR')
    monkeypatch.chdir(tmp_path)
    assert mdc.demo_dir() == str(tmp_path / 'demo_data')


# ----------------------------------------------------------------------------------
# the claims study (attention_report.py) end to end at a tiny size

def _expected_masks(paths, df):
    """Overlap masks computed here from the .mat frame counts, the chunk rule and the CSV."""
    from chunkser.utils import chunk_starts
    masks = {}
    for _, r in df.iterrows():
        T = scipy.io.loadmat(os.path.join(paths['feat_dir'], r.FileName[:-4] + '.mat'))['Audio_data'].shape[0]
        if T < 62:
            mask = np.ones(11, bool)
        else:
            lo = chunk_starts(T, 62, 11, 1) * 0.016
            mask = (lo < r.EmoEnd) & (lo + 62 * 0.016 > r.EmoStart)
        masks[r.FileName] = mask
    return masks


def test_claims_study_end_to_end(corpus, monkeypatch, tmp_path, capsys):
    """norm_para (a real child process) -> CNN NonAtten and GatedVec for Act and Dom and the seq2seq pipeline of each
    attribute (prefs, ranker, ranks, seq2seq; in this process, for time), two seeds -> the measures, CSVs, tables and
    figure; a second call trains nothing and measures the same."""
    import importlib
    from chunkser.commands import testing
    from chunkser.retrieval.preferences import write_pairs_csv
    out, paths = corpus
    study = str(tmp_path / 'study')
    real, trained = attention_report.run_script, []

    def runner(script, args, log_path, threads):
        if script == 'norm_para.py':
            return real(script, args, log_path, threads)
        trained.append([script] + args)
        assert importlib.import_module(f'chunkser.commands.{script[:-3]}').main(args) == 0
        if script == 'preference_labels.py':  # 4 Validation sentences here make no pair: two, for the ranker
            val = pd.read_csv(paths['label_csv']).query('Split_Set == "Validation"').FileName.tolist()
            emo = args[args.index('-emo') + 1]
            write_pairs_csv(os.path.join(study, 'prefs', f'validation_pairs_{emo}.csv'), val,
                            np.array([[0, 1, 1], [2, 3, 0]], np.int32))
        return 1.0, 1.0
    monkeypatch.setattr(attention_report, 'run_script', runner)
    argv = ['--out', study, '--corpus', out, '-model', 'CNN', '-atten', 'NonAtten', 'GatedVec', '-emo', 'Dom', 'Act',
            '--seeds', '0', '1', '-iter', '3', '-batch', '4', '--seq2seq', '--seq2seq-emo', 'Act',
            '--seq2seq-epochs', '1', '--pairs-per-epoch', '20']
    assert attention_report.main(argv) == 0
    printed = capsys.readouterr().out
    heads = [a for a in trained if a[0] == 'training.py' and '--task' not in a]
    assert len(heads) == 4 and all(a[a.index('-emo') + 1:a.index('-emo') + 3] == ['Act', 'Dom'] for a in heads)
    tasks = [(a[0], a[a.index('--task') + 1] if '--task' in a else None) for a in trained if a not in heads]
    assert sorted(tasks) == sorted([('preference_labels.py', None), ('training.py', 'ranker'), ('retrieval.py', None),
                                    ('training.py', 'chunk'), ('training.py', 'chunk')])  # Act; seq2seq per seed
    runs = pd.read_csv(os.path.join(study, 'runs.csv'))
    assert len(runs) == 1 + len(trained) and runs.loc[0, 'model'] == 'NormTerm' and runs.loc[0, 'cpu_s'] > 0
    assert len(os.listdir(os.path.join(study, 'NormTerm'))) == 8

    df = pd.read_csv(paths['label_csv'])
    single = df[df.EmoStart.notna()]
    masks = _expected_masks(paths, single)
    u = pd.read_csv(os.path.join(study, 'utterances.csv'))
    assert len(u) == (2 * 2 + 1) * 2 * len(single)  # (heads x attributes + seq2seq) x seeds x utterances, every split
    assert set(u.split) == {'Train', 'Validation', 'Test'}
    for _, r in u[u.model != 'LSTM-seq2seq'].iterrows():
        assert r.share == pytest.approx(masks[r.file].mean(), abs=1e-12)
    s2s = u[u.model == 'LSTM-seq2seq']  # 22 chunks; its (uniform) weights count for nothing, its values for rho_signed
    assert (s2s.chunks == 22).all() and s2s.curve.all() and np.allclose(s2s['diff'], 0, atol=1e-6)
    assert s2s.rho_signed.notna().any() and s2s.rho_overlap.isna().all()
    non = u[u.model == 'CNN-NonAtten']  # uniform weights: exactly uniform's mass, ties with every shuffle
    assert np.allclose(non['diff'], 0, atol=1e-6) and (non.beats == 0.5).all() and non.rho_overlap.isna().all()
    gated = u[u.model == 'CNN-GatedVec']
    assert gated.rho_overlap.notna().any() and (gated['diff'].abs() > 0).any()
    # the Act and Dom rows of one network share its weights
    a, d = (gated[gated.emo == e].set_index(['seed', 'file']).sort_index() for e in ('Act', 'Dom'))
    assert np.allclose(a['mass'], d['mass'])

    # Test CCC over the whole Test split: testing.py's figure for that checkpoint
    ccc = pd.read_csv(os.path.join(study, 'ccc.csv'))
    assert len(ccc) == (2 * 2 + 1) * 2 and ccc.ccc.notna().all()
    ckpt = os.path.join(study, 'runs', 'seed1', 'CNN_iter3_batch4_ChunkSeq2One_GatedVec_ActDom.pth.tar')
    assert testing.main(['--checkpoint', ckpt, '--feat-dir', paths['feat_dir'], '--label-csv', paths['label_csv'],
                         '--norm-dir', os.path.join(study, 'NormTerm'), '--no-store']) == 0
    lines = dict(line.split(': ', 1) for line in capsys.readouterr().out.splitlines() if '-CCC: ' in line)
    mine = ccc[(ccc.model == 'CNN-GatedVec') & (ccc.seed == 1)].set_index('emo')['ccc']
    assert mine['Act'] == pytest.approx(float(lines['Act-CCC']), abs=1e-6)
    assert mine['Dom'] == pytest.approx(float(lines['Dom-CCC']), abs=1e-6)

    # the summary: seed averages per utterance, the tables name every model and split
    s = pd.read_csv(os.path.join(study, 'summary.csv'))
    row = s[(s.model == 'CNN-GatedVec') & (s.emo == 'Act') & (s.split == 'Train')].iloc[0]
    g = gated[(gated.emo == 'Act') & (gated.split == 'Train')]
    assert row['mass'] == pytest.approx(g.groupby('file')['mass'].mean().mean())
    assert row['n'] == (single.Split_Set == 'Train').sum() and row['seeds'] == 2
    text = open(os.path.join(study, 'summary.md')).read()
    assert text.strip() in printed
    assert all(f'{sp}: ' in text for sp in ('Test', 'Validation', 'Train'))
    assert text.count('| CNN-GatedVec |') == 2 and text.count('| LSTM-seq2seq |') == 2
    assert os.path.getsize(os.path.join(study, 'claims.png')) > 10_000

    # a second call (GatedVec alone): its runs are done, nothing trains, the same numbers
    trained.clear()
    again = argv[:argv.index('-atten') + 1] + ['GatedVec'] + argv[argv.index('-emo'):argv.index('--seq2seq')]
    assert attention_report.main(again + ['--figure', str(tmp_path / 'again.png')]) == 0
    assert trained == [] and os.path.isfile(tmp_path / 'again.png')
    pd.testing.assert_frame_equal(pd.read_csv(os.path.join(study, 'utterances.csv')),
                                  u[u.model == 'CNN-GatedVec'].reset_index(drop=True))
    with pytest.raises(UserError, match='no complete demo corpus'):
        attention_report.main(['--out', study, '--corpus', str(tmp_path / 'nothing')])


def test_demo_flag_on_every_script(corpus, monkeypatch, tmp_path, capsys):
    """--demo runs norm_para -> training -> testing -> predict on the demo corpus, with its NormTerm and Models
    inside the demo folder, never in ./NormTerm or ./Models."""
    from chunkser.commands import norm_para
    from chunkser.commands import predict
    from chunkser.commands import testing
    from chunkser.commands import training
    demo = str(tmp_path / 'demo')
    shutil.copytree(corpus[0], demo, ignore=shutil.ignore_patterns('NormTerm', 'Models'))  # other tests' files
    monkeypatch.setenv('DEMO_DIR', demo)
    run = ['--demo', '-iter', '2', '-batch', '4', '-atten', 'GatedVec']
    assert norm_para.main(['--demo']) == 0
    assert len(os.listdir(os.path.join(demo, 'NormTerm'))) == 8
    assert training.main(run + ['-emo', 'Act', '--seed', '0']) == 0
    assert os.path.isfile(os.path.join(demo, 'Models', 'LSTM_iter2_batch4_ChunkSeq2One_GatedVec_Act.pth.tar'))
    capsys.readouterr()
    assert testing.main(run + ['-emo', 'Act']) == 0
    assert 'Act-CCC: ' in capsys.readouterr().out
    out = str(tmp_path / 'pred.csv')
    assert predict.main(run + ['--out', out]) == 0  # no PATH: the demo's Test audio
    df = pd.read_csv(out)
    labels = pd.read_csv(os.path.join(demo, 'labels_concensus.csv'))
    assert len(df) == (labels.Split_Set == 'Test').sum()
    assert df.Act.notna().all() and df.Val.isna().all()  # only an Act model was trained
    assert not os.path.exists('NormTerm') and not os.path.exists('Models')


def test_make_demo_retrieval_at_a_tiny_size(corpus, tmp_path):
    """make demo-retrieval runs the four stages on (a copy of) a demo corpus, here at a tiny size: it prints the
    seq2seq model's Test CCC and ends with the emotion curve of a Test utterance (chunks CSV and picture)."""
    import subprocess
    import sys
    out, _ = corpus
    d = str(tmp_path / 'demo')
    shutil.copytree(out, d, ignore=shutil.ignore_patterns('NormTerm', 'Models', '.lock'))
    # 10 Train and 10 Validation sentences, so each split has preference pairs (int(N * 0.1) partners each)
    labels = pd.read_csv(os.path.join(d, 'labels_concensus.csv'))
    rest = np.flatnonzero(labels['Split_Set'] != 'Test')
    labels.loc[rest[:10], 'Split_Set'], labels.loc[rest[10:], 'Split_Set'] = 'Train', 'Validation'
    labels.to_csv(os.path.join(d, 'labels_concensus.csv'), index=False)
    venv = os.path.dirname(os.path.dirname(sys.executable))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(['make', '-s', '-C', root, '-o', f'{venv}/.installed', 'demo-retrieval', f'VENV={venv}',
                        f'PY={sys.executable}', f'DEMO_DIR={d}', 'DEMO_RANKER_EP=1', 'DEMO_PAIRS=16', 'DEMO_SEQ_EP=2',
                        'DEMO_RBATCH=8'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ccc = [ln for ln in r.stdout.splitlines() if ln.startswith('Act-CCC: ')]
    assert len(ccc) == 1 and np.isfinite(float(ccc[0].split(': ')[1]))
    done = r.stdout.strip().splitlines()[-1]
    assert done.startswith('demo-retrieval done: the emotion curve of demo_')
    for f in ('retrieval/prefs/training_pairs_Act.csv', 'retrieval/EmoChunkRankSeq/training_Act.json',
              'retrieval/EmoChunkRankSeq/training_Act.provenance.json',
              'Models/LSTM_epoch2_batch8_EmoRankerSeq_Act.json', 'Models/LSTM_epoch1_batch8_Act_ranker.json'):
        assert os.path.isfile(os.path.join(d, f)), f
    chunks = pd.read_csv(os.path.join(d, 'retrieval', 'chunks.csv'))
    assert len(chunks) % 22 == 0 and set(chunks['attribute']) == {'Act'}
    assert any(f.endswith('_curve.png') for f in os.listdir(os.path.join(d, 'retrieval', 'plots')))


@pytest.mark.numeric
def test_demo_pipeline_with_a_tiny_self_supervised_front_end(corpus, tmp_path, capsys):
    """The demo's pipeline with another front end: its audio through a tiny WavLM (feature_extraction.py
    --frontend), norm_para, training and testing on those features, and predict.py on a Test wav equal to
    testing.py's value for that file."""
    need_transformers()
    import csv
    from chunkser.commands import feature_extraction
    from chunkser.commands import norm_para
    from chunkser.commands import predict
    from chunkser.commands import testing
    from chunkser.commands import training
    from test_frontend import save_tiny
    _, paths = corpus
    model = save_tiny(tmp_path / 'wavlm', 'wavlm', do_normalize=False)
    feat = str(tmp_path / 'feat')
    assert feature_extraction.main(['--wav-dir', paths['audio_dir'], '--out-dir', feat, '--frontend', model,
                                    '--device', 'cpu']) == 0
    C = ['--feat-dir', feat, '--label-csv', paths['label_csv'], '--norm-dir', str(tmp_path / 'norm')]
    assert norm_para.main(C) == 0
    assert training.main(['-iter', '4', '-batch', '4', '-emo', 'Act', '-atten', 'RnnAttenVec', '--hidden-dim', '16',
                          '--val-every', '2', '--seed', '0', '--device', 'cpu', '--out-dir', str(tmp_path / 'models'),
                          *C]) == 0
    ckpt = str(tmp_path / 'models' / 'LSTM_iter4_batch4_ChunkSeq2One_RnnAttenVec_Act.pth.tar')
    assert json.load(open(ckpt[:-len('.pth.tar')] + '.json'))['chunk_frames'] == 50  # 1 s of 0.02 s frames
    capsys.readouterr()
    out = tmp_path / 'test.csv'
    assert testing.main(['--checkpoint', ckpt, *C, '--device', 'cpu', '--out', str(out)]) == 0
    ccc = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('Act-CCC: ')]
    assert len(ccc) == 1 and np.isfinite(float(ccc[0].split(': ')[1]))
    first = next(csv.DictReader(open(out)))
    assert predict.main([os.path.join(paths['audio_dir'], first['file']), '--checkpoint', ckpt, '--device', 'cpu']) == 0
    row = next(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert abs(float(row['Act']) - float(first['pred'])) < 1e-5
