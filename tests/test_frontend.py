"""Self-supervised front ends (frontend.py, feature_extraction.py --frontend) on tiny WavLM and wav2vec 2.0 models
built here from configs with a fixed seed (nothing is downloaded): the features equal the model's hidden states on
the resampled mono waveform, do_normalize is honoured, frame times, windows of long recordings, frontend.json,
resuming and the refusals."""
import hashlib
import json
import os
import sys

import numpy as np
import pytest
import scipy.io
import scipy.signal
import soundfile
import torch

from chunkser.commands import feature_extraction
from chunkser.features import frontend
from chunkser.utils import UserError, run_cli
from conftest import need_transformers

transformers = need_transformers(module_level=True)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def save_tiny(folder, kind, do_normalize=True, seed=0):
    """A tiny random-weight model of `kind` (wavlm | wav2vec2) saved with save_pretrained; do_normalize None: no
    preprocessor config."""
    torch.manual_seed(seed)
    cfg = {'wavlm': transformers.WavLMConfig, 'wav2vec2': transformers.Wav2Vec2Config}[kind](**TINY)
    model = transformers.AutoModel.from_config(cfg).eval()
    model.save_pretrained(folder)
    if do_normalize is not None:
        transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """kind -> the folder of a tiny model; 'wavlm' says do_normalize false (as wavlm-base-plus), 'wav2vec2' true."""
    d = tmp_path_factory.mktemp('tiny')
    return {'wavlm': save_tiny(d / 'wavlm', 'wavlm', do_normalize=False),
            'wav2vec2': save_tiny(d / 'wav2vec2', 'wav2vec2', do_normalize=True)}


def hidden_states(folder, x, normalize, layer=-1):
    """The model's own hidden_states[layer] on a (N,) 16 kHz waveform, through transformers alone."""
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x.astype(np.float32))[None], output_hidden_states=True).hidden_states[layer][0].numpy()


def speechlike(seconds, sr, channels=1, seed=0):
    """A waveform with some structure: chirps and noise, (N, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (150 + 80 * np.sin(2 * np.pi * 0.7 * t)) * t)[:, None] + 0.05 * rng.standard_normal((len(t), channels))
    return x * np.linspace(0.5, 1.0, channels)[None]


def write_wav(path, x, sr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, x, sr, subtype='FLOAT')
    return path


def extract(tmp_path, model, *more, wav_dir=None, out='feat'):
    argv = ['--wav-dir', str(wav_dir or tmp_path / 'wav'), '--out-dir', str(tmp_path / out), '--frontend', model,
            '--device', 'cpu', *map(str, more)]
    return feature_extraction.main(argv)


@pytest.mark.numeric
@pytest.mark.parametrize('kind', ['wavlm', 'wav2vec2'])
def test_44k_stereo_equals_hidden_states(tiny, tmp_path, kind):
    """A 44.1 kHz stereo file: its features are the model's last hidden states on the down-mixed, resampled
    waveform (normalised exactly for the model that says do_normalize), with frame times index x 0.02 s."""
    x = speechlike(3.3, 44100, channels=2)
    write_wav(tmp_path / 'wav' / 'a.wav', x, 44100)
    assert extract(tmp_path, tiny[kind]) == 0
    data = scipy.io.loadmat(tmp_path / 'feat' / 'a.mat')['Audio_data']
    mono = scipy.signal.resample_poly(x.mean(axis=1), 160, 441)  # (N,) 16 kHz
    want = hidden_states(tiny[kind], mono, normalize=kind == 'wav2vec2')
    T = (len(mono) - 400) // 320 + 1
    assert data.dtype == np.float32 and data.shape == (T, 1 + 32) == (len(want), 1 + want.shape[1])
    np.testing.assert_allclose(data[:, 0], np.arange(T) * 0.02, rtol=1e-6, atol=0)
    np.testing.assert_allclose(data[:, 1:], want, rtol=0, atol=1e-5)
    rec = json.load(open(tmp_path / 'feat' / 'frontend.json'))
    sha = lambda name: hashlib.sha256(open(os.path.join(tiny[kind], name), 'rb').read()).hexdigest()
    assert rec['config_sha256'] == sha('config.json') and rec['weights_sha256'] == sha('model.safetensors')
    assert (rec['frontend'], rec['layer'], rec['hop'], rec['width'], rec['normalize']) == \
        (tiny[kind], 2, 0.02, 32, kind == 'wav2vec2')


@pytest.mark.numeric
def test_do_normalize_and_layer_honoured(tiny, tmp_path):
    """do_normalize false (wavlm here) is not normalised, --normalize yes overrides it, and the two differ by far
    more than rounding; --layer 0 is the first transformer layer's input."""
    x = speechlike(2.0, 16000)[:, 0] * 0.2 + 0.05  # a DC offset and a small scale: normalisation shows
    write_wav(tmp_path / 'wav' / 'a.wav', x, 16000)
    x = soundfile.read(tmp_path / 'wav' / 'a.wav', dtype='float64')[0]
    assert extract(tmp_path, tiny['wavlm'], out='plain') == 0
    assert extract(tmp_path, tiny['wavlm'], '--normalize', 'yes', out='normed') == 0
    assert extract(tmp_path, tiny['wavlm'], '--layer', 0, out='layer0') == 0
    got = {k: scipy.io.loadmat(tmp_path / k / 'a.mat')['Audio_data'][:, 1:] for k in ('plain', 'normed', 'layer0')}
    np.testing.assert_allclose(got['plain'], hidden_states(tiny['wavlm'], x, False), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got['normed'], hidden_states(tiny['wavlm'], x, True), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got['layer0'], hidden_states(tiny['wavlm'], x, False, layer=0), rtol=0, atol=1e-5)
    assert np.abs(got['plain'] - got['normed']).max() > 1e-2
    assert json.load(open(tmp_path / 'layer0' / 'frontend.json'))['layer'] == 0


def command(monkeypatch, capsys, main, *argv):
    """A command as its __main__ runs it (utils.run_cli, in this process: no second import of transformers) ->
    (exit code, stderr lines)."""
    monkeypatch.setattr(sys, 'argv', ['cmd', *map(str, argv)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_missing_preprocessor_config_refused(tmp_path, monkeypatch, capsys):
    """No preprocessor_config.json: refused in one line (exit 2, nothing written) unless --normalize is given."""
    model = save_tiny(tmp_path / 'bare', 'wavlm', do_normalize=None)
    write_wav(tmp_path / 'wav' / 'a.wav', speechlike(1.0, 16000), 16000)
    code, lines = command(monkeypatch, capsys, feature_extraction.main, '--wav-dir', tmp_path / 'wav',
                          '--out-dir', tmp_path / 'feat', '--frontend', model)
    assert code == 2
    assert lines == [f'error: {model}: no preprocessor_config.json, so whether the model '
                                             'expects a normalised waveform is unknown: pass --normalize yes or '
                                             '--normalize no']
    assert not os.path.exists(tmp_path / 'feat')
    assert extract(tmp_path, model, '--normalize', 'no') == 0
    assert json.load(open(tmp_path / 'feat' / 'frontend.json'))['normalize'] is False


def test_short_input_and_refusals(tiny, tmp_path):
    """Under 400 samples: padded to one frame. --layer out of range, and a folder of another front end (or of
    LLDs) are refused before anything is written."""
    write_wav(tmp_path / 'wav' / 'tiny.wav', speechlike(0.01, 16000), 16000)  # 160 samples
    assert extract(tmp_path, tiny['wavlm']) == 0
    assert scipy.io.loadmat(tmp_path / 'feat' / 'tiny.mat')['Audio_data'].shape == (1, 33)
    with pytest.raises(UserError, match='--layer 3: expected 0 .* to 2'):
        extract(tmp_path, tiny['wavlm'], '--layer', 3, out='other')
    with pytest.raises(UserError, match=r'frontend.json: features of .*wavlm layer 2 .* not of .*wav2vec2 layer 2'):
        extract(tmp_path, tiny['wav2vec2'])
    with pytest.raises(UserError, match='holds features of a --frontend'):
        feature_extraction.main(['--wav-dir', str(tmp_path / 'wav'), '--out-dir', str(tmp_path / 'feat')])
    os.makedirs(tmp_path / 'lld')
    scipy.io.savemat(tmp_path / 'lld' / 'x.mat', {'Audio_data': np.zeros((3, 131))})
    with pytest.raises(UserError, match='without frontend.json'):
        extract(tmp_path, tiny['wavlm'], out='lld')
    assert sorted(os.listdir(tmp_path / 'lld')) == ['x.mat'] and not os.path.exists(tmp_path / 'other')
    with pytest.raises(UserError, match='nowhere: front end not found'):
        extract(tmp_path, str(tmp_path / 'nowhere'))
    os.makedirs(tmp_path / 'silent')
    with pytest.raises(UserError, match='no .wav or .flac files'):
        extract(tmp_path, tiny['wavlm'], wav_dir=tmp_path / 'silent', out='empty')
    assert not os.path.exists(tmp_path / 'empty')


def test_resume_skips_existing(tiny, tmp_path, capsys):
    for name in ('a', 'b'):
        write_wav(tmp_path / 'wav' / f'{name}.wav', speechlike(1.0, 16000, seed=ord(name)), 16000)
    assert extract(tmp_path, tiny['wavlm']) == 0
    mtime = os.stat(tmp_path / 'feat' / 'a.mat').st_mtime_ns
    os.remove(tmp_path / 'feat' / 'b.mat')
    capsys.readouterr()
    assert extract(tmp_path, tiny['wavlm']) == 0
    assert '1 of 2 files already have a .mat' in capsys.readouterr().out
    assert os.stat(tmp_path / 'feat' / 'a.mat').st_mtime_ns == mtime and os.path.isfile(tmp_path / 'feat' / 'b.mat')


def test_window_spans_cover_every_frame_once():
    """Windows on the hop grid, the last reaching the end; the kept frames tile 0..T exactly."""
    hop, n = 320, 16000 * 47 + 123
    spans = frontend.window_spans(n, hop, 1000, 200)  # 20 s windows, 4 s overlap
    T = (n - 400) // hop + 1
    assert spans[0, 0] == 0 and spans[-1, 1] == n and (spans[:, 0] % hop == 0).all()
    assert (spans[:, 1] - spans[:, 0] <= 1000 * hop).all()
    kept = np.concatenate([np.arange(a, min(b, T)) for a, b in spans[:, 2:]])
    assert (kept == np.arange(T)).all()
    # each window computes the frames it keeps: from its start to its end's last whole frame
    first, last = spans[:, 0] // hop, (spans[:, 1] - 400) // hop + 1
    assert (spans[:, 2] >= first).all() and (np.minimum(spans[:, 3], T) <= last).all()
    assert len(frontend.window_spans(16000 * 20, hop, 1000, 200)) == 1


@pytest.mark.parametrize('win,overlap', [(1000, 200), (100, 20), (100, 21), (50, 1)])
def test_window_cut_in_the_middle_of_the_overlap(win, overlap):
    """Neighbouring windows hand over at the middle of their overlap (frames from the next window's first one to
    the previous window's last one), the lower middle frame for an odd overlap: both windows then have the most
    context on either side of the cut, and nowhere else does the cut fall."""
    hop, n = 320, 16000 * 47 + 123
    spans = frontend.window_spans(n, hop, win, overlap)
    assert len(spans) > 2
    first = spans[:, 0] // hop  # (k,) each window's first frame
    overlap_lo, overlap_hi = first[1:], first[:-1] + win  # (k-1,) the frames both windows compute: [lo, hi)
    assert (overlap_hi - overlap_lo == overlap).all()
    cut = overlap_lo + (overlap_hi - overlap_lo) // 2  # the first frame of the next window's share
    assert (spans[1:, 2] == cut).all() and (spans[:-1, 3] == cut).all()


@pytest.mark.numeric
def test_long_recording_across_a_window_boundary(tiny):
    """A 5 s recording in 2 s windows overlapping by 0.4 s: every frame is its window's own hidden state, so frames
    near a cut differ from the whole-recording pass only by what the window changes (measured, stated below)."""
    f = frontend.SSLFrontEnd(tiny['wavlm'], device='cpu')
    x = speechlike(5.0, 16000)[:, 0]
    whole = f.features(x)  # one pass (20 s windows)
    win = f.features(x, window_s=2.0, overlap_s=0.4)
    spans = frontend.window_spans(len(x), 320, 100, 20)
    assert len(spans) == 3 and win.shape == whole.shape == ((len(x) - 400) // 320 + 1, 32)
    for s, e, a, b in spans:
        own = hidden_states(tiny['wavlm'], x[s:e], False)
        b = min(b, len(win))
        np.testing.assert_allclose(win[a:b], own[a - s // 320:b - s // 320], rtol=0, atol=1e-5)
    # the windows change the features (group norm over the window, attention within it): for this tiny random
    # model in 2 s windows the mean change is 13% of the features' spread (README: what 20 s / 4 s change)
    rel = np.abs(win - whole).mean() / whole.std()
    assert rel > 1e-2, rel


def test_hub_name_resolves_through_the_cache(tiny, tmp_path, monkeypatch):
    """A hub name goes through huggingface_hub.snapshot_download (faked here: no network), config, preprocessor
    config and safetensors weights only; the record keeps the name and the folder the files came from."""
    import huggingface_hub
    asked = []
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', lambda name, allow_patterns: asked.append(
        (name, allow_patterns)) or tiny['wav2vec2'])
    write_wav(tmp_path / 'wav' / 'a.wav', speechlike(1.0, 16000), 16000)
    assert extract(tmp_path, 'someone/tiny-w2v') == 0
    rec = json.load(open(tmp_path / 'feat' / 'frontend.json'))
    assert (rec['frontend'], rec['folder'], rec['normalize']) == ('someone/tiny-w2v', tiny['wav2vec2'], True)
    assert asked == [('someone/tiny-w2v', ['config.json', 'preprocessor_config.json', '*.safetensors',
                                           '*.safetensors.index.json'])]
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', lambda *a, **k: (_ for _ in ()).throw(OSError('offline')))
    with pytest.raises(UserError, match=r'someone/other: not a local folder, and the hub did not give it \(OSError: offline\)'):
        extract(tmp_path, 'someone/other', out='o')
