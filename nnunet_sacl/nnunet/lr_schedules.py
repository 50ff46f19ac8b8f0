"""Fine-tuning schedules for a pretrained encoder, as mixins for any nnU-Net trainer (SACL's phase 2, or stock
nnU-Net started from ``-pretrained_weights``). The curves are pure functions in ``nnunet_sacl.method.schedules``.

- ``PretrainedConventionMixin``: nnU-Net's convention for pretrained weights (its PretrainedTrainer, on nnU-Net's
  master branch, not in 2.8.1): initial LR 1e-3 instead of 1e-2, linear warm-up over the first 5% of the
  segmentation epochs (50 of 1000), then poly decay over the rest.
- ``EncoderDecoderLRMixin``: the encoder and the rest of the network (decoder, segmentation heads, and any other
  parameter group a trainer adds, e.g. the joint trainer's projection head) as separate parameter groups of
  nnU-Net's optimizer, each with its own peak LR and warm-up: by default the decoder at nnU-Net's 1e-2 with poly
  decay from epoch 0, the encoder at 0.1 x that, warmed up over the first 5% of the epochs.

Both compose with ``FineTuneScheduleMixin``'s frozen encoder (the optimizer keeps every parameter; a frozen one
gets no gradient), and both act on the trainer they are mixed into (in a SACLTrainer variant: phase 2; phase 1 is its
SACLPretrainer's).
"""
import torch

from nnunet_sacl.method.schedules import GroupWarmupPolyLRScheduler, convention_warmup_epochs
from nnunet_sacl.nnunet.network import encoder_of


class PretrainedConventionMixin:
    """Put before the trainer class. ``convention_lr`` (1e-3) replaces nnU-Net's ``initial_lr``;
    ``convention_warmup_fraction`` (0.05) of ``num_epochs`` are a linear warm-up, then poly."""
    convention_lr: float = 1e-3
    convention_warmup_fraction: float = 0.05

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.convention_lr

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        warmup = convention_warmup_epochs(self.num_epochs, self.convention_warmup_fraction)
        return optimizer, GroupWarmupPolyLRScheduler(optimizer, [(self.initial_lr, warmup)] * len(optimizer.param_groups),
                                                     self.num_epochs)


class EncoderDecoderLRMixin:
    """Put before the trainer class. The encoder's parameters become their own group (first) at
    ``encoder_lr_factor`` x ``initial_lr``, warmed up over ``encoder_warmup_fraction`` of the epochs; every other
    parameter keeps ``initial_lr``, warmed up over ``decoder_warmup_fraction`` (0: poly from epoch 0)."""
    encoder_lr_factor: float = 0.1
    encoder_warmup_fraction: float = 0.05
    decoder_warmup_fraction: float = 0.0

    def group_schedules(self) -> list:
        """(peak LR, warm-up epochs) of the encoder group and of the other groups."""
        encoder = (self.encoder_lr_factor * self.initial_lr,
                   convention_warmup_epochs(self.num_epochs, self.encoder_warmup_fraction)
                   if self.encoder_warmup_fraction else 0)
        rest = (self.initial_lr, convention_warmup_epochs(self.num_epochs, self.decoder_warmup_fraction)
                if self.decoder_warmup_fraction else 0)
        return [encoder, rest]

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        encoder_ids = {id(p) for p in encoder_of(self.network).parameters()}
        encoder_group, other_groups = [], []
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
            encoder_group += [p for p in group["params"] if id(p) in encoder_ids]
            rest = [p for p in group["params"] if id(p) not in encoder_ids]
            if rest:
                other_groups.append({**settings, "params": rest, "name": "decoder" if not other_groups else "other"})
        groups = [{**{k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "lr", "initial_lr")},
                   "params": encoder_group, "name": "encoder"}] + other_groups
        optimizer = type(optimizer)(groups, **optimizer.defaults)
        encoder, rest = self.group_schedules()
        return optimizer, GroupWarmupPolyLRScheduler(optimizer, [encoder] + [rest] * len(other_groups),
                                                     self.num_epochs)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        names = [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]
        self.print_to_log_file("Learning rates: " + ", ".join(
            f"{n} {g['lr']:.3g}" for n, g in zip(names, self.optimizer.param_groups)))
