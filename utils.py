"""The reference's utils.py, as its users import it from the checkout: the dynamic chunk split, the CCC loss and
metric, and the z-normalisation. The code lives in chunkser/utils.py; this file only re-exports it."""
from chunkser.utils import (DEFAULT_C, DEFAULT_M, DEFAULT_N, FEAT_DIM, HOP, DynamicChunkSplitData, UserError,  # noqa: F401
                            cc_coef, chunk_batch, chunk_spans, chunk_starts, chunk_step, evaluation_metrics,
                            pad_to_chunk, z_normalize)
