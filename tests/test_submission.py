"""predict.py --submission: the challenge's format, one row per input file, with the released attribute models
and a small Class model built from a ModelSpec; a recording cut into several rows combined by duration."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from chunkser.commands import predict
from chunkser.model import ChunkLevelSER, ModelSpec
from chunkser.utils import UserError


def golden_audio(shared, name):
    return os.path.join(shared, 'golden', 'audio', name)


@pytest.fixture(scope='module')
def inputs(shared, tmp_path_factory):
    """A folder of three recordings: two golden clips and a long one (the clips joined) cut into windows."""
    d = tmp_path_factory.mktemp('sub') / 'Test3'
    d.mkdir()
    parts = []
    for n in ('calm', 'excited'):
        x, sr = soundfile.read(golden_audio(shared, n + '.wav'), dtype='int16')
        soundfile.write(d / f'{n}.wav', x, sr)
        parts.append(x)
    soundfile.write(d / 'long.wav', np.concatenate(parts * 2), sr)
    return d


def released_args(upstream):
    return ['--model-dir', upstream[0], '--norm-dir', upstream[1], '-atten', 'RnnAttenVec']


def by_duration(rows, col):
    """The duration-weighted mean of a file's --out rows, from their start and end columns."""
    d = rows['end'] - rows['start']
    return float((rows[col] * d).sum() / d.sum())


def test_attribute_submission(inputs, upstream, tmp_path, capsys):
    out, sub = tmp_path / 'rows.csv', tmp_path / 'sub.csv'
    assert predict.main([str(inputs), *released_args(upstream), '--window', '4', '--segments', 'fixed',
                         '--out', str(out), '--submission', str(sub)]) == 0
    rows, got = pd.read_csv(out), pd.read_csv(sub)
    assert list(got.columns) == ['FileName', 'EmoAct', 'EmoVal', 'EmoDom']
    assert list(got['FileName']) == ['calm.wav', 'excited.wav', 'long.wav']  # one row per file, folder order
    assert (rows['file'].str.endswith('long.wav')).sum() > 1  # the long one really is several rows
    for _, r in got.iterrows():
        mine = rows[rows['file'].map(os.path.basename) == r['FileName']]
        for a in ('Act', 'Val', 'Dom'):
            assert abs(r[f'Emo{a}'] - by_duration(mine, a)) < 2e-6
            assert 1 <= r[f'Emo{a}'] <= 7


@pytest.fixture(scope='module')
def class_model(tmp_path_factory):
    """A Class model of four classes with random weights, saved with its JSON (no training needed)."""
    d = tmp_path_factory.mktemp('cls')
    torch.manual_seed(3)
    spec = ModelSpec(emo='Class', classes=['A', 'S', 'H', 'N'], head='GatedVec')
    path = d / 'LSTM_iter1_batch2_ChunkSeq2One_GatedVec_Class.pth.tar'
    torch.save(ChunkLevelSER(spec).state_dict(), path)
    (d / 'LSTM_iter1_batch2_ChunkSeq2One_GatedVec_Class.json').write_text(json.dumps(spec.to_json()))
    return str(path)


def test_class_submission(inputs, upstream, class_model, tmp_path, capsys):
    out, sub = tmp_path / 'rows.csv', tmp_path / 'sub.csv'
    assert predict.main([str(inputs), '--checkpoint', class_model, '--norm-dir', upstream[1], '--window', '6',
                         '--segments', 'fixed', '--out', str(out), '--submission', str(sub)]) == 0
    rows, got = pd.read_csv(out), pd.read_csv(sub, dtype=str)
    assert list(got.columns) == ['FileName', 'EmoClass'] and len(got) == 3
    for _, r in got.iterrows():
        mine = rows[rows['file'].map(os.path.basename) == r['FileName']]
        probs = [by_duration(mine, f'p_{c}') for c in 'ASHN']
        assert r['EmoClass'] == 'ASHN'[int(np.argmax(probs))]
    single = rows[rows['file'].str.endswith('calm.wav')]  # a recording of one row: that row's class
    assert len(single) == 1 and got.loc[got['FileName'] == 'calm.wav', 'EmoClass'].item() == single['Class'].item()
    assert (rows['file'].str.endswith('long.wav')).sum() > 1


def test_submission_refusals(inputs, upstream, class_model, tmp_path):
    model_dir, norm_dir = upstream
    partial = tmp_path / 'models'
    partial.mkdir()
    name = 'LSTM_iter5000_batch128_ChunkSeq2One_RnnAttenVec_Act.pth.tar'
    os.symlink(os.path.join(model_dir, name), partial / name)
    sub = tmp_path / 'sub.csv'
    with pytest.raises(UserError, match='needs Act, Val and Dom'):
        predict.main([str(inputs), '--model-dir', str(partial), '--norm-dir', norm_dir, '-atten', 'RnnAttenVec',
                      '--submission', str(sub)])
    act = os.path.join(model_dir, name)
    with pytest.raises(UserError, match='one format at a time'):
        predict.main([str(inputs), '--checkpoint', act, '--checkpoint', class_model, '--norm-dir', norm_dir,
                      '--submission', str(sub)])
    twice = tmp_path / 'b'
    twice.mkdir()
    os.symlink(inputs / 'calm.wav', twice / 'calm.wav')
    with pytest.raises(UserError, match='two inputs named calm.wav'):
        predict.main([str(inputs), str(twice), '--checkpoint', class_model, '--norm-dir', norm_dir,
                      '--submission', str(sub)])
    assert not sub.exists()
