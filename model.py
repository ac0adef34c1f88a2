"""The reference's model.py, as its users import it from the checkout: its four networks under their own names
(LSTMnet_MeanAtten, LSTMnet_GateAtten, LSTMnet_RnnAtten, LSTMnet_SelfAtten), and every network of the family as one
ModelSpec and build_model. The code lives in chunkser/model.py; this file only re-exports it."""
from chunkser.model import (ENCODERS, HEADS, TASKS, CNN1D, ChunkLevelSER, GatedHead, KerasLSTM,  # noqa: F401
                            LSTMnet_GateAtten, LSTMnet_MeanAtten, LSTMnet_RnnAtten, LSTMnet_SelfAtten, MeanHead,
                            ModelSpec, MultiHeadAttenVec, RnnAttenHead, SelfAttenHead, build_model)
