"""chunkser: chunk-level speech emotion recognition (Lin & Busso), its networks, training, scoring and prediction.

The public API, loaded on first use so that `import chunkser` stays light:

    from chunkser import predict_files, ModelSpec, build_model, load_model, UserError
"""
import importlib

__version__ = '1.0.0'

_API = {'predict_files': 'inference', 'ModelSpec': 'model', 'build_model': 'model', 'load_model': 'checkpoint',
        'UserError': 'utils'}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f'.{_API[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
