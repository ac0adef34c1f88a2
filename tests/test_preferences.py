"""Preference labels (retrieval follow-up, SPEC-retrieval.md section 1): the reference's pairs from the golden
description, the detailed-label layouts of MSP-Podcast's releases, duplicates and refusals."""
import csv
import json
import os
import subprocess
import sys

import pytest

from chunkser.commands import preference_labels
from chunkser.retrieval.raters import parse_emo_detail, read_raters
from chunkser.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOS = ('Act', 'Dom', 'Val')
OUTS = ('training_pairs_{}.csv', 'validation_pairs_{}.csv')


@pytest.fixture(scope='module')
def golden_prefs(shared):
    return os.path.join(shared, 'golden', 'preferences')


@pytest.fixture(scope='module')
def details(golden_prefs):
    with open(os.path.join(golden_prefs, 'labels_detailed.json')) as f:
        return json.load(f)


def run(tmp_path, detailed, label_csv, emo='Act', name='prefs'):
    out = str(tmp_path / name)
    assert preference_labels.main(['-emo', emo, '--detailed', str(detailed), '--label-csv', str(label_csv),
                                   '--out-dir', out]) == 0
    return out


def assert_golden(out, golden_prefs, emo):
    for name in OUTS:
        with open(os.path.join(out, name.format(emo)), 'rb') as f, \
                open(os.path.join(golden_prefs, 'prefs', name.format(emo)), 'rb') as g:
            assert f.read() == g.read(), name.format(emo)


def test_golden_pairs(tmp_path, golden_prefs):
    """The reference's six files, byte for byte (hence row for row), from the JSON layout."""
    for emo in EMOS:
        out = run(tmp_path, os.path.join(golden_prefs, 'labels_detailed.json'),
                  os.path.join(golden_prefs, 'labels_concensus.csv'), emo, f'prefs_{emo}')
        assert_golden(out, golden_prefs, emo)
        assert sorted(os.listdir(out)) == sorted(n.format(emo) for n in OUTS)  # no temporary file left


# ----------------------------------------------------------------------------------
# the CSV layouts, written from the golden JSON

SECONDARY = {'N': 'H,S', 'H': 'N', 'A': ''}  # some secondaries (with a comma, empty) to parse past


def num(x, i):
    return f'{x:.6f}' if i % 2 else repr(float(x))  # '5.0' and '5.000000', as releases wrote them


def write_layout(path, details, layout):
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        if layout == 'v1.7':
            w.writerow(['FileName', 'EmoDetail'])
        else:
            w.writerow(['FileName', 'Workers' if layout == 'v1.6' else 'WorkerID', 'EmoClass_Major',
                        'EmoClass_Second', 'EmoAct', 'EmoVal', 'EmoDom'])
        i = 0
        for fname, raters in details.items():
            for rater, r in raters.items():
                i += 1
                sec = SECONDARY.get(r['EmoClass'], 'N')
                if layout == 'v1.7':
                    w.writerow([fname, f'{rater}; {r["EmoClass"]}; {sec}; A:{num(r["EmoAct"], i)}; '
                                       f'V:{num(r["EmoVal"], i)}; D:{num(r["EmoDom"], i)};'])
                else:
                    w.writerow([fname, rater, r['EmoClass'], sec] + [num(r[a], i) for a in ('EmoAct', 'EmoVal', 'EmoDom')])


@pytest.mark.parametrize('layout', ['v1.6', 'v1.7', 'v2.0'])
def test_csv_layouts_give_the_json_raters_and_pairs(tmp_path, golden_prefs, details, layout):
    path = tmp_path / 'labels_detailed.csv'
    write_layout(path, details, layout)
    got = read_raters(str(path))
    assert {f: list(r) for f, r in got.items()} == {f: list(r) for f, r in details.items()}  # same raters, in order
    assert got == {f: {w: {k: (float(v) if k != 'EmoClass' else v) for k, v in r.items()} for w, r in raters.items()}
                   for f, raters in details.items()}
    assert got == read_raters(os.path.join(golden_prefs, 'labels_detailed.json'))
    for emo in ('Act', 'Val'):
        assert_golden(run(tmp_path, path, os.path.join(golden_prefs, 'labels_concensus.csv'), emo, emo), golden_prefs, emo)


def test_emo_detail():
    assert parse_emo_detail('WORKER00012; Happy; Neutral,Sad; A:4.000000; V:5.5; D:3.0;') == \
        ('WORKER00012', {'EmoAct': 4.0, 'EmoVal': 5.5, 'EmoDom': 3.0, 'EmoClass': 'Happy'})
    assert parse_emo_detail('WORKER1; N; A:4; V:5; D:3')[1]['EmoDom'] == 3.0  # no secondaries, no last ';'
    assert parse_emo_detail('WORKER1; N; A:4; V:5;')[1]['EmoDom'] is None       # left out: refused only for Dom
    for bad in ('', 'WORKER1', 'WORKER1; N', 'WORKER1; N; A:x; V:5; D:3;', 'A:4; V:5; D:3;', 'WORKER1; N; A:4; junk'):
        assert parse_emo_detail(bad) is None, bad


def test_rater_listed_twice_last_counts(tmp_path, capsys):
    js = tmp_path / 'd.json'
    js.write_text('{"a.wav": {"W1": {"EmoAct": 1.0}, "W2": {"EmoAct": 2.0}, "W1": {"EmoAct": 7.0}}}')
    assert read_raters(str(js)) == {'a.wav': {'W2': {'EmoAct': 2.0, 'EmoVal': None, 'EmoDom': None, 'EmoClass': None},
                                              'W1': {'EmoAct': 7.0, 'EmoVal': None, 'EmoDom': None, 'EmoClass': None}}}
    err = capsys.readouterr().err
    assert 'warning' in err and str(js) in err
    cs = tmp_path / 'd.csv'
    cs.write_text('FileName,EmoDetail\na.wav,W1; N; ; A:1; V:1; D:1;\na.wav,W2; N; A:2; V:2; D:2;\n'
                  'a.wav,W1; H; A:7; V:7; D:7;\n')
    got = read_raters(str(cs))['a.wav']
    assert list(got) == ['W2', 'W1'] and got['W1']['EmoAct'] == 7.0 and got['W1']['EmoClass'] == 'H'
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'warning' in err and str(cs) in err


def test_no_duplicate_no_warning(tmp_path, golden_prefs, capsys):
    read_raters(os.path.join(golden_prefs, 'labels_detailed.json'))
    assert 'warning' not in capsys.readouterr().err


# ----------------------------------------------------------------------------------
# refusals: one line naming the file, exit 2, nothing written

LABELS = 'FileName,EmoAct,EmoVal,EmoDom,Split_Set\na.wav,3,3,3,Train\nb.wav,4,4,4,Train\nc.wav,5,5,5,Validation\n'
GOOD = 'FileName,Workers,EmoClass_Major,EmoClass_Second,EmoAct,EmoVal,EmoDom\n'
REFUSED = {
    'no raters for b.wav': GOOD + 'a.wav,W1,N,,3,3,3\nc.wav,W1,N,,3,3,3\n',
    'no raters for c.wav': GOOD + 'a.wav,W1,N,,3,3,3\nb.wav,W1,N,,3,3,3\n',  # Validation: Train not written either
    'rater W2 has no EmoAct': GOOD + 'a.wav,W1,N,,3,3,3\nb.wav,W2,N,,,3,3\nc.wav,W1,N,,3,3,3\n',
    'unreadable EmoDetail': 'FileName,EmoDetail\na.wav,W1; N; A:3; V:3; D:3;\nb.wav,W1 N A3\n',
    'columns found: FileName, Rater, Act': 'FileName,Rater,Act\na.wav,W1,3\n',
    'rater W1 has no EmoAct ': '{"a.wav": {"W1": {"EmoAct": 3}}, "b.wav": {"W1": {"EmoVal": 3}}, "c.wav": {"W1": {"EmoAct": 3}}}',
    'rater W1 has no EmoAct value': 'FileName,EmoDetail\na.wav,W1; N; A:3; V:3; D:3;\nb.wav,W1; N; V:3; D:3;\n'
                                    'c.wav,W1; N; A:3; V:3; D:3;\n',
}


@pytest.mark.parametrize('what', list(REFUSED))
def test_refusals(tmp_path, what):
    det = tmp_path / ('d.json' if REFUSED[what].startswith('{') else 'd.csv')
    det.write_text(REFUSED[what])
    (tmp_path / 'labels.csv').write_text(LABELS)
    out = tmp_path / 'prefs'
    with pytest.raises(UserError) as e:
        preference_labels.main(['--detailed', str(det), '--label-csv', str(tmp_path / 'labels.csv'),
                                '--out-dir', str(out)])
    msg = str(e.value)
    assert what.strip() in msg and str(det) in msg and '\n' not in msg
    assert not out.exists()


def test_refusal_exit_code(tmp_path):
    det = tmp_path / 'd.csv'
    det.write_text(REFUSED['no raters for b.wav'])
    (tmp_path / 'labels.csv').write_text(LABELS)
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'preference_labels.py'), '--detailed', str(det),
                        '--label-csv', str(tmp_path / 'labels.csv'), '--out-dir', str(tmp_path / 'prefs')],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count('\n') == 0 and 'Traceback' not in p.stderr and 'b.wav' in p.stderr
    assert not (tmp_path / 'prefs').exists()
