"""The fixture that counts store builds, for the tests of the feature store and of the audio store (imported by
both: a fixture of conftest.py would be imported on the GPU machine too)."""
import pytest

from chunkser import store


@pytest.fixture
def builds(monkeypatch):
    """Counts calls of store.build_store (the audio store's builds go through it too)."""
    count = {'n': 0}
    real = store.build_store

    def counting(*a, **k):
        count['n'] += 1
        return real(*a, **k)
    monkeypatch.setattr(store, 'build_store', counting)
    return count
