"""Every network and every task through one loop (objectives.py, training.py, testing.py): the objectives on their
own; quality runs of CNN-GatedVec, KerasLSTM-MultiHeadAttenVec, -emo Class and -emo Act Val Dom on one corpus;
every other encoder x head reloaded by testing.py to the same predictions; resume = uninterrupted and 2 torchrun
processes = 1 for the CNN and for -emo Class; -ep; refused resumes per new setting; the error contract of the new
arguments; the released checkpoints' lines."""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from chunkser import checkpoint as CK
from chunkser import keras_convert
from chunkser.commands import norm_para
from chunkser import objectives as O
from chunkser import scoring
from chunkser.commands import testing
from chunkser.commands import training
from chunkser.train import loop as train_loop, state as train_state, step as train_step
from chunkser.model import ENCODERS, HEADS, ModelSpec
from chunkser.normterm import NormTerms
from chunkser.store import open_features
from chunkser.synthetic import write_corpus
from chunkser.utils import UserError, cc_coef, evaluation_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))

pytestmark = pytest.mark.usefixtures('one_thread')  # small products; on a busy 2-core machine one thread is fastest

SMALL = ['--chunk-frames', '20', '--chunks', '4', '--scale', '1']  # the short runs' chunks: cheap iterations


def corpus_args(c):
    return ['--feat-dir', c[0], '--label-csv', c[1], '--norm-dir', c[2], '--store', c[3]]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """40 utterances of 40-160 frames with every target (seed 1: Train has A 9, H 7, N 6, S 6; Validation has no
    A; Test all four): (feat_dir, label_csv, norm_dir, store_dir)."""
    d = str(tmp_path_factory.mktemp('tiny'))
    feat_dir, label_csv = write_corpus(d, size=40, seed=1, min_frames=40, max_frames=160, all_targets=True)
    norm_dir = os.path.join(d, 'NormTerm')
    assert norm_para.main(['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', norm_dir]) == 0
    return feat_dir, label_csv, norm_dir, os.path.join(d, 'store')


def edited_labels(c, tmp_path, edit, name='labels.csv'):
    """A copy of corpus c's label table changed by edit(df) (returns the new df): c with that table."""
    df = edit(pd.read_csv(c[1]))
    path = tmp_path / name
    df.to_csv(path, index=False)
    return (c[0], str(path), c[2], c[3])


# ----------------------------------------------------------------------------------
# objectives.py on its own

def test_macro_f1_counts_a_class_never_predicted_and_skips_absent_ones():
    # true: 4 A, 3 S, 2 H, no N; H is never predicted, N once (a class absent from the truth)
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 0, 0, 3]
    cm = O.confusion(y_true, y_pred, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [1, 2, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]
    f1_a, f1_s = 2 * 3 / (4 + 5), 2 * 2 / (3 + 3)  # 2 tp / (true + predicted)
    want = (f1_a + f1_s + 0) / 3  # H: F1 0, counted; N: not in the truth, not counted
    assert O.macro_f1(cm) == pytest.approx(want, abs=1e-15)
    obj = O.Classification('ASHN')
    letters = np.array(list('ASHN'))
    scores = obj.scores({'Class': letters[y_true]}, {'Class': letters[y_pred]})
    assert scores == pytest.approx({'Class-F1': want, 'Class-UAR': (3 / 4 + 2 / 3 + 0) / 3, 'Class-Accuracy': 5 / 9},
                                   abs=1e-15)
    # validation: each batch's confusion counts, summed (over batches and ranks), then the macro-F1 of the split
    out = F.one_hot(torch.tensor(y_pred), 4).float()
    y = torch.tensor(y_true)
    sums = [a + b for a, b in zip(obj.validation_sums(out[:4], y[:4]), obj.validation_sums(out[4:], y[4:]))]
    assert obj.sums_size == len(sums) == 16 and obj.validation_value(sums) == pytest.approx(want, abs=1e-15)
    assert obj.higher_is_better and not O.Regression(('Act',)).higher_is_better


def test_class_weights_inverse_train_frequency_mean_one():
    train = pd.DataFrame({'FileName': [f'f{i}.wav' for i in range(15)],
                          'EmoClass': list('AAAAAASSSHHN') + ['X', 'O', 'X']})
    obj = O.training_objective('Class', train, 'l.csv')
    assert obj.classes == ('A', 'S', 'H', 'N')  # the challenge's order; O and X are not classes
    counts = np.array([6, 3, 2, 1])
    np.testing.assert_allclose(obj.class_weights, 12 / (4 * counts), rtol=1e-15)
    y = obj.targets(obj.select(train, 'l.csv'))
    assert y.tolist() == [0] * 6 + [1] * 3 + [2] * 2 + [3]
    assert np.mean(np.array(obj.class_weights)[y]) == pytest.approx(1.0, abs=1e-15)  # mean 1 over the Train rows
    obj = O.training_objective('Class', train, 'l.csv', classes=['N', 'A'])
    assert obj.classes == ('N', 'A') and obj.class_weights == pytest.approx([7 / 2, 7 / 12], abs=1e-15)
    assert O.training_objective('Class', train, 'l.csv', weighted=False).class_weights is None


class TwoRanks:
    """Dist.gather as rank `rank` of two sees it: its own part (with autograd) and the other rank's (constant)."""
    world = 2

    def __init__(self, rank, pred, y, sizes):
        self.rank, self.pred, self.y, self.sizes = rank, pred, y, sizes

    def gather(self, t, sizes):
        parts = list((self.y if t.dtype == torch.long else self.pred).split(self.sizes))
        parts[self.rank] = t
        return torch.cat(parts)


def test_weighted_cross_entropy_normaliser_is_the_global_batch():
    """The loss divides by the batch's sum of weights; under torchrun that of the global batch (the gathered
    outputs), so the two ranks' gradients add up to one process's on the whole batch."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(13, 4, generator=g), torch.from_numpy(np.array([0, 0, 0, 0, 0, 1, 2, 0, 1, 1, 2, 3, 3]))
    obj = O.Classification('ASHN', O.inverse_frequency_weights(y.numpy(), 4))
    w = torch.tensor(obj.class_weights)[y]
    ce = F.cross_entropy(logits, y, reduction='none')
    assert obj.loss(logits, y).item() == pytest.approx(((w * ce).sum() / w.sum()).item(), rel=1e-6)
    halves = [obj.loss(logits[s], y[s]).item() for s in (slice(0, 7), slice(7, 13))]
    assert abs(np.mean(halves) - obj.loss(logits, y).item()) > 0.02  # a local normaliser would show (0.033)

    x = torch.randn(13, 6, generator=g)

    net = torch.nn.Linear(6, 4)
    one = train_step.forward_backward(net, x, y, obj)
    want = [p.grad.clone() for p in net.parameters()]
    sizes, grads = [7, 6], []
    with torch.no_grad():
        pred = net(x)
    for rank, part in enumerate((slice(0, 7), slice(7, 13))):
        net.zero_grad()
        loss = train_step.forward_backward(net, x[part], y[part], obj, TwoRanks(rank, pred, y, sizes), sizes)
        assert loss.item() == pytest.approx(one.item(), rel=1e-6)
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b, w_ in zip(*grads, want):
        torch.testing.assert_close(a + b, w_, atol=1e-6, rtol=1e-5)


def test_regression_of_three_attributes_is_the_mean_of_their_ccc_losses():
    g = torch.Generator().manual_seed(1)
    out, y = torch.randn(9, 3, generator=g), torch.randn(9, 3, generator=g)
    for population in (False, True):
        obj = O.Regression(('Act', 'Val', 'Dom'), population)
        want = torch.stack([cc_coef(out[:, j], y[:, j], population) for j in range(3)]).mean()
        assert obj.loss(out, y).item() == pytest.approx(want.item(), abs=1e-7)
    assert cc_coef(out[:, 0], y[:, 0], True).item() != pytest.approx(cc_coef(out[:, 0], y[:, 0]).item(), abs=1e-4)
    obj = O.Regression(('Act', 'Val', 'Dom'))
    assert (obj.name, obj.outputs, obj.columns) == ('ActValDom', 3, ['EmoAct', 'EmoVal', 'EmoDom'])
    assert obj.validation_value([obj.validation_sums(out, y)[0] * 3, 3.0]) == pytest.approx(obj.loss(out, y).item())
    one = O.Regression(('Dom',))
    assert one.loss(out[:, 2], y[:, 2]).item() == pytest.approx(cc_coef(out[:, 2], y[:, 2]).item(), abs=1e-7)


@pytest.mark.parametrize('given,want', [(['Dom', 'Act'], 'ActDom'), (['Act', 'Val', 'Dom'], 'ActValDom'),
                                        (['Val'], 'Val'), ('Dom', 'Dom'), (['Class'], 'Class')])
def test_emo_token(given, want):
    assert O.emo_token(given) == want
    assert O.attributes_of(want) == (() if want == 'Class' else tuple(a for a in O.CSV_ORDER if a in want))


@pytest.mark.parametrize('given,msg', [(['Class', 'Act'], 'Class is a task of its own'),
                                       (['Act', 'Act'], 'an attribute given twice'),
                                       (['Happy'], 'expected Act, Val, Dom .one or several. or Class')])
def test_emo_token_errors(given, msg):
    with pytest.raises(UserError, match=msg):
        O.emo_token(given)


@pytest.mark.parametrize('emo', ['ValAct', 'DomVal', 'ActAct', 'Foo', 'Actx', 'ActClass', 'ClassAct', ''])
def test_attributes_of_errors(emo):
    with pytest.raises(UserError, match=f'emo {emo!r}: '):
        O.attributes_of(emo)
    with pytest.raises(UserError):
        ModelSpec(emo=emo).check()  # a checkpoint's JSON naming such targets is refused


@pytest.mark.parametrize('emo,classes,msg', [('Class', None, 'two or more distinct classes'),
                                             ('Class', ['A'], 'two or more distinct classes'),
                                             ('Class', ['A', 'A'], 'two or more distinct classes'),
                                             ('Class', ['A', 'h'], "class 'h': expected one capital letter"),
                                             ('Class', ['A', 'X'], 'other than O and X'),
                                             ('Act', ['A', 'S'], 'takes no classes')])
def test_spec_targets_errors(emo, classes, msg):
    with pytest.raises(UserError, match=msg):
        ModelSpec(emo=emo, classes=classes).check()


# ----------------------------------------------------------------------------------
# training.py then testing.py: the quality runs and the reloads

def train_then_test(c, net, run, train_extra, tmp_path, monkeypatch, capsys):
    """training.py `net run train_extra` on corpus c, then testing.py `net run --out`; the live model at its last
    save, scored here, must give testing.py's predictions exactly (the checkpoint and its JSON rebuild it).
    Returns (testing's stdout lines, its CSV, the model's spec)."""
    saved, real = {}, train_loop.save_checkpoint

    def save(path, model, spec, **provenance):
        real(path, model, spec, **provenance)
        saved.update(model=model, spec=spec, sd={k: v.clone() for k, v in model.state_dict().items()})
    monkeypatch.setattr(train_loop, 'save_checkpoint', save)
    monkeypatch.setattr(train_loop, 'plot_losses', lambda *a: None)  # the curves: test_epochs_name_..., the resumes
    out = tmp_path / 'M'
    assert training.main(net + run + train_extra + corpus_args(c) + ['--out-dir', str(out)]) == 0
    capsys.readouterr()
    csv = tmp_path / 'pred.csv'
    assert testing.main(net + run + corpus_args(c) + ['--model-dir', str(out), '--out', str(csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    got = pd.read_csv(csv, keep_default_na=False)

    model, spec = saved['model'], saved['spec']
    model.load_state_dict(saved['sd'])
    norm = NormTerms.load(c[2])
    obj = O.objective_of(spec)
    labels = pd.read_csv(c[1])
    fnames = [str(f) for f in obj.select(labels[labels.Split_Set == 'Test'], c[1], 'Test')['FileName']]
    assert list(got.file) == fnames
    raw, _ = scoring.predict_utterances(model, open_features(c[3], c[0], fnames, norm, progress=False))
    want = obj.results(raw, norm)
    if spec.emo == 'Class':
        assert list(got.pred) == list(want['Class'])
        cols = [f'p_{k}' for k in spec.classes]
    else:
        cols = ['pred'] if obj.outputs == 1 else [f'pred_{a}' for a in obj.attributes]
        want = {col: want[a] for col, a in zip(cols, obj.attributes)}
    for col in cols:
        np.testing.assert_array_equal(got[col].to_numpy(np.float64), want[col], err_msg=col)
    return lines, got, spec


def scores_of(lines):
    return {k: float(v) for k, v in (re.match(r'^(\w+-(?:CCC|F1|UAR|Accuracy)): (\S+)$', ln).groups()
                                     for ln in lines if re.match(r'^\w+-(CCC|F1|UAR|Accuracy): ', ln))}


# The quality runs: the cheapest settings found that pass with margin at every seed tried (0-2 or 0-3). Beside
# each: the Test-split figure at the seed used (the same under emulated AVX2), then the lowest over the seeds tried.
# Short chunks (16 or 31 frames, 5 a utterance) keep the iterations cheap; every run scores the 36 Test utterances.
QUALITY = {
    'CNN-GatedVec': (  # CCC 0.941; lowest 0.893
        ['-model', 'CNN', '-atten', 'GatedVec', '-emo', 'Act'], ['-iter', '30', '-batch', '16'],
        ['--lr', '1e-3', '--seed', '1', '--chunk-frames', '31', '--chunks', '5', '--val-every', '15']),
    'KerasLSTM-MultiHeadAttenVec': (  # CCC 0.917; lowest 0.874
        ['-model', 'KerasLSTM', '-atten', 'MultiHeadAttenVec', '-emo', 'Act'], ['-iter', '30', '-batch', '8'],
        ['--lr', '3e-3', '--seed', '0', '--chunk-frames', '16', '--chunks', '5', '--val-every', '10']),
    'Class': (  # macro-F1 0.846; lowest 0.846 (66 iterations; -ep 4 had a seed at 0.707)
        ['-model', 'LSTM', '-atten', 'GatedVec', '-emo', 'Class'], ['-ep', '6', '-batch', '16'],
        ['--lr', '2e-3', '--seed', '0', '--chunk-frames', '16', '--chunks', '5']),
    'ActValDom': (  # CCC 0.953, 0.922, 0.914; lowest 0.911 (40 iterations had a seed at 0.814)
        ['-model', 'LSTM', '-atten', 'NonAtten', '-emo', 'Act', 'Val', 'Dom'], ['-iter', '60', '-batch', '16'],
        ['--lr', '2e-3', '--seed', '0', '--chunk-frames', '16', '--chunks', '5', '--val-every', '20']),
}


@pytest.mark.parametrize('name', list(QUALITY))
def test_quality_run(name, quality_corpus, tmp_path, monkeypatch, capsys):
    net, run, extra = QUALITY[name]
    lines, got, spec = train_then_test(quality_corpus, net, run, extra, tmp_path, monkeypatch, capsys)
    scores = scores_of(lines)
    with capsys.disabled():
        print(f' {name}: {scores}', end=' ')
    if spec.emo == 'Class':
        assert list(scores) == ['Class-F1', 'Class-UAR', 'Class-Accuracy'] and scores['Class-F1'] >= 0.7, scores
    else:
        assert list(scores) == [f'{a}-CCC' for a in O.attributes_of(spec.emo)], scores
        assert min(scores.values()) >= 0.7, scores


def test_class_outputs_of_testing_py(tiny, tmp_path, monkeypatch, capsys):
    """-emo Class through testing.py: Class-F1, -UAR, -Accuracy after the time line, the CSV's file,true,pred,p_A..
    (probabilities summing to 1), the confusion CSV and PNG beside it; the figures are those of the confusion."""
    net, run = ['-model', 'LSTM', '-atten', 'RnnAttenVec', '-emo', 'Class'], ['-iter', '2', '-batch', '8']
    lines, got, spec = train_then_test(tiny, net, run, SMALL + ['--seed', '0'], tmp_path, monkeypatch, capsys)
    assert spec.classes == ['A', 'S', 'H', 'N']
    assert lines[1:6] == ['ChunkSeq2One', 'Iterations: 2', 'Batch_Size: 8', 'Model_Type: LSTM',
                          'Attention_Type: RnnAttenVec']
    assert lines[6].startswith('Avg. Time Cost(ms/uttr): ') and len(lines) == 10
    assert list(got.columns) == ['file', 'true', 'pred', 'p_A', 'p_S', 'p_H', 'p_N']
    np.testing.assert_allclose(got[['p_A', 'p_S', 'p_H', 'p_N']].sum(axis=1), 1, atol=1e-12)
    cm = pd.read_csv(tmp_path / 'pred.confusion.csv', index_col=0)
    assert list(cm.index) == list(cm.columns) == ['A', 'S', 'H', 'N']
    assert (cm.to_numpy() == pd.crosstab(got.true, got.pred).reindex(index=list('ASHN'), columns=list('ASHN'),
                                                                      fill_value=0).to_numpy()).all()
    assert os.path.getsize(tmp_path / 'pred.confusion.png') > 1000
    assert scores_of(lines) == O.Classification('ASHN').scores({'Class': got.true.to_numpy()},
                                                               {'Class': got.pred.to_numpy()})


QUALITY_NETWORKS = {('CNN', 'GatedVec'), ('KerasLSTM', 'MultiHeadAttenVec')}


@pytest.mark.parametrize('encoder,head', [(e, h) for e in ENCODERS for h in HEADS if (e, h) not in QUALITY_NETWORKS])
def test_short_run_reloads_to_the_same_predictions(encoder, head, tiny, tmp_path, monkeypatch, capsys):
    net, run = ['-model', encoder, '-atten', head, '-emo', 'Act'], ['-iter', '3', '-batch', '8']
    lines, got, spec = train_then_test(tiny, net, run, SMALL + ['--seed', '0', '--val-every', '3'], tmp_path,
                                       monkeypatch, capsys)
    assert (spec.encoder, spec.head) == (encoder, head)
    assert lines[4:6] == [f'Model_Type: {encoder}', f'Attention_Type: {head}'] and lines[6].startswith('Act-CCC: ')


# ----------------------------------------------------------------------------------
# -ep

def test_epochs_name_the_checkpoint_validate_per_epoch_and_keep_no_batch_of_one(tiny, tmp_path, capsys):
    """-ep 2 -batch 3 on 28 Train utterances: 9 batches an epoch (the 28th utterance joins the last batch rather
    than make a batch of one), validated after each epoch; checkpoint epoch2; testing.py -ep finds it."""
    out = tmp_path / 'M'
    run = ['-model', 'LSTM', '-atten', 'NonAtten', '-emo', 'Act', '-ep', '2', '-batch', '3']
    assert training.main(run + SMALL + ['--seed', '0', '--val-every', '4', '--out-dir', str(out),
                                        *corpus_args(tiny)]) == 0
    log = capsys.readouterr().out
    assert 'for 2 epochs (18 iterations)' in log
    base = out / 'LSTM_epoch2_batch3_ChunkSeq2One_NonAtten_Act'
    hist = pd.read_csv(f'{base}.history.csv')
    assert list(hist.iter) == [9, 18] and list(hist.epoch) == [1, 2]  # --val-every is for -iter runs
    assert np.isfinite(hist.train_loss).all() and np.isfinite(hist.val_loss).all()
    assert re.search(r'^epoch 2 \| iter 18 \| train loss ', log, re.M)
    desc = CK.read_description(f'{base}.pth.tar')
    assert desc['epochs'] == 2 and 'iterations' not in desc and desc['batch_size'] == 3
    assert sorted(os.listdir(out)) == sorted(base.name + s for s in ('.pth.tar', '.json', '.history.csv', '.png',
                                                                     '.resume.pt'))
    assert testing.main(run + corpus_args(tiny) + ['--model-dir', str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[2] == 'Iterations: 2 epochs'


# ----------------------------------------------------------------------------------
# resume = uninterrupted

def history_of(out):
    (path,) = glob.glob(str(out / '*.history.csv'))
    return pd.read_csv(path).drop(columns='elapsed_s')


def best_of(out):
    (path,) = glob.glob(str(out / '*.pth.tar'))
    return torch.load(path, weights_only=True)


RESUMES = {  # mid-epoch, between two validations
    'CNN': (['-model', 'CNN', '-atten', 'GatedVec', '-emo', 'Act', '-iter', '6', '-batch', '10', '--val-every', '2'],
            5),
    'Class': (['-model', 'LSTM', '-atten', 'RnnAttenVec', '-emo', 'Class', '-ep', '2', '-batch', '10',
               '--bn-momentum', '0.3'], 4),
    # the challenge's utterance-level head: whole utterances, NaN-padded batches, dropout in its MLP
    'Pool': (['-atten', 'AttnStatsPool', '-emo', 'Act', '-iter', '6', '-batch', '10', '--val-every', '2'], 5),
}


@pytest.mark.parametrize('name', list(RESUMES))
def test_resume_equals_uninterrupted(name, tiny, tmp_path, monkeypatch, capsys):
    """Interrupted (SIGTERM as the loop sees it) at iteration k, then --resume: the history and best checkpoint of
    the run that was never interrupted, to the bit (one process, one thread)."""
    run, k = RESUMES[name]

    def argv(out, *extra):
        return run + SMALL + ['--seed', '2', '--out-dir', str(out), *corpus_args(tiny), *extra]
    assert training.main(argv(tmp_path / 'full')) == 0
    calls = []

    def agreed(self, d):  # the signal every rank agrees on: SIGTERM at iteration k
        calls.append(1)
        return signal.SIGTERM if len(calls) == k else 0
    with monkeypatch.context() as m:
        m.setattr(train_state.StopSignals, 'agreed', agreed)
        assert training.main(argv(tmp_path / 'cut')) == 128 + signal.SIGTERM
    state = torch.load(glob.glob(str(tmp_path / 'cut' / '*.resume.pt'))[0], weights_only=True)
    assert state['iter'] == k and 0 < state['pos'] < 3 and not state['finished']
    capsys.readouterr()
    assert training.main(argv(tmp_path / 'cut', '--resume')) == 0
    assert f'(resumed at iteration {k}, batch {state["pos"]} of its epoch)' in capsys.readouterr().out
    full, cut = history_of(tmp_path / 'full'), history_of(tmp_path / 'cut')
    assert len(full) == 2 + (name in ('CNN', 'Pool')) and full.columns.tolist() == cut.columns.tolist()
    pd.testing.assert_frame_equal(cut, full, check_exact=True)
    a, b = best_of(tmp_path / 'full'), best_of(tmp_path / 'cut')
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


# ----------------------------------------------------------------------------------
# every new setting is a resume key

def test_resume_with_another_setting_is_refused(tiny, tmp_path):
    """Each new setting is a resume key: a finished -emo Act run and -emo Class run, resumed with one setting
    changed, are refused in one line naming it. The encoder, the targets and -iter/-ep are in the file name too:
    for those the state is copied to the name the other run looks for."""
    out = tmp_path / 'M'

    def run(encoder='LSTM', emo=('Act',), length=('-iter', '1'), batch='8'):
        return ['-model', encoder, '-atten', 'NonAtten', '-emo', *emo, *length, '-batch', batch]
    act, cls = run(), run(emo=('Class',), length=('-ep', '1'), batch='14')

    def argv(r, *extra):
        return r + SMALL + ['--seed', '0', '--out-dir', str(out), *corpus_args(tiny), *extra]
    assert training.main(argv(act)) == 0
    assert training.main(argv(cls)) == 0

    def moved(src, encoder='LSTM', emo=('Act',), length=('-iter', '1'), batch='8'):
        spec = ModelSpec(encoder=encoder, head='NonAtten', emo=O.emo_token(emo))
        n = {'iterations' if length[0] == '-iter' else 'epochs': int(length[1])}
        name = CK.checkpoint_name(spec, int(batch), **n)[:-len('.pth.tar')] + '.resume.pt'
        shutil.copy(out / (CK.checkpoint_name(ModelSpec(head='NonAtten', emo=src[0]), int(src[2]), **src[1])
                           [:-len('.pth.tar')] + '.resume.pt'), out / name)
        return argv(run(encoder, emo, length, batch))
    act_state, cls_state = ('Act', {'iterations': 1}, '8'), ('Class', {'epochs': 1}, '14')
    weights = O.training_objective('Class', pd.read_csv(tiny[1]).query('Split_Set == "Train"'), '').class_weights
    cases = [
        (argv(act, '--ccc-variance', 'population'), "ccc_variance='unbiased', this run has 'population'"),
        (argv(act, '--adam-eps', '1e-7'), 'adam_eps=1e-08, this run has 1e-07'),
        (argv(act, '--bn-momentum', '0.2'), 'bn_momentum=0.1, this run has 0.2'),
        (argv(act, '--recipe', 'keras'), 'adam_eps=1e-08, this run has 1e-07'),
        (moved(act_state, encoder='CNN'), "encoder='LSTM', this run has 'CNN'"),
        (moved(act_state, emo=('Act', 'Val', 'Dom')), "emo='Act', this run has 'ActValDom'"),
        (argv(cls, '--classes', 'N', 'H', 'S', 'A'), "classes=['A', 'S', 'H', 'N'], this run has ['N', 'H', 'S', 'A']"),
        (argv(cls, '--class-weights', 'none'), f'class_weights={weights!r}, this run has None'),
        (moved(cls_state, emo=('Class',), length=('-ep', '2'), batch='14'), 'epochs=1, this run has 2'),
        (moved(cls_state, emo=('Class',), length=('-iter', '1'), batch='14'), 'iterations=None, this run has 1'),
    ]
    before = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    for args, msg in cases:
        with pytest.raises(UserError) as e:
            training.main(args + ['--resume'])
        assert '\n' not in str(e.value) and f'saved with {msg}' in str(e.value), (args, str(e.value))
    assert before == {f: os.path.getmtime(out / f) for f in os.listdir(out)}  # nothing written


# ----------------------------------------------------------------------------------
# 2 torchrun processes = 1

DDP_RUNS = {  # dropout off; -batch 4: 2 utterances a rank, and the 6 Validation ones in batches 4 | 2, one a rank
    'CNN': ['-model', 'CNN', '-atten', 'GatedVec', '-emo', 'Act', '-iter', '4', '-batch', '4', '--val-every', '2'],
    'Class': ['-model', 'LSTM', '-atten', 'NonAtten', '-emo', 'Class', '-iter', '4', '-batch', '4', '--val-every', '2'],
    'Pool': ['-atten', 'AttnStatsPool', '-emo', 'Act', '-iter', '4', '-batch', '4', '--val-every', '2'],
}


@pytest.mark.numeric
def test_two_processes_train_as_one(tiny, tmp_path, monkeypatch):
    """torchrun --nproc_per_node=2, dropout off: one step's loss and gradients on a fixed global batch (the CNN's
    five batch norms over time global; the weighted cross-entropy normalised by the global batch's weights), then
    two short runs whose validation figures and training losses are those of one process."""
    from ddp_objectives import STEPS, step_grads
    from train_no_dropout import build_model_without_dropout

    def argv(name, out):
        return DDP_RUNS[name] + SMALL + ['--seed', '5', '--no-store', '--out-dir', str(out / name),
                                         *corpus_args(tiny)[:6]]
    runs = [a for name in DDP_RUNS for a in argv(name, tmp_path / 'two') + ['--next']]
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(ROOT, 'tests', 'ddp_objectives.py'), str(tmp_path / 'g.pt'), *runs],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('x 2 processes') == len(DDP_RUNS)
    two = torch.load(tmp_path / 'g.pt', weights_only=True)
    for name in STEPS:  # seen (AVX-512 and AVX2 alike): the loss equal, gradients and statistics within 3e-7
        grads, loss, stats = step_grads(name)
        assert two[name][1] == pytest.approx(loss, abs=1e-6), name
        assert grads.keys() == two[name][0].keys() and len(stats) == 2 * (5 if name.startswith('CNN') else 1)
        for k in grads:
            torch.testing.assert_close(two[name][0][k], grads[k], atol=1e-5, rtol=1e-4, msg=f'{name} {k}')
        for k in stats:
            torch.testing.assert_close(two[name][2][k], stats[k], atol=1e-6, rtol=1e-5, msg=f'{name} {k}')
    monkeypatch.setattr(train_loop, 'build_model', build_model_without_dropout)
    monkeypatch.setattr(train_loop, 'plot_losses', lambda *a: None)
    for name in DDP_RUNS:
        assert training.main(argv(name, tmp_path / 'one')) == 0
        h1, h2 = history_of(tmp_path / 'one' / name), history_of(tmp_path / 'two' / name)
        assert list(h1.iter) == list(h2.iter) == [2, 4]
        metric = 'val_macro_f1' if name == 'Class' else 'val_loss'
        # seen: 2e-7 (CNN), 0 (Class: after 4 steps it predicts one class, so this checks the sharing of the
        # validation batches and the reduction of their confusion counts, not the decisions)
        np.testing.assert_allclose(h2[metric], h1[metric], atol=1e-5, rtol=0, err_msg=name)
        # seen: 4e-6 (CNN), 5e-5 (Class), on AVX-512 and AVX2 alike: Adam turns the rounding of near-zero gradients
        # into steps of about lr. The CNN's batch norms left local give 6e-4, the loss's local normaliser 5e-2.
        np.testing.assert_allclose(h2.train_loss, h1.train_loss, atol=2e-4, rtol=0, err_msg=name)


# ----------------------------------------------------------------------------------
# the error contract of the new arguments

def no_n_in_train(df):
    df.loc[(df.Split_Set == 'Train') & (df.EmoClass == 'N'), 'EmoClass'] = 'X'
    return df


@pytest.mark.parametrize('extra,edit,msg', [
    (['-emo', 'Class', '--classes', 'A', 's'], None, r'--classes s: expected one capital letter per class'),
    (['-emo', 'Class', '--classes', 'A', 'SH'], None, r'--classes SH: expected one capital letter per class'),
    (['-emo', 'Class', '--classes', 'A', 'O'], None, r'--classes O: MSP-Podcast uses O for "other"'),
    (['-emo', 'Class', '--classes', 'A', 'Z'], None, r'class Z has no Train rows \(Train has A H N S\)'),
    (['-emo', 'Class', '--classes', 'A', 'S', 'H', 'N'], no_n_in_train,
     r'class N has no Train rows \(Train has A H S X\)'),
    (['-emo', 'Class'], lambda df: df.drop(columns='EmoClass'), r"expected a column 'EmoClass' for -emo Class"),
    (['-emo', 'Class'], lambda df: df.assign(EmoClass='X'),
     r'Train has 0 of the classes A S H U F D C N .*pass --classes'),
    (['-emo', 'Act', '--classes', 'A', 'S'], None, r'^--classes is for -emo Class, not -emo Act$'),
    (['-emo', 'Class', 'Act'], None, r'-emo Class Act: Class is a task of its own'),
    (['-emo', 'Act', 'Val', 'Val'], None, r'an attribute given twice'),
    (['-emo', 'Act', '-ep', '2'], None, r'^-iter and -ep: give one \(iterations or epochs\), not both$'),
    (['-emo', 'Act', '--bn-momentum', '0'], None, r'--bn-momentum 0.0: expected a value in \(0, 1\]'),
], ids=['lower-case', 'two-letters', 'O', 'unknown-letter', 'class-without-Train-rows', 'no-EmoClass-column',
        'no-class', 'classes-for-Act', 'Class-and-Act', 'twice', 'iter-and-ep', 'bn-momentum'])
def test_training_argument_errors(extra, edit, msg, tiny, tmp_path):
    """One line, raised before anything is written."""
    c = edited_labels(tiny, tmp_path, edit) if edit else tiny
    with pytest.raises(UserError) as e:
        training.main(['-iter', '2', '-batch', '8', *extra, '--out-dir', str(tmp_path / 'M'), *corpus_args(c)])
    assert '\n' not in str(e.value) and re.search(msg, str(e.value)), str(e.value)
    assert not os.path.exists(tmp_path / 'M')


@pytest.fixture(scope='module')
def class_and_act(tiny, tmp_path_factory):
    """A 1-iteration -emo Class model and -emo Act model of tiny: {emo: checkpoint}."""
    out = tmp_path_factory.mktemp('models')
    ckpts = {}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_loop, 'plot_losses', lambda *a: None)
        for emo in ('Class', 'Act'):
            assert training.main(['-model', 'LSTM', '-atten', 'NonAtten', '-emo', emo, '-iter', '1', '-batch', '8',
                                  *SMALL, '--seed', '0', '--out-dir', str(out), *corpus_args(tiny)]) == 0
            ckpts[emo] = str(out / f'LSTM_iter1_batch8_ChunkSeq2One_NonAtten_{emo}.pth.tar')
    return ckpts


def test_testing_refuses_a_checkpoint_of_another_task(class_and_act, tiny, tmp_path):
    base = ['--feat-dir', tiny[0], '--label-csv', tiny[1], '--norm-dir', tiny[2], '--no-store']
    with pytest.raises(UserError, match=r'this checkpoint predicts Class, not -emo Act$'):
        testing.main(['--checkpoint', class_and_act['Class'], '-emo', 'Act'] + base)
    with pytest.raises(UserError, match=r'this checkpoint predicts Act, not -emo Class$'):
        testing.main(['--checkpoint', class_and_act['Act'], '-emo', 'Class'] + base)
    with pytest.raises(UserError, match=r'this checkpoint predicts Act, not -emo ActValDom$'):
        testing.main(['--checkpoint', class_and_act['Act'], '-emo', 'Act', 'Val', 'Dom'] + base)
    with pytest.raises(UserError, match=r'^-iter and -ep: give one'):
        testing.main(['-iter', '1', '-ep', '1', '-emo', 'Class'] + base)
    # a Class model in the file an -emo Act model's name points to: its JSON says what it predicts
    for path in (class_and_act['Class'], CK.description_path(class_and_act['Class'])):
        shutil.copy(path, tmp_path / os.path.basename(path).replace('_Class.', '_Act.'))
    with pytest.raises(UserError, match=r'predicts Class, not -emo Act'):
        testing.main(['-model', 'LSTM', '-iter', '1', '-batch', '8', '-atten', 'NonAtten', '-emo', 'Act',
                      '--model-dir', str(tmp_path)] + base)
    # a chunk ranker (retrieval follow-up) goes to the ranker test (tests/test_ranker.py), which needs a split of
    # 20 sentences at least: tiny's Test has 6
    ranker = ModelSpec(task='ranker', head=None, emo='Act', **dict(chunk_frames=20, chunks=4, scale=1)).check()
    path = str(tmp_path / 'LSTM_epoch1_batch8_Act_ranker.pth.tar')
    from chunkser.model import build_model
    CK.save_checkpoint(path, build_model(ranker), ranker)
    with pytest.raises(UserError, match=r"split Test: the ranker test draws int\(6 \* 0.1\) = 0 sentences of it; "
                       r"it needs at least 20$"):
        testing.main(['--checkpoint', path] + base)


def test_testing_split_test2_and_unlabelled_test3(class_and_act, tiny, tmp_path, capsys):
    """--split Test2 scores those rows; Test3 (MSP-Podcast's, unlabelled) is refused in one line that names
    predict.py; a split whose rows are all of other classes, in one line too."""
    def split(df):
        test = df.index[df.Split_Set == 'Test']
        df.loc[test[:4], 'Split_Set'] = 'Test2'
        df.loc[test[4:], 'Split_Set'] = 'Test3'
        df.loc[test[4:], ['EmoAct', 'EmoVal', 'EmoDom', 'EmoClass']] = np.nan
        df.loc[df.index[:2], ['Split_Set', 'EmoClass']] = ['Test4', 'X']  # labelled, but of no class to learn
        return df
    c = edited_labels(tiny, tmp_path, split)
    for emo, ckpt in class_and_act.items():
        argv = ['--checkpoint', ckpt, '--feat-dir', c[0], '--label-csv', c[1], '--norm-dir', c[2], '--no-store']
        assert testing.main(argv + ['--split', 'Test2', '--out', str(tmp_path / 'p.csv')]) == 0
        assert len(pd.read_csv(tmp_path / 'p.csv')) == 4
        with pytest.raises(UserError) as e:
            testing.main(argv + ['--split', 'Test3'])
        assert '\n' not in str(e.value) and 'split Test3 has no' in str(e.value) and 'predict.py' in str(e.value)
    with pytest.raises(UserError, match=r'split Test4 has no rows of the classes A S H N$'):
        testing.main(['--checkpoint', class_and_act['Class'], '--feat-dir', c[0], '--label-csv', c[1],
                      '--norm-dir', c[2], '--no-store', '--split', 'Test4'])
    with pytest.raises(UserError, match=r'no Test or Test1 rows in Split_Set \(splits present: Test2, Test3, Test4, '):
        testing.main(['--checkpoint', class_and_act['Act'], '--feat-dir', c[0], '--label-csv', c[1],
                      '--norm-dir', c[2], '--no-store'])


# ----------------------------------------------------------------------------------
# the released checkpoints through the objective layer

@pytest.mark.numeric
def test_released_checkpoints_same_lines_and_numbers(golden, golden_corpus, upstream, golden_npz, shared, tmp_path,
                                                     capsys):
    """The PyTorch reference's SelfAttenVec Act model and, found by its name in ./trained_model_keras_v1.6/ as
    pretrained.py installs it, the Keras original's converted CNN GatedVec Act model: testing.py prints exactly the
    reference's seven lines (one CCC line) and writes file,true,pred with the originals' predictions."""
    keras = os.path.join(shared, 'upstream-keras-v1.6', 'trained_model_v1.6',
                         'CNN_model[epoch100-batch256]_GatedVec_Act_weights.h5')
    os.makedirs('trained_model_keras_v1.6')
    keras_convert.convert(shutil.copy(keras, 'trained_model_keras_v1.6'))
    kgolden = golden_npz('keras_outputs')
    base = ['-emo', 'Act', '--feat-dir', golden_corpus[0], '--label-csv', golden_corpus[1], '--norm-dir', upstream[1],
            '--no-store', '--out', str(tmp_path / 'p.csv')]
    cases = [(['-iter', '5000', '-batch', '128', '-atten', 'SelfAttenVec', '--model-dir', upstream[0]],
              os.path.join(upstream[0], 'LSTM_iter5000_batch128_ChunkSeq2One_SelfAttenVec_Act.pth.tar'),
              ['Iterations: 5000', 'Batch_Size: 128', 'Model_Type: LSTM', 'Attention_Type: SelfAttenVec'],
              golden['SelfAttenVec_Act_pred'], 1e-5),
             (['-model', 'CNN', '-ep', '100', '-batch', '256', '-atten', 'GatedVec'],
              './trained_model_keras_v1.6/CNN_epoch100_batch256_ChunkSeq2One_GatedVec_Act.pth.tar',
              ['Iterations: 100 epochs', 'Batch_Size: 256', 'Model_Type: CNN', 'Attention_Type: GatedVec'],
              kgolden['CNN_GatedVec_Act_pred'], 1e-4)]
    for argv, ckpt, header, want, tol in cases:
        capsys.readouterr()
        assert testing.main(argv + base) == 0
        df = pd.read_csv(tmp_path / 'p.csv')
        assert list(df.columns) == ['file', 'true', 'pred']
        assert list(df.true) == [1 + i * 0.5 for i in range(11)]
        np.testing.assert_allclose(df.pred, want, atol=tol * np.maximum(1, np.abs(want)).max(), rtol=0)
        lines = capsys.readouterr().out.splitlines()
        assert lines[:7] == [f'Loaded checkpoint: {ckpt}', 'ChunkSeq2One', *header,
                             f'Act-CCC: {evaluation_metrics(df.true, df.pred)!r}'], lines
        assert len(lines) == 8 and re.fullmatch(r'Avg\. Time Cost\(ms/uttr\): \d+\.\d+(e-?\d+)?', lines[7])
        assert float(lines[6].split()[1]) == pytest.approx(evaluation_metrics(df.true, want), abs=1e-4)


def test_a_state_saved_before_the_new_keys_resumes(small, tmp_path):
    """A .resume.pt written before -model/-ep/--recipe existed lacks their keys: it ran with the defaults, so a
    resume with the defaults goes on (and one with other settings is still refused)."""
    args = ['-iter', '4', '-batch', '8', '-atten', 'NonAtten', '--val-every', '2', '--seed', '3',
            '--feat-dir', small[0], '--label-csv', small[1], '--norm-dir', small[2], '--out-dir', str(tmp_path / 'M')]
    calls = []

    def agreed(self, d):  # SIGTERM as the loop sees it, after the third iteration
        calls.append(1)
        return signal.SIGTERM if len(calls) == 3 else 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_loop, 'plot_losses', lambda *a, **k: None)
        mp.setattr(train_state.StopSignals, 'agreed', agreed)
        assert training.main(args) == 128 + signal.SIGTERM
    state = tmp_path / 'M' / 'LSTM_iter4_batch8_ChunkSeq2One_NonAtten_Act.resume.pt'
    saved = torch.load(state, weights_only=True)
    for k in train_state.EARLIER:  # (a features run never writes the audio networks' keys)
        saved['settings'].pop(k, None)
    torch.save(saved, state)
    with pytest.raises(UserError, match='saved with bn_momentum=0.1'):
        training.main(args + ['--resume', '--bn-momentum', '0.2'])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_loop, 'plot_losses', lambda *a, **k: None)
        assert training.main(args + ['--resume']) == 0
