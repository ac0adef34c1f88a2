"""Hostile and careless input, and faults: each case as a user would meet it (a model folder that brings code, an
infinite rating, a lying checkpoint JSON, a label 'high', a full disk, a damaged store, a killed run, NaN audio, a
file listed twice), each refused in one line (UserError) or recovered from. Tiny data made here; no shared data."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import scipy.io
import soundfile
import torch

from chunkser import checkpoint, guards, store
from chunkser.corpus import read_label_table
from chunkser.features import frontend, lld
from chunkser.files import RunLock, atomic_writer, remove_stale_temporaries
from chunkser.model import ModelSpec, build_model
from chunkser.normterm import NormTerms
from chunkser.objectives import Classification
from chunkser.retrieval import raters, ranks
from chunkser.utils import UserError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line(e):
    """The message of a UserError: one line, naming what it must name."""
    msg = str(e.value)
    assert '\n' not in msg, msg
    return msg


def dead_pid():
    """The id of a process that has ended (a killed writer's)."""
    p = subprocess.Popen([sys.executable, '-c', 'pass'])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------------
# 1. a model folder that brings its own code; a hub name offline

def code_folder(tmp_path, auto_map=True, model_type='evil'):
    """A model folder whose Python file, if ever run, writes `ran`; config.json with auto_map pointing at it."""
    d = tmp_path / 'model'
    d.mkdir()
    marker = tmp_path / 'ran'
    (d / 'evil.py').write_text(f'open({str(marker)!r}, "w").write("ran")\n')
    cfg = {'model_type': model_type, **({'auto_map': {'AutoModel': 'evil.EvilModel',
                                                       'AutoConfig': 'evil.EvilConfig'}} if auto_map else {})}
    (d / 'config.json').write_text(json.dumps(cfg))
    (d / 'preprocessor_config.json').write_text('{"do_normalize": true}')
    return str(d), marker


def test_model_folder_with_code_is_refused_before_loading(tmp_path):
    folder, marker = code_folder(tmp_path)
    with pytest.raises(UserError) as e:
        frontend.SSLFrontEnd(folder, device='cpu')
    assert 'brings its own code' in one_line(e) and folder in str(e.value)
    assert not marker.exists()


def test_model_folder_of_unknown_type_is_refused(tmp_path):
    folder, marker = code_folder(tmp_path, auto_map=False)
    os.remove(os.path.join(folder, 'evil.py'))
    with pytest.raises(UserError) as e:
        frontend.SSLFrontEnd(folder, device='cpu')
    assert "model_type 'evil'" in one_line(e)


def test_hub_failure_is_one_line(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError('We could not connect to the hub.\nCheck your connection\nor set HF_HUB_OFFLINE=1')
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', offline)
    with pytest.raises(UserError) as e:
        frontend.resolve_folder('nobody/no-such-model')
    assert 'nobody/no-such-model' in one_line(e) and 'HF_HUB_OFFLINE=1' in str(e.value)


# ----------------------------------------------------------------------------------
# 2. infinite, boolean and textual ratings and ranks

@pytest.mark.parametrize('value', ['Infinity', '1e999', '-Infinity', 'true', '"high"'])
def test_json_rating_not_finite_is_refused(tmp_path, value):
    path = tmp_path / 'labels_detailed.json'
    path.write_text('{"a.wav": {"W1": {"EmoAct": 3, "EmoVal": 4, "EmoDom": 4}, "W2": {"EmoAct": %s}}}' % value)
    with pytest.raises(UserError) as e:
        raters.read_raters(str(path))
    msg = one_line(e)
    assert str(path) in msg and 'a.wav' in msg and 'W2' in msg and 'EmoAct' in msg


@pytest.mark.parametrize('value', ['inf', '-inf', 'Infinity', 'high'])
def test_csv_rating_not_finite_is_refused(tmp_path, value):
    path = tmp_path / 'labels_detailed.csv'
    path.write_text(f'FileName,WorkerID,EmoClass_Major,EmoAct,EmoVal,EmoDom\na.wav,W1,N,3,4,4\nb.wav,W7,N,{value},4,4\n')
    with pytest.raises(UserError) as e:
        raters.read_raters(str(path))
    msg = one_line(e)
    assert 'b.wav' in msg and 'W7' in msg


def test_csv_emo_detail_infinite_is_refused(tmp_path):
    path = tmp_path / 'labels_detailed.csv'
    path.write_text('FileName,EmoDetail\na.wav,W1; N; A:inf; V:3; D:3;\n')
    with pytest.raises(UserError) as e:
        raters.read_raters(str(path))
    assert 'a.wav' in one_line(e) and 'line 2' in str(e.value)


def test_missing_rating_stays_missing(tmp_path):
    """Empty and null are no rating (refused only where the attribute is needed), not an error."""
    path = tmp_path / 'd.json'
    path.write_text('{"a.wav": {"W1": {"EmoAct": 3, "EmoVal": null}}}')
    assert raters.read_raters(str(path))['a.wav']['W1'] == {'EmoAct': 3.0, 'EmoVal': None, 'EmoDom': None,
                                                            'EmoClass': None}


def test_labels_detailed_with_bom(tmp_path):
    path = tmp_path / 'labels_detailed.json'
    path.write_bytes(b'\xef\xbb\xbf' + b'{"a.wav": {"W1": {"EmoAct": 2.5, "EmoVal": 4, "EmoDom": 5}}}')
    assert raters.read_raters(str(path))['a.wav']['W1']['EmoAct'] == 2.5


@pytest.mark.parametrize('seq', ['[true, 2, 3]', '[1.0, 2, 3]', '[Infinity, 2, 3]'])
def test_rank_that_is_not_a_whole_number_is_refused(tmp_path, seq):
    path = tmp_path / 'training_Act.json'
    path.write_text('{"a.wav": {"ChunkRankSeq": %s}}' % seq)
    with pytest.raises(UserError) as e:
        ranks.read_ranks(str(path), ['a.wav'], 3, 'Act')
    assert 'a.wav' in one_line(e)


# the guard every training path calls on its loss and validation figure

@pytest.mark.parametrize('value', [float('nan'), float('inf'), -float('inf'), torch.tensor(float('nan')),
                                   np.float64('inf')])
def test_check_finite_stops(value):
    with pytest.raises(guards.NonFinite) as e:
        guards.check_finite(value, 'validation CCC at iteration 7')
    assert 'validation CCC at iteration 7' in one_line(e)
    assert isinstance(e.value, UserError)  # the command runner: one line, exit 2


def test_check_finite_passes_numbers():
    assert guards.check_finite(torch.tensor(0.25), 'loss') == 0.25 and guards.check_finite(3, 'loss') == 3.0


# ----------------------------------------------------------------------------------
# 3. a lying checkpoint JSON

def tiny_spec(**kw):
    return ModelSpec(hidden_dim=8, feat_dim=6, chunk_frames=5, chunks=3, **kw).check()


def save_tiny(tmp_path, spec=None, **json_edits):
    spec = spec or tiny_spec()
    torch.manual_seed(0)
    path = str(tmp_path / 'LSTM_iter1_batch2_ChunkSeq2One_SelfAttenVec_Act.pth.tar')
    checkpoint.save_checkpoint(path, build_model(spec), spec)
    jp = checkpoint.description_path(path)
    d = json.load(open(jp))
    d.update(json_edits)
    open(jp, 'w').write(json.dumps(d))
    return path


@pytest.mark.parametrize('edit', [dict(hidden_dim=1e9), dict(hidden_dim=10 ** 9), dict(num_layers=10 ** 6),
                                  dict(num_layers=1e6), dict(chunks=0), dict(chunk_frames=1e5),
                                  dict(chunk_frames=-5), dict(scale=2.5), dict(bn_momentum='abc'),
                                  dict(bn_momentum=True), dict(feat_dim='130'), dict(emo=['Act']),
                                  dict(classes='AHS'), dict(frontend={'hop': 0}), dict(norm_dir=5)])
def test_lying_json_field_is_refused(tmp_path, edit):
    path = save_tiny(tmp_path, **edit)
    with pytest.raises(UserError) as e:
        checkpoint.read_spec(path)
    field = next(iter(edit))
    assert field in one_line(e) and checkpoint.description_path(path) in str(e.value)


def test_json_not_an_object_is_refused(tmp_path):
    path = save_tiny(tmp_path)
    open(checkpoint.description_path(path), 'w').write('[1, 2, 3]')
    with pytest.raises(UserError) as e:
        checkpoint.read_spec(path)
    assert 'JSON object' in one_line(e)


def test_shapes_checked_before_anything_is_built(tmp_path, monkeypatch):
    """A JSON that claims a large model over a small state_dict: refused on the meta device, the real model (of the
    JSON's size) never allocated."""
    path = save_tiny(tmp_path, hidden_dim=4096)
    spec = checkpoint.read_spec(path)
    built = []
    real_build = checkpoint.build_model

    def build(s):
        built.append(torch.empty(0).device.type)  # where the parameters of this build go
        return real_build(s)
    monkeypatch.setattr(checkpoint, 'build_model', build)
    with pytest.raises(UserError) as e:
        checkpoint.load_model(path, spec)
    assert 'shape' in one_line(e) and 'hidden 4096' in str(e.value)
    assert built == ['meta']
    built.clear()
    ok = save_tiny(tmp_path)
    model = checkpoint.load_model(ok, checkpoint.read_spec(ok))  # a true JSON still loads, on the CPU
    assert built == ['meta', 'cpu'] and next(model.parameters()).device.type == 'cpu'


def test_norm_dir_elsewhere_without_fingerprint_is_refused(tmp_path):
    spec = tiny_spec(norm_dir=str(tmp_path / 'OtherNormTerm'))
    norm = NormTerms(np.zeros(6), np.ones(6), {'Act': (4.0, 1.0)})
    with pytest.raises(UserError) as e:
        checkpoint.check_norm(spec, norm, str(tmp_path / 'NormTerm'), 'model.pth.tar')
    assert 'OtherNormTerm' in one_line(e) and 'fingerprint' in str(e.value)
    checkpoint.check_norm(spec, norm, str(tmp_path / 'NormTerm'), 'model.pth.tar', force=True)
    checkpoint.check_norm(spec, norm, str(tmp_path / 'OtherNormTerm'), 'model.pth.tar')  # the same folder


# ----------------------------------------------------------------------------------
# 4. tracebacks left: labels, disk, store, resume

def label_csv(tmp_path, rows):
    path = tmp_path / 'labels.csv'
    pd.DataFrame(rows, columns=['FileName', 'EmoAct', 'EmoVal', 'EmoDom', 'EmoClass', 'Split_Set']).to_csv(path, index=False)
    return str(path)


ROWS = [('a.wav', 3.0, 4.0, 4.0, 'A', 'Train'), ('b.wav', 5.0, 4.0, 4.0, 'H', 'Train'),
        ('c.wav', 4.0, 4.0, 4.0, 'A', 'Validation')]


@pytest.mark.parametrize('label', ['high', 'inf', '-Infinity', '1e999'])
def test_non_numeric_label_is_refused(tmp_path, label):
    path = label_csv(tmp_path, [*ROWS, ('d.wav', 4.0, label, 4.0, 'A', 'Test')])
    with pytest.raises(UserError) as e:
        read_label_table(path)
    msg = one_line(e)
    assert path in msg and 'line 5' in msg and 'EmoVal' in msg and 'd.wav' in msg


def test_empty_label_is_left_to_its_users(tmp_path):
    df = read_label_table(label_csv(tmp_path, [*ROWS, ('d.wav', 4.0, None, 4.0, 'A', 'Test')]))
    assert np.isnan(df['EmoVal'].iloc[3]) and df['EmoAct'].dtype == np.float64


def test_non_numeric_label_through_a_command(tmp_path, monkeypatch, capsys):
    """norm_para.py as a user runs it: one line, exit 2, no traceback."""
    from chunkser.commands import norm_para
    path = label_csv(tmp_path, [*ROWS[:1], ('b.wav', 'high', 4.0, 4.0, 'H', 'Train'), *ROWS[2:]])
    (tmp_path / 'feat').mkdir()
    monkeypatch.setattr(sys, 'argv', ['norm_para.py', '--feat-dir', str(tmp_path / 'feat'), '--label-csv', path,
                                      '--norm-dir', str(tmp_path / 'N')])
    with pytest.raises(SystemExit) as e:
        run_cli(norm_para.main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and err.startswith('error: ') and "'high'" in err


@pytest.mark.parametrize('second', ['Train', 'Validation'])
def test_file_listed_twice_is_refused(tmp_path, second):
    path = label_csv(tmp_path, [*ROWS, ('a.wav', 3.0, 4.0, 4.0, 'A', second)])
    with pytest.raises(UserError) as e:
        read_label_table(path)
    assert 'a.wav' in one_line(e) and 'line 2' in str(e.value) and 'line 5' in str(e.value)


def test_split_of_unchosen_classes_is_named(tmp_path):
    df = read_label_table(label_csv(tmp_path, [*ROWS[:2], ('c.wav', 4.0, 4.0, 4.0, 'X', 'Validation')]))
    with pytest.raises(UserError) as e:
        Classification(['A', 'H']).select(df[df['Split_Set'] == 'Validation'], 'labels.csv', 'Validation')
    assert one_line(e) == 'labels.csv: split Validation has no rows of the classes A H'


def enospc(*a, **k):
    raise OSError(errno.ENOSPC, 'No space left on device')


def test_full_disk_keeps_the_old_csv(tmp_path, monkeypatch):
    """testing.py --out on a full disk: one line, the old file whole, no temporary left."""
    from chunkser.commands import testing
    out = tmp_path / 'pred.csv'
    out.write_text('old,predictions\n')
    monkeypatch.setattr(os, 'fsync', enospc)
    with pytest.raises(UserError) as e:
        testing.write_predictions(str(out), ['FileName', 'Act'], [['a.wav', 3.5]] * 1000)
    assert str(out) in one_line(e) and 'No space' in str(e.value)
    assert out.read_text() == 'old,predictions\n' and os.listdir(tmp_path) == ['pred.csv']


def test_csv_bytes_unchanged(tmp_path):
    """The atomic CSV is the bytes csv.writer writes to a file opened with newline=''."""
    import csv
    from chunkser.commands import testing
    rows = [['a.wav', 3.5, 1 / 3], ['b,c.wav', -0.0, 'x"y']]
    testing.write_predictions(str(tmp_path / 'new.csv'), ['FileName', 'Act', 'p'], rows)
    with open(tmp_path / 'old.csv', 'w', newline='') as f:
        csv.writer(f).writerows([['FileName', 'Act', 'p'], *rows])
    assert (tmp_path / 'new.csv').read_bytes() == (tmp_path / 'old.csv').read_bytes()


def test_full_disk_met_anywhere_is_one_line(monkeypatch, capsys):
    def main(argv):
        with open(os.devnull, 'rb'):
            raise OSError(errno.ENOSPC, 'No space left on device', '/out/model.pth.tar.tmp1')
    monkeypatch.setattr(sys, 'argv', ['x.py'])
    with pytest.raises(SystemExit) as e:
        run_cli(main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and '/out/model.pth.tar' in err


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / 'm.pth.tar')
    monkeypatch.setattr(os, 'fsync', enospc)
    with pytest.raises(UserError) as e:
        checkpoint.save_checkpoint(path, build_model(tiny_spec()), tiny_spec())
    assert path in one_line(e) and os.listdir(tmp_path) == []


# the feature store: damaged, half-built, on a full disk

F = 4


@pytest.fixture
def corpus(tmp_path):
    """Three utterances of F features, their NormTerm, and a store folder."""
    feat = tmp_path / 'feat'
    feat.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i, T in enumerate((7, 3, 12)):
        x = np.concatenate([np.arange(T)[:, None] * 0.016, rng.standard_normal((T, F))], axis=1)
        scipy.io.savemat(feat / f'u{i}.mat', {'Audio_data': x})
        names.append(f'u{i}.wav')
    norm = NormTerms(np.zeros(F), np.ones(F), {'Act': (4.0, 1.0)})
    return str(feat), names, norm, str(tmp_path / 'store')


def expected_rows(feat, names, norm):
    return [np.clip(scipy.io.loadmat(os.path.join(feat, n[:-4] + '.mat'))['Audio_data'][:, 1:], -3, 3)
            .astype(np.float32) for n in names]


@pytest.mark.parametrize('damage', ['truncate', 'index', 'meta', 'index-edit'])
def test_damaged_store_is_rebuilt(corpus, damage, capsys):
    feat, names, norm, where = corpus
    s = store.open_store(where, feat, names, norm, workers=1, progress=False)
    path = s.path
    del s
    if damage == 'truncate':
        data = os.path.join(path, 'features.f32')
        os.truncate(data, os.path.getsize(data) - 16)
    elif damage == 'index':
        os.remove(os.path.join(path, 'index.npy'))
    elif damage == 'meta':
        open(os.path.join(path, 'meta.json'), 'w').write('{"version": 1, "fnames": ')
    else:
        np.save(os.path.join(path, 'index.npy'), np.array([[0, 7], [7, 3], [10, 13]]))
    with pytest.raises(UserError) as e:  # opened directly: one line
        store.FeatureStore(path)
    assert 'damaged feature store' in one_line(e)
    s = store.open_store(where, feat, names, norm, workers=1, progress=False)  # opened as the scripts do: rebuilt
    assert 'rebuilding' in capsys.readouterr().err
    for got, want in zip((s[i] for i in range(3)), expected_rows(feat, names, norm)):
        np.testing.assert_array_equal(got, want)


def test_store_leftovers_of_a_killed_build_are_removed(corpus):
    feat, names, norm, where = corpus
    os.makedirs(where)
    lkey = store.list_key(names)
    dead, alive = os.path.join(where, f'.{lkey}-0123.tmp{dead_pid()}'), os.path.join(where, f'.{lkey}-4567.tmp1')
    for d in (dead, alive):  # pid 1 lives: a running build's folder is kept
        os.makedirs(d)
        open(os.path.join(d, 'features.f32'), 'wb').write(b'\0' * 1000)
    store.open_store(where, feat, names, norm, workers=1, progress=False)
    assert not os.path.exists(dead) and os.path.exists(alive)


def test_store_on_a_full_disk_is_one_line(corpus, monkeypatch):
    feat, names, norm, where = corpus
    monkeypatch.setattr(os, 'fsync', enospc)
    with pytest.raises(UserError) as e:
        store.open_store(where, feat, names, norm, workers=1, progress=False)
    assert where in one_line(e) and 'No space' in str(e.value) and os.listdir(where) == [
        f'.{store.list_key(names)}.lock']


def test_empty_store_list_names_the_folders(corpus):
    feat, names, norm, where = corpus
    with pytest.raises(UserError) as e:
        store.open_store(where, feat, [], norm)
    assert where in one_line(e) and feat in str(e.value)


# the resume state: a plain state_dict, a damaged one, one copied without its checkpoint

def resume_state(spec, finished=False, saved=1):
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters())
    return {'iter': 10, 'best': 0.5, 'history': [{'iter': 10, 'saved': saved}], 'recent': [], 'order': torch.arange(4),
            'pos': 1, 'model': model.state_dict(), 'optimizer': opt.state_dict(),
            'shuffle_rng': torch.Generator().get_state(), 'rng': [{'torch': torch.get_rng_state()}], 'seed': 3,
            'settings': {'encoder': 'LSTM'}, 'finished': finished}


def test_resume_reader_accepts_a_whole_state(tmp_path):
    torch.save(resume_state(tiny_spec()), tmp_path / 'm.resume.pt')
    open(tmp_path / 'm.pth.tar', 'wb').close()
    st = guards.read_resume(str(tmp_path / 'm.resume.pt'), str(tmp_path / 'm.pth.tar'))
    assert st['iter'] == 10 and st['seed'] == 3


def test_plain_state_dict_as_resume_is_refused(tmp_path):
    path = str(tmp_path / 'm.resume.pt')
    torch.save(build_model(tiny_spec()).state_dict(), path)
    with pytest.raises(UserError) as e:
        guards.read_resume(path)
    assert 'plain state_dict' in one_line(e) and path in str(e.value)


@pytest.mark.parametrize('edit', [dict(iter=-1), dict(iter=2.5), dict(seed='3'), dict(finished=1),
                                  dict(settings=[]), dict(model={'w': 1.0}), dict(history={})])
def test_damaged_resume_field_is_refused(tmp_path, edit):
    path = str(tmp_path / 'm.resume.pt')
    torch.save({**resume_state(tiny_spec()), **edit}, path)
    with pytest.raises(UserError) as e:
        guards.read_resume(path)
    assert f'its {next(iter(edit))} ' in one_line(e)


@pytest.mark.parametrize('content', [b'', b'not a pickle', None])
def test_unreadable_resume_is_refused(tmp_path, content):
    path = str(tmp_path / 'm.resume.pt')
    if content is None:
        torch.save([1, 2], path)
    else:
        open(path, 'wb').write(content)
    with pytest.raises(UserError) as e:
        guards.read_resume(path)
    assert path in one_line(e)


def test_resume_copied_without_its_checkpoint_is_refused(tmp_path):
    """An unfinished resume.pt alone in an empty folder: its run's best checkpoint is not there."""
    path = str(tmp_path / 'm.resume.pt')
    torch.save(resume_state(tiny_spec()), path)
    with pytest.raises(UserError) as e:
        guards.read_resume(path, str(tmp_path / 'm.pth.tar'))
    assert 'm.pth.tar' in one_line(e)
    torch.save(resume_state(tiny_spec(), saved=0), path)  # nothing saved yet: nothing to miss
    guards.read_resume(path, str(tmp_path / 'm.pth.tar'))


# ----------------------------------------------------------------------------------
# 6. two runs on the same names

def test_second_run_on_the_same_names_is_refused(tmp_path):
    base = str(tmp_path / 'LSTM_iter5_batch2_ChunkSeq2One_SelfAttenVec_Act')
    with guards.run_lock(base):
        with pytest.raises(UserError) as e:
            with guards.run_lock(base):
                pass
        msg = one_line(e)
        assert base + '.lock' in msg and f'pid {os.getpid()}' in msg
    with guards.run_lock(base):  # released at the end of the first
        pass


def test_lock_of_a_killed_run_is_released(tmp_path):
    lock = str(tmp_path / 'm.lock')
    code = f'from chunkser.files import RunLock\nimport time\nwith RunLock({lock!r}):\n    print("held", flush=True)\n' \
           '    time.sleep(60)\n'
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert p.stdout.readline().strip() == 'held'
        with pytest.raises(UserError) as e:
            with RunLock(lock):
                pass
        assert f'pid {p.pid}' in one_line(e)
    finally:
        p.kill()
        p.wait()
    with RunLock(lock):
        pass


# ----------------------------------------------------------------------------------
# 7. faults: workers of a killed parent, leftover temporaries, NaN audio

def test_workers_end_with_their_killed_parent(tmp_path):
    """A pool parent killed with SIGKILL: its idle workers exit (they would wait on the task queue forever)."""
    code = textwrap.dedent('''
        import concurrent.futures, multiprocessing as mp, os, time
        from chunkser.device import worker_init

        def pid(_):
            time.sleep(0.2)
            return os.getpid()

        if __name__ == '__main__':
            pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context('fork'), initializer=worker_init)
            print(*sorted(set(pool.map(pid, range(4)))), flush=True)
            time.sleep(60)
        ''')
    script = tmp_path / 'parent.py'
    script.write_text(code)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=ROOT, text=True,
                         env={**os.environ, 'PYTHONPATH': ROOT})
    workers = [int(x) for x in p.stdout.readline().split()]
    assert workers and p.pid not in workers
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 10
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [w for w in alive if os.path.exists(f'/proc/{w}') and 'Z' not in open(f'/proc/{w}/stat').read().split()[2]]
    for w in alive:  # do not leave them behind when the test fails
        os.kill(w, signal.SIGKILL)
    assert alive == []


def test_leftover_temporaries_are_cleaned(tmp_path):
    out = tmp_path / 'feat'
    out.mkdir()
    dead = out / f'u1.mat.tmp{dead_pid()}'
    live = out / f'u2.mat.tmp{os.getppid()}'  # a running writer's (our parent lives)
    keep = out / 'u3.mat'
    for f in (dead, live, keep):
        f.write_bytes(b'x' * 100)
    lld.clean_interrupted(str(out), verbose=False)
    assert sorted(os.listdir(out)) == sorted([live.name, keep.name])


def test_atomic_writer_temporary_is_what_the_cleaner_matches(tmp_path):
    """The cleaner's pattern is the one atomic_writer uses (a renamed scheme would leave files forever)."""
    path = tmp_path / 'u.mat'
    with atomic_writer(str(path)) as f:
        f.write(b'x')
        names = os.listdir(tmp_path)
    assert names == [f'u.mat.tmp{os.getpid()}']
    assert remove_stale_temporaries(str(tmp_path)) == []  # our own writer's: kept (it is done now anyway)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_nan_samples_are_refused_per_file(tmp_path, bad):
    x = np.sin(np.arange(16000) / 10.0) * 0.1
    x[1600] = bad
    path = str(tmp_path / 'nan.wav')
    soundfile.write(path, x, 16000, subtype='FLOAT')
    with pytest.raises(UserError) as e:
        lld.load_audio(path)
    assert path in one_line(e) and '1 of 16000 samples' in str(e.value) and '0.100 s' in str(e.value)


# ----------------------------------------------------------------------------------
# the guards where the trainer calls them: a run that meets them ends in one line, and names no file it did not write

@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
    """A 40-utterance synthetic corpus and its NormTerm: the arguments of a 4-iteration training run."""
    from chunkser.commands import norm_para
    from chunkser.synthetic import write_corpus
    d = tmp_path_factory.mktemp('small_run')
    feat_dir, label_csv = write_corpus(str(d / 'c'), size=40, seed=3)
    assert norm_para.main(['--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', str(d / 'N')]) == 0
    return ['-iter', '4', '-batch', '8', '-emo', 'Act', '-atten', 'NonAtten', '--val-every', '2', '--seed', '0',
            '--feat-dir', feat_dir, '--label-csv', label_csv, '--norm-dir', str(d / 'N')]


def run_training(args, out, capsys):
    from chunkser.commands import training
    capsys.readouterr()
    with pytest.raises(UserError) as e:
        training.main(args + ['--out-dir', str(out)])
    return one_line(e), capsys.readouterr().out


def ckpt_in(out):
    return [f for f in os.listdir(out) if f.endswith('.pth.tar')] if os.path.isdir(out) else []


@pytest.mark.parametrize('where', ['loss', 'validation'])
def test_training_stops_on_a_non_finite_figure(small_run, tmp_path, monkeypatch, capsys, where):
    """A NaN training loss (or validation figure) stops the run in one line naming the figure and the iteration;
    nothing is saved from there on and no line names a checkpoint."""
    from chunkser.train import loop
    if where == 'loss':
        real = loop.forward_backward
        calls = []

        def nan_at_first(*a, **k):
            loss = real(*a, **k)
            calls.append(1)
            return loss * float('nan') if len(calls) == 1 else loss
        monkeypatch.setattr(loop, 'forward_backward', nan_at_first)
        want = 'training loss at iteration 1 is nan'
    else:
        monkeypatch.setattr(loop, 'validate', lambda *a, **k: float('inf'))
        want = 'validation loss at iteration 2 is inf'
    msg, out = run_training(small_run, tmp_path / 'M', capsys)
    assert want in msg, msg
    assert ckpt_in(tmp_path / 'M') == [] and 'best val' not in out  # no closing line naming the checkpoint


def test_training_resume_of_a_plain_state_dict_is_refused(small_run, tmp_path, capsys):
    """A plain state_dict given as X.resume.pt: one line (not KeyError: 'settings')."""
    from chunkser.commands import training
    out = tmp_path / 'M'
    assert training.main(small_run + ['--out-dir', str(out)]) == 0
    base = os.path.join(out, ckpt_in(out)[0][:-len('.pth.tar')])
    torch.save(torch.load(base + '.pth.tar', weights_only=True), base + '.resume.pt')
    msg, _ = run_training(small_run + ['--resume'], out, capsys)
    assert 'a plain state_dict' in msg and msg.startswith(base + '.resume.pt'), msg


def test_training_resume_copied_alone_is_refused(small_run, tmp_path, capsys):
    """A finished run's resume.pt copied into an empty folder: one line naming the missing checkpoint (it used to
    exit 0 and name a file that does not exist)."""
    from chunkser.commands import training
    out, copy = tmp_path / 'M', tmp_path / 'copy'
    assert training.main(small_run + ['--out-dir', str(out)]) == 0
    name = ckpt_in(out)[0][:-len('.pth.tar')]
    copy.mkdir()
    os.link(os.path.join(out, name + '.resume.pt'), copy / (name + '.resume.pt'))
    msg, out_text = run_training(small_run + ['--resume'], copy, capsys)
    assert 'copied without its checkpoint' in msg and name + '.pth.tar' in msg, msg
    assert ckpt_in(copy) == []


def test_second_training_on_the_same_names_is_refused(small_run, tmp_path, capsys):
    """While a run holds the lock beside its files, a second one on the same names stops in one line naming the
    running one, before writing anything."""
    from chunkser.commands import training
    out = tmp_path / 'M'
    assert training.main(small_run + ['--out-dir', str(out)]) == 0
    name = ckpt_in(out)[0][:-len('.pth.tar')]
    before = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    code = f'import fcntl, sys, time; f = open(sys.argv[1], "w"); f.write("pid 4242 on host: training.py -seed 1"); ' \
           'f.flush(); fcntl.flock(f, fcntl.LOCK_EX); print("held", flush=True); time.sleep(60)'
    holder = subprocess.Popen([sys.executable, '-c', code, str(out / (name + '.lock'))], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        msg, _ = run_training(small_run, out, capsys)
    finally:
        holder.kill()
        holder.wait()
    assert 'is running (pid 4242 on host: training.py -seed 1)' in msg, msg
    assert {f: os.path.getmtime(out / f) for f in os.listdir(out) if f != name + '.lock'} == \
        {f: t for f, t in before.items() if f != name + '.lock'}
