"""The model description: what a checkpoint's JSON stores, what rebuilds the network, old JSON still loads."""
import json
import os
import shutil

import pytest
import torch

from chunkser import checkpoint as CK
from chunkser import model as M
from chunkser.model import ModelSpec
from chunkser.utils import UserError


def test_round_trip_and_sizes():
    spec = ModelSpec(head='GatedVec', emo='Val', chunk_frames=31, chunks=5, scale=2, norm_fingerprint='ab' * 8)
    assert ModelSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.chunks_per_utterance == 10
    net = M.build_model(spec)
    assert net.spec is spec and net.encoder is net.lstm
    x = torch.randn(3 * 10, 31, 130)
    assert net.eval()(x).shape == (3,)


def test_json_written_before_the_spec_still_loads(tmp_path):
    """A checkpoint JSON as training.py wrote it before ModelSpec existed: the head under 'atten', no encoder or
    task, training provenance beside it."""
    old = {'atten': 'RnnAttenVec', 'emo': 'Dom', 'feat_dim': 130, 'hidden_dim': 130, 'num_layers': 2,
           'chunk_frames': 62, 'chunks': 11, 'scale': 1, 'norm_dir': '/x/NormTerm', 'norm_fingerprint': '0123456789abcdef',
           'corpus': {'feat_dir': '/x', 'label_csv': '/x.csv'}, 'iterations': 3, 'batch_size': 8, 'lr': 1e-4,
           'seed': 0, 'iter_saved': 3, 'val_loss': 0.9, 'torch': '2.13.0'}
    spec = ModelSpec.from_json(old)
    assert (spec.encoder, spec.head, spec.task, spec.emo) == ('LSTM', 'RnnAttenVec', 'utterance', 'Dom')
    assert spec.norm_fingerprint == '0123456789abcdef'
    path = tmp_path / CK.checkpoint_name(ModelSpec(head='RnnAttenVec', emo='Dom'), 8, iterations=3)
    torch.save(M.build_model(spec).state_dict(), path)
    (tmp_path / (path.name[:-len('.pth.tar')] + '.json')).write_text(json.dumps(old))
    assert CK.read_spec(str(path), 'RnnAttenVec') == spec
    with pytest.raises(UserError, match='has head RnnAttenVec, not -atten GatedVec'):
        CK.read_spec(str(path), 'GatedVec')
    assert CK.load_model(str(path), spec).spec == spec


def test_unknown_entries_are_named():
    with pytest.raises(UserError, match="unknown encoder 'GRU'"):
        ModelSpec(encoder='GRU').check()
    with pytest.raises(UserError, match=r"x\.json: unknown head 'Bogus'"):
        ModelSpec.from_json({'head': 'Bogus'}, 'x.json')


def test_spec_from_a_reference_style_name(upstream, tmp_path):
    """The released files have no JSON: their name says the network."""
    name = CK.checkpoint_name(ModelSpec(head='SelfAttenVec', emo='Val'), 128, iterations=5000)
    shutil.copy(os.path.join(upstream[0], name), tmp_path)
    spec = CK.read_spec(str(tmp_path / name))
    assert (spec.encoder, spec.head, spec.emo, spec.chunks_per_utterance) == ('LSTM', 'SelfAttenVec', 'Val', 11)
    odd = tmp_path / 'my_model.pth.tar'
    shutil.copy(tmp_path / name, odd)
    with pytest.raises(UserError, match='cannot tell which network it is'):
        CK.read_spec(str(odd))


@pytest.mark.parametrize('head', list(M.HEADS))
def test_a_checkpoint_of_another_head_is_recognised(head, tmp_path):
    other = next(h for h in M.HEADS if h != head)
    path = tmp_path / 'x.pth.tar'
    torch.save(M.build_model(ModelSpec(head=head)).state_dict(), path)
    with pytest.raises(UserError, match=rf'not a {other} checkpoint \(it looks like a {head} checkpoint\)'):
        CK.load_model(str(path), ModelSpec(head=other))


def test_estimate_flops_counts_the_lstm_products():
    spec = ModelSpec(head='NonAtten')
    lstm = 2 * 62 * 4 * 130 * ((130 + 130) + (130 + 130))  # per chunk: 2 layers, 4 gates, input + recurrent
    fc = 2 * 130 * 130 + 2 * 130
    net = M.build_model(spec)
    assert net.estimate_flops(1) == 11 * lstm + fc
    assert net.estimate_flops(4, train=True) == 3 * 4 * (11 * lstm + fc)


def test_checkpoint_names_build_and_parse():
    """One builder and one parser: the reference's names, -ep runs, Keras conversions, the retrieval tasks."""
    cases = [(ModelSpec(head='GatedVec', emo='Dom'), dict(batch_size=128, iterations=5000),
              'LSTM_iter5000_batch128_ChunkSeq2One_GatedVec_Dom.pth.tar'),
             (ModelSpec(encoder='CNN', head='NonAtten', emo='Val'), dict(batch_size=256, epochs=100),
              'CNN_epoch100_batch256_ChunkSeq2One_NonAtten_Val.pth.tar'),
             (ModelSpec(encoder='KerasLSTM', head='MultiHeadAttenVec'), {}, 'KerasLSTM_keras_ChunkSeq2One_MultiHeadAttenVec_Act.pth.tar'),
             (ModelSpec(head=None, task='chunk', emo='Val'), dict(batch_size=128, epochs=30),
              'LSTM_epoch30_batch128_EmoRankerSeq_Val.pth.tar'),
             (ModelSpec(head=None, task='ranker', emo='Dom'), dict(batch_size=128, epochs=20),
              'LSTM_epoch20_batch128_Dom_ranker.pth.tar')]
    for spec, run, name in cases:
        assert CK.checkpoint_name(spec, **run) == name
        fields, parsed = CK.parse_checkpoint_name('/some/dir/' + name)
        assert fields == dict(encoder=spec.encoder, head=spec.head, task=spec.task, emo=spec.emo) and parsed == run
    assert CK.parse_checkpoint_name('model.pth.tar') is None
    with pytest.raises(ValueError):
        CK.checkpoint_name(ModelSpec(), 128, iterations=5, epochs=5)


def test_json_with_head_none_as_text_still_loads():
    """pretrained.py wrote the per-chunk tasks' head as the string 'None' before it was null."""
    spec = ModelSpec.from_json(dict(ModelSpec(head=None, task='chunk', scale=2).to_json(), head='None'))
    assert spec.head is None and spec.task == 'chunk'
    with pytest.raises(UserError, match="head 'GatedVec' for task 'ranker'"):
        ModelSpec.from_json(dict(ModelSpec(head=None, task='ranker').to_json(), head='GatedVec'))
