"""What training an audio network adds to the loop (--wav-dir --frontend [--finetune]): its spec fields, the
settings a resumed run must share, what its JSON records, the optimizer's two learning rates, the pretrained
weights copied in, the transformer held frozen for the first updates, and the learned layer weights' plot.
Every function here gives nothing (or today's value) for a network that reads features."""
import os

from ..backbone import TRAINING_CHANGES
from ..features.frontend import identity, read_record


def spec_fields(args, data):
    """The ModelSpec fields that say what the network reads: the features' front end and NormTerm, or an audio
    network's backbone (its config, layers, whether it trains), origin and label terms."""
    front, norm = data.backbone, data.norm
    if front is None:
        return dict(feat_dim=norm.feat_dim, norm_fingerprint=norm.fingerprint(),
                    norm_dir=os.path.abspath(args.norm_dir), frontend=read_record(args.feat_dir))
    layers = 'all' if args.layers == 'all' else front.layer
    config = {**front.model.config.to_dict(), **TRAINING_CHANGES}
    config.pop('_name_or_path', None)
    return dict(feat_dim=front.width, frontend=dict(front.record, layer=layers), labels=norm.to_json(),
                backbone=dict(config=config, layers=layers, finetune=bool(args.finetune), normalize=front.normalize))


def settings(args, data):
    """What a resumed audio run must share with the run it continues (nothing more for a features run)."""
    if data.backbone is None:
        return dict(feat_dir=os.path.abspath(args.feat_dir))
    return dict(feat_dir=None, wav_dir=os.path.abspath(args.wav_dir), frontend=identity(data.backbone.record),
                layers=args.layers, finetune=bool(args.finetune), frontend_lr=args.frontend_lr,
                freeze_frontend_steps=args.freeze_frontend_steps, labels=data.norm.to_json())


def provenance(args, data):
    """What the JSON records of how an audio network was trained."""
    if data.backbone is None:
        return dict(corpus=dict(feat_dir=os.path.abspath(args.feat_dir), label_csv=os.path.abspath(args.label_csv)))
    return dict(corpus=dict(wav_dir=os.path.abspath(args.wav_dir), label_csv=os.path.abspath(args.label_csv)),
                fine_tuned=bool(args.finetune), origin_sha256=data.backbone.record['weights_sha256'],
                frontend_lr=args.frontend_lr if args.finetune else None,
                freeze_frontend_steps=args.freeze_frontend_steps, grad_checkpointing=bool(args.grad_checkpointing))


def prepare(model, data, args):
    """A fresh audio network: the pretrained model's weights copied into its backbone; gradient checkpointing
    through the transformer on request."""
    if model.backbone is None:
        return model
    model.backbone.model.load_state_dict(data.backbone.model.state_dict())
    if args.grad_checkpointing:
        model.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    return model


def param_groups(model, lr, frontend_lr):
    """Adam's parameters: all of them at lr for a features network (the reference's); an audio network's head
    and layer weights at lr, its trainable transformer at frontend_lr (a frozen backbone trains nothing)."""
    if model.backbone is None:
        return model.parameters()
    backbone = {id(p) for p in model.backbone.model.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone and p.requires_grad]
    transformer = model.backbone.trainable_transformer()
    return [{'params': head, 'lr': lr}] + ([{'params': transformer, 'lr': frontend_lr}] if transformer else [])


def at_iteration(model, it, freeze_steps):
    """Before update `it` + 1: a fine-tuned transformer trains from update freeze_steps + 1 on."""
    if model.backbone is not None:
        model.backbone.transformer_trains = model.backbone.finetune and it >= freeze_steps


def layer_record(model):
    """The learned layer weights for the JSON ({} unless --layers all)."""
    return model.backbone.layer_summary() if model.backbone is not None else {}


def plot_layer_weights(path, weights, title):
    """The softmax layer weights of --layers all as bars, one per hidden state (0: the transformer's input)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(weights)), weights, color='tab:blue')
    ax.axhline(1 / len(weights), color='grey', lw=0.8, ls='--', label=f'uniform (1/{len(weights)})')
    ax.set_xlabel('hidden state (0: the transformer\'s input, L: its last layer)')
    ax.set_ylabel('weight (softmax, sum 1)')
    ax.set_xticks(range(len(weights)))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
