import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch

from chunkser import model as M
from chunkser.commands import norm_para
from chunkser.commands import testing
from chunkser.commands import training
from chunkser.corpus import iter_batches
from chunkser.synthetic import write_corpus
from chunkser.utils import UserError


def corpus_args(c):
    return ['--feat-dir', c[0], '--label-csv', c[1], '--norm-dir', c[2]]


def test_learns_the_acceptance_corpus(tmp_path, capsys):
    """norm_para -> training -> testing on a corpus like the hidden acceptance one: 300 utterances of 172-688
    frames whose label lives in one ~1 s segment; GatedVec -iter 100 -batch 32 --seed 1 must reach CCC >= 0.7."""
    feat_dir, label_csv = write_corpus(str(tmp_path / 'c'), size=300, seed=7)
    c = (feat_dir, label_csv, str(tmp_path / 'NormTerm'))
    assert norm_para.main(corpus_args(c)) == 0
    run = ['-iter', '100', '-batch', '32', '-emo', 'Act', '-atten', 'GatedVec', *corpus_args(c)]
    assert training.main(run + ['--seed', '1', '--out-dir', str(tmp_path / 'M')]) == 0
    capsys.readouterr()
    assert testing.main(run + ['--model-dir', str(tmp_path / 'M')]) == 0
    ccc = float(re.search(r'^Act-CCC: (\S+)$', capsys.readouterr().out, re.M).group(1))
    assert ccc >= 0.7


def test_short_run_saves_at_last_iteration(small, tmp_path, capsys):
    out = tmp_path / 'M'
    assert training.main(['-iter', '3', '-batch', '8', '-emo', 'Dom', '-atten', 'RnnAttenVec', '--seed', '0',
                          '--out-dir', str(out), *corpus_args(small)]) == 0
    log = capsys.readouterr().out
    assert re.search(r'^iter 3 \| train loss \d\.\d{4} \| val loss \d\.\d{4} \| best \d\.\d{4} \| saved \| [\d.]+ s/it$',
                     log, re.M), log
    base = out / 'LSTM_iter3_batch8_ChunkSeq2One_RnnAttenVec_Dom'
    sd = torch.load(f'{base}.pth.tar', weights_only=True)
    ref = M.LSTMnet_RnnAtten(130, 130, 1, 2)
    ref.load_state_dict(sd, strict=True)  # the reference's class loads our file
    cfg = json.load(open(f'{base}.json'))
    assert cfg['head'] == 'RnnAttenVec' and cfg['encoder'] == 'LSTM' and cfg['emo'] == 'Dom' and cfg['iter_saved'] == 3
    assert cfg['feat_dim'] == 130 and (cfg['chunk_frames'], cfg['chunks'], cfg['scale']) == (62, 11, 1)
    assert len(cfg['norm_fingerprint']) == 16 and cfg['val_loss'] > 0
    hist = pd.read_csv(f'{base}.history.csv')
    assert list(hist.iter) == [3] and hist.saved[0] == 1
    assert os.path.getsize(f'{base}.png') > 1000


def test_validation_every_n_and_save_only_on_improvement(small, tmp_path):
    out = tmp_path / 'M'
    assert training.main(['-iter', '7', '-batch', '8', '-atten', 'NonAtten', '--val-every', '2', '--seed', '4',
                          '--out-dir', str(out), *corpus_args(small)]) == 0
    hist = pd.read_csv(out / 'LSTM_iter7_batch8_ChunkSeq2One_NonAtten_Act.history.csv')  # pandas >= 3 parses floats exactly
    assert list(hist.iter) == [2, 4, 6, 7]
    best = np.minimum.accumulate(hist.val_loss)
    assert list(hist.saved) == [1] + [int(v < b) for v, b in zip(hist.val_loss[1:], best[:-1])], hist.to_string()
    cfg = json.load(open(out / 'LSTM_iter7_batch8_ChunkSeq2One_NonAtten_Act.json'))
    assert cfg['val_loss'] == pytest.approx(hist.val_loss.min())
    assert cfg['iter_saved'] == int(hist.iter[hist.val_loss.idxmin()])


@pytest.mark.numeric
def test_same_seed_same_model_on_cpu(small, tmp_path):
    """Bit-identical with one fused LSTM call and with 2 CPU streams (batch 8 = 88 chunks, 44 per stream);
    the two agree to the rounding of the gradient sums."""
    sds, hists = {}, {}
    for streams in ('1', '2'):
        for k in range(2):
            out = tmp_path / f'M{streams}{k}'
            assert training.main(['-iter', '4', '-batch', '8', '-atten', 'SelfAttenVec', '--seed', '11', '--val-every',
                                  '2', '--cpu-streams', streams, '--out-dir', str(out), *corpus_args(small)]) == 0
            sds.setdefault(streams, []).append(torch.load(out / 'LSTM_iter4_batch8_ChunkSeq2One_SelfAttenVec_Act.pth.tar',
                                                          weights_only=True))
            hists[streams] = pd.read_csv(out / 'LSTM_iter4_batch8_ChunkSeq2One_SelfAttenVec_Act.history.csv')
        a, b = sds[streams]
        for k in a:
            assert torch.equal(a[k], b[k]), (streams, k)
    # seen (losses near 1, float32: 6e-8 is one unit in the last place): at most 6e-8 apart, 9e-8 with ATen, oneDNN
    # and MKL limited to AVX2; 1e-6 leaves ten times that for other CPUs' summation orders
    np.testing.assert_allclose(hists['2'].val_loss, hists['1'].val_loss, atol=1e-6, rtol=0)
    np.testing.assert_allclose(hists['2'].train_loss, hists['1'].train_loss, atol=1e-6, rtol=0)


def test_knobs_size_the_model_and_testing_reads_them(small, tmp_path, capsys):
    out = tmp_path / 'M'
    knobs = ['--chunk-frames', '31', '--chunks', '5', '--scale', '2']
    assert training.main(['--iterations', '2', '--batch_size', '8', '--emo_attr', 'Val', '--atten_type', 'GatedVec',
                          '--seed', '0', '--out-dir', str(out), *knobs, *corpus_args(small)]) == 0
    cfg = json.load(open(out / 'LSTM_iter2_batch8_ChunkSeq2One_GatedVec_Val.json'))
    assert (cfg['chunk_frames'], cfg['chunks'], cfg['scale']) == (31, 5, 2)
    capsys.readouterr()
    assert testing.main(['-iter', '2', '-batch', '8', '-emo', 'Val', '-atten', 'GatedVec', '--model-dir', str(out),
                         *corpus_args(small)]) == 0
    assert re.search(r'^Val-CCC: ', capsys.readouterr().out, re.M)


def test_no_batch_of_one():
    assert [len(b) for b in iter_batches(np.arange(9), 4)] == [4, 5]
    assert [len(b) for b in iter_batches(np.arange(10), 4)] == [4, 4, 2]
    assert [len(b) for b in iter_batches(np.arange(1), 4)] == [1]


@pytest.mark.parametrize('argv,msg', [
    (['-atten', 'Bogus'], "invalid choice: 'Bogus'"),
    (['-emo', 'Happy'], "invalid choice: 'Happy'"),
    (['-batch', '1'], 'at least 2'),
    (['-iter', '0'], '^-iter must be at least 1'),
    (['--chunks', '0'], '^--chunks must be at least 1'),
    (['--cpu-streams', '-1'], '^--cpu-streams must be 0'),
])
def test_argument_errors(small, argv, msg):
    with pytest.raises(UserError, match=msg):
        training.main(argv + corpus_args(small))


def test_empty_validation_split_is_named(small, tmp_path):
    df = pd.read_csv(small[1])
    df = df[df.Split_Set != 'Validation']
    csv = tmp_path / 'l.csv'
    df.to_csv(csv, index=False)
    with pytest.raises(UserError, match='no Validation or Development rows'):
        training.main(['-iter', '2', '-batch', '8', '--feat-dir', small[0], '--label-csv', str(csv), '--norm-dir', small[2]])


@pytest.mark.numeric
def test_store_and_mat_paths_train_and_score_the_same(small, tmp_path, capsys):
    """The feature store (default) and --no-store (each .mat read per batch) give the same model and CCC."""
    sds, cccs = [], []
    for k, extra in enumerate([['--store', str(tmp_path / 'S')], ['--no-store']]):
        out = tmp_path / f'M{k}'
        run = ['-iter', '4', '-batch', '8', '-atten', 'GatedVec', *corpus_args(small), *extra]
        assert training.main(run + ['--seed', '5', '--val-every', '2', '--out-dir', str(out)]) == 0
        sds.append(torch.load(out / 'LSTM_iter4_batch8_ChunkSeq2One_GatedVec_Act.pth.tar', weights_only=True))
        capsys.readouterr()
        assert testing.main(run + ['--model-dir', str(out)]) == 0
        cccs.append(re.search(r'^Act-CCC: (\S+)$', capsys.readouterr().out, re.M).group(1))
    assert os.listdir(tmp_path / 'S')  # the store was used
    for k in sds[0]:
        assert torch.equal(sds[0][k], sds[1][k]), k
    assert cccs[0] == cccs[1]
