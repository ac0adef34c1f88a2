"""A self-supervised speech model inside the network (fine-tuning): audio -> its hidden states -> the chunk-level
network's input.

An audio network's ModelSpec carries `backbone`, a dict:
    config      the transformers config of the model (WavLM, wav2vec 2.0, HuBERT), as config.json holds it: the
                checkpoint rebuilds the model from it, without the folder it came from
    layers      'all' (the learned softmax-weighted sum of every hidden state, SUPERB's convention) or L (one)
    finetune    whether the transformer trains (the convolutional feature encoder never does)
    normalize   whether the waveform is made zero mean, unit variance first (the preprocessor's do_normalize)

The network's input is what utils.frame_batch makes of (N, 1) waveforms: (B, N_max, 1) float32, NaN after each
utterance's end. Each utterance is normalised over its own samples, padded to one receptive field if shorter, and
goes through the model so that its frames do not depend on the batch: models whose convolutions end in a layer
norm per frame (feat_extract_norm 'layer': WavLM-large, wav2vec 2.0 large) take the batch at once with an attention
mask; models with a group norm over the whole input (the base models) see each utterance alone, since padding would
change that norm's statistics.

Training changes two things of the config, kept in the checkpoint's: no layer drop and no SpecAugment masking
(both random draws outside our seeded generators' reach under torchrun, and layer drop leaves parameters unused).
"""
import contextlib
import warnings

import torch
import torch.nn as nn

from .features.frontend import frame_count, receptive_field
from .utils import UserError

TRAINING_CHANGES = dict(layerdrop=0.0, apply_spec_augment=False)


def build_config(d):
    """The transformers config of a backbone dict, with the training changes."""
    from transformers import AutoConfig
    cfg = {k: v for k, v in d['config'].items() if k not in ('model_type', 'transformers_version', 'architectures')}
    return AutoConfig.for_model(d['config']['model_type'], **{**cfg, **TRAINING_CHANGES})


class Backbone(nn.Module):
    """(B, N, 1) waveforms, NaN after each end -> (B, T, D) hidden states (the layer, or the weighted sum of all),
    (B,) valid frames of each. Keys: model.* (transformers' own), layer_weights ('all' only)."""

    def __init__(self, d):
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging
        logging.set_verbosity_error()
        self.cfg, self.layers = d['config'], d['layers']
        self.finetune, self.normalize = d['finetune'], d['normalize']
        try:
            self.model = AutoModel.from_config(build_config(d))
        except Exception as e:  # a config transformers cannot build (a checkpoint's JSON may say anything)
            raise UserError(f'backbone config: transformers cannot build this {d["config"]["model_type"]} model '
                            f'({type(e).__name__}: {e})'[:300])
        self.model.freeze_feature_encoder()  # the convolutions never train
        for p in self.model.parameters() if not self.finetune else self.unused_parameters():
            p.requires_grad_(False)
        if self.layers == 'all':  # one weight per hidden state (the transformer's input and each layer's output)
            self.layer_weights = nn.Parameter(torch.zeros(self.cfg['num_hidden_layers'] + 1))
        self.masked = self.model.config.feat_extract_norm == 'layer'
        self.kernels, self.strides = list(self.cfg['conv_kernel']), list(self.cfg['conv_stride'])
        self.receptive = receptive_field(self.kernels, self.strides)
        self.transformer_trains = self.finetune  # False for the first --freeze-frontend-steps updates

    def unused_parameters(self):
        """What fine-tuning leaves alone: the convolutions; SpecAugment's mask embedding (no SpecAugment here); with
        one layer L, the layers after it, which its hidden state never reaches. (A model may hold more parameters
        that no hidden state uses, e.g. a final layer norm: under torchrun the trainer tells DDP so.)"""
        m = self.model
        unused = list(m.feature_extractor.parameters())
        if getattr(m, 'masked_spec_embed', None) is not None:
            unused.append(m.masked_spec_embed)
        if self.layers != 'all' and self.layers < self.cfg['num_hidden_layers']:
            unused += [p for layer in m.encoder.layers[self.layers:] for p in layer.parameters()]
        return unused

    def train(self, mode=True):
        super().train(mode)
        if not self.finetune:  # a frozen model is always in eval mode: no dropout in what it gives
            self.model.eval()
        return self

    def mixed(self, states):
        """The hidden states (tuple of L+1 (B, T, D)) -> the chosen layer, or their softmax-weighted sum."""
        if self.layers != 'all':
            return states[self.layers]
        w = torch.softmax(self.layer_weights, dim=0)  # (L+1,)
        return torch.einsum('l,lbtd->btd', w.to(states[0].dtype), torch.stack(states))

    def waveforms(self, x):
        """(B, N, 1) NaN-padded -> (B, N') float32 waveforms, each normalised over its own samples and zero after
        them (N' >= one receptive field), and (B,) sample counts (at least one receptive field)."""
        valid = ~torch.isnan(x[..., 0])  # (B, N)
        n = valid.sum(1)  # (B,)
        w = torch.where(valid, x[..., 0], torch.zeros((), dtype=x.dtype, device=x.device))
        if self.normalize:  # the feature extractor's zero_mean_unit_var_norm, per utterance, in float64 as it is
            w64, count = w.double(), n.clamp(min=1)[:, None].double()
            mean = w64.sum(1, keepdim=True) / count
            var = (((w64 - mean) * valid) ** 2).sum(1, keepdim=True) / count
            w = torch.where(valid, ((w64 - mean) / torch.sqrt(var + 1e-7)).to(w.dtype),
                            torch.zeros((), dtype=w.dtype, device=w.device))
        if w.shape[1] < self.receptive:
            w = nn.functional.pad(w, (0, self.receptive - w.shape[1]))
        return w, n.clamp(min=self.receptive)

    def forward(self, x):
        wave, n = self.waveforms(x)  # (B, N'), (B,)
        frames = frame_count(n, self.kernels, self.strides)  # (B,), n already at least one receptive field
        grad = self.training and self.transformer_trains
        with contextlib.nullcontext() if grad else torch.no_grad(), warnings.catch_warnings():
            # WavLM hands torch's attention a float bias beside a bool padding mask, which torch warns of each call
            warnings.filterwarnings('ignore', 'Support for mismatched key_padding_mask', UserWarning)
            if self.masked:  # one call: the attention mask hides each utterance's padding
                mask = torch.arange(wave.shape[1], device=wave.device)[None, :] < n[:, None]  # (B, N')
                states = self.model(wave, attention_mask=mask.long(), output_hidden_states=True).hidden_states
            else:  # group norm over the whole input: each utterance alone, then padded with zeros to the longest
                T = int(frames.max())
                outs = [self.model(wave[b:b + 1, :int(n[b])], output_hidden_states=True).hidden_states
                        for b in range(len(wave))]
                states = tuple(torch.cat([nn.functional.pad(o[l], (0, 0, 0, T - o[l].shape[1])) for o in outs])
                               for l in range(len(outs[0])))
        return self.mixed(states), frames  # (B, T, D), (B,)

    def trainable_transformer(self):
        """The backbone's parameters that fine-tuning trains (its own learning rate): the transformer's."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def layer_summary(self):
        """'all': the learned layer weights (softmax, sum 1), for the JSON and the plot; else {}."""
        if self.layers != 'all':
            return {}
        return {'layer_weights': [round(float(v), 6) for v in torch.softmax(self.layer_weights.detach().float(), 0)]}


def chunks_of(h, frames, m, k):
    """(B, T, D) hidden states, (B,) valid frames -> (B*k, m, D) chunks by the dynamic chunk split of each
    utterance's own frames (utils.DynamicChunkSplitData: step int((T - m) / (k - 1)); an utterance shorter than m
    padded at the front with zeros)."""
    B, T, D = h.shape
    hp = nn.functional.pad(h, (0, 0, m, 0))  # (B, m + T, D): m zero frames first, frame t at row m + t
    step = torch.where(frames >= m, (frames - m) // max(k - 1, 1), torch.zeros_like(frames)) if k > 1 else \
        torch.zeros_like(frames)  # (B,)
    start = torch.where(frames[:, None] >= m, m + torch.arange(k, device=h.device)[None, :] * step[:, None],
                        frames[:, None].expand(B, k))  # (B, k) first row in hp
    idx = start[..., None] + torch.arange(m, device=h.device)  # (B, k, m)
    return hp[torch.arange(B, device=h.device)[:, None, None], idx].reshape(B * k, m, D)


def frames_of(h, frames):
    """(B, T, D) hidden states, (B,) valid frames -> (B, T, D) with NaN after each utterance's frames: an
    utterance-level head's input (utils.frame_batch's convention)."""
    valid = torch.arange(h.shape[1], device=h.device)[None, :] < frames[:, None]  # (B, T)
    return h.masked_fill(~valid[..., None], float('nan'))
