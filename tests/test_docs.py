"""The documentation tells the truth about the tree: every relative link of README.md and docs/*.md resolves (files
and #anchors), the README stays short, the architecture page's file map names every Python file of the root and the
package (and only files that exist), its command table names exactly the commands, the tests page names every test
file; and the README's quick start and Python example run as printed."""
import glob
import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from chunkser.cli import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
MAX_README_LINES = 300
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.M | re.S)


def read(path):
    with open(path) as f:
        return f.read()


def prose(text):
    """The text without its fenced code blocks (a link inside code is not a link)."""
    return FENCE.sub('', text)


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, _, - and spaces kept),
    spaces to hyphens."""
    text = re.sub(r'[`*]', '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path):
    return {slug(h) for h in re.findall(r'^#{1,6} (.+)$', prose(read(path)), re.M)}


def links(path):
    return LINK.findall(prose(read(path)))


def section(path, start, end=None):
    """The text from the heading `start` to the next heading of the same level (or `end`)."""
    text = read(path)
    i = text.index(start)
    level = start.split(' ')[0] + ' '
    rest = text[i + len(start):]
    j = rest.index(end) if end else (rest.find('\n' + level) if ('\n' + level) in rest else len(rest))
    return rest[:j]


def first_table(text):
    """The rows of the first markdown table in text (header and separator left out), as lists of cells."""
    rows, seen = [], False
    for line in text.splitlines():
        if line.startswith('|'):
            seen = True
            rows.append([c.strip() for c in line.strip('|').split('|')])
        elif seen:
            break
    return rows[2:]


def test_slug_is_githubs():
    assert slug('What trains (encoder × head × task)') == 'what-trains-encoder--head--task'
    assert slug("The paper's framework (Keras networks)") == 'the-papers-framework-keras-networks'
    assert slug('`predict_files` from Python') == 'predict_files-from-python'


def test_every_relative_link_resolves():
    bad = []
    for page in PAGES:
        for target in links(page):
            if re.match(r'[a-z]+:', target):  # http(s), mailto: not ours to check
                continue
            path, _, anchor = target.partition('#')
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(dest):
                bad.append(f'{os.path.relpath(page, ROOT)}: {target} (no such file)')
            elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
                bad.append(f'{os.path.relpath(page, ROOT)}: {target} (no such heading)')
    assert bad == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(ROOT, t.partition('#')[0])) for t in links(README)}
    assert set(PAGES[1:]) <= linked, set(PAGES[1:]) - linked


def test_readme_is_short():
    assert len(read(README).splitlines()) <= MAX_README_LINES


def test_no_words_a_user_cannot_act_on():
    """The pages speak of the project and its users: no paths outside the repository, no project history."""
    banned = [r'\.\./shared', r'SPEC[-.]', r'AVX-512 day', r'GPU machine', r'earlier issue', r'No session',
              r'\bissues? \d', r'#\d', r"project's (2-core )?machine", r'no option for the other encoders']
    found = [(os.path.relpath(p, ROOT), w) for p in PAGES for w in banned if re.search(w, read(p))]
    assert found == []


ARCHITECTURE = os.path.join(ROOT, 'docs', 'architecture.md')
MAP_END = '## How the code fits together'  # the file map is the page above this heading


def architecture_names(whole_page=False):
    text = read(ARCHITECTURE)
    return set(re.findall(r'`((?:[\w.-]+/)*[\w.-]+\.py)`', text if whole_page else text[:text.index(MAP_END)]))


def test_architecture_map_names_every_python_file_of_the_root_and_the_package():
    named = architecture_names()
    root = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, '*.py'))}
    package = {os.path.relpath(p, ROOT).replace(os.sep, '/')
               for p in glob.glob(os.path.join(ROOT, 'chunkser', '**', '*.py'), recursive=True)}
    package -= {p for p in package if p.endswith('/__init__.py') and p != 'chunkser/__init__.py'}  # empty ones
    assert root - named == set()
    assert package - named == set()


def test_architecture_map_names_only_files_that_exist():
    assert {f for f in architecture_names(whole_page=True) if not os.path.isfile(os.path.join(ROOT, f))} == set()


def test_architecture_command_table_names_exactly_the_commands():
    rows = first_table(section(ARCHITECTURE, '## The root'))
    named = [m for r in rows for m in re.findall(r'`(\w+)\.py`', r[0])]
    assert sorted(named) == sorted(set(COMMANDS) | {'bench'})


def test_tests_page_names_every_test_file():
    named = set(re.findall(r'`(test_\w+\.py)`', read(os.path.join(ROOT, 'docs', 'tests.md'))))
    files = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'tests', 'test_*.py'))}
    assert files - named == set()
    assert named - files == set()


def code_block(text, lang, containing):
    blocks = [body for fence, body in FENCE.findall(text) if fence == lang and containing in body]
    assert len(blocks) == 1, (lang, containing, len(blocks))
    return blocks[0]


def csv_rows(text):
    lines = [l for l in text.splitlines() if l.count(',') >= 6]
    return pd.read_csv(io.StringIO('\n'.join(lines)))


@pytest.fixture
def talk_wav(shared, tmp_path):
    """The README's talk.wav: a golden espeak-ng recording, and the golden openSMILE features of it."""
    shutil.copy(os.path.join(shared, 'golden', 'audio', 'excited.wav'), tmp_path / 'talk.wav')
    return os.path.join(shared, 'golden', 'audio', 'excited.mat')


def features_prediction(mat, upstream, capsys):
    """predict on the golden features of talk.wav with the released models given explicitly."""
    from chunkser.commands import predict
    capsys.readouterr()
    assert predict.main([mat, '--model-dir', upstream[0], '--norm-dir', upstream[1]]) in (0, None)
    return csv_rows(capsys.readouterr().out).iloc[0]


def test_readme_quick_start_runs_as_printed(talk_wav, upstream, tmp_path, capsys):
    """The shell block: pip install (the installed-wheel test covers it; here the checkout's package stands in),
    chunkser pretrained (offline: its one substitution is --from the released files' local copy), chunkser predict
    on talk.wav: the released models' values, equal to those of talk.wav's golden features."""
    lines = [l.strip() for l in code_block(read(README), 'sh', 'chunkser predict').splitlines() if l.strip()]
    assert lines[0] == 'pip install .', lines
    env = dict(os.environ, CHUNKSER_HOME=str(tmp_path / 'home'), PYTHONPATH=ROOT)
    out = ''
    for line in lines[1:]:
        argv = line.split()
        assert argv[0] == 'chunkser', line
        argv = [sys.executable, '-m', 'chunkser'] + argv[1:]
        if argv[3] == 'pretrained':
            argv += ['--from', os.path.dirname(upstream[0])]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (line, r.stderr)
        out = r.stdout
    row = csv_rows(out).iloc[0]
    assert row['file'] == 'talk.wav'
    want = features_prediction(talk_wav, upstream, capsys)
    got = [row[e] for e in ('Act', 'Val', 'Dom')]
    np.testing.assert_allclose(got, [want[e] for e in ('Act', 'Val', 'Dom')], rtol=0, atol=1e-5)
    assert all(1 < v < 7 for v in got) and row['voiced'] > 0.1


def test_readme_python_example_runs_as_printed(talk_wav, upstream, monkeypatch, capsys):
    """The Python block, run as printed with $CHUNKSER_HOME at the released files: the features' values."""
    code = code_block(read(README), 'python', 'predict_files')
    assert len(code.strip().splitlines()) <= 5  # the five-line example
    monkeypatch.setenv('CHUNKSER_HOME', os.path.dirname(upstream[0]))
    namespace = {}
    exec(compile(code, 'README.md', 'exec'), namespace)
    printed = capsys.readouterr().out
    df = namespace['df']
    assert list(df['file']) == ['talk.wav'] and 'talk.wav' in printed
    want = features_prediction(talk_wav, upstream, capsys)
    np.testing.assert_allclose(df[['Act', 'Val', 'Dom']].to_numpy()[0], [want[e] for e in ('Act', 'Val', 'Dom')],
                               rtol=0, atol=1e-5)
