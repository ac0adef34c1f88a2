"""A fixture of the plot tests (test_predict, test_segments): the figures predict's plots draw, kept by file name.
Not in conftest.py, which the GPU machine imports without opensmile (chunkser.plots pulls in the openSMILE front end)."""
import os

import pytest


@pytest.fixture
def figures(monkeypatch):
    """The figures predict's plots draw, kept by file name (plots.plot_chunks and plot_timeline still draw and save
    them)."""
    from chunkser import plots
    kept = {}
    for name in ('plot_chunks', 'plot_timeline'):
        def keep(*a, _f=getattr(plots, name), **k):
            kept[os.path.basename(a[0])] = fig = _f(*a, **k)
            return fig
        monkeypatch.setattr(plots, name, keep)
    return kept
