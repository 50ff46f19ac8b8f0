"""Fine-tuning schedules as a mixin for any nnU-Net trainer: linear LR warm-up and a frozen encoder at the start."""
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_sacl.nnunet.network import encoder_of
from nnunet_sacl.method.schedules import GroupWarmupPolyLRScheduler, encoder_is_frozen


class FineTuneScheduleMixin:
    """Put before an nnUNetTrainer subclass. Settings (class attributes):

    - ``finetune_warmup_epochs``: LR rises linearly to ``initial_lr`` over these epochs, then poly decay.
    - ``finetune_frozen_encoder_epochs``: the encoder gets no gradient for these epochs. The optimizer keeps all
      parameters throughout (frozen ones have no gradient, so SGD leaves them and their momentum untouched), so
      nothing is rebuilt at the switch and the poly schedule runs on by epoch.

    Under DDP (``nnUNetv2_train -num_gpus``, ``nnunet-sacl train``) the network is wrapped in DDP again whenever
    the set of trainable parameters changes: DDP registers its gradient all-reduce for the parameters that require
    a gradient when it is built, and one that stops getting gradients would leave its bucket waiting (an error at
    the next step). Every rank switches at the same epoch, and the new wrapper broadcasts rank 0's parameters and
    buffers, so the ranks hold equal weights after every switch.

    Both act on the trainer they are mixed into: in a SACLTrainer variant, phase 2 (phase 1 is its SACLPretrainer's).
    """
    finetune_warmup_epochs: int = 0
    finetune_frozen_encoder_epochs: int = 0

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        if self.finetune_warmup_epochs:    # the same warm-up and poly decay for every parameter group
            scheduler = GroupWarmupPolyLRScheduler(
                optimizer, [(self.initial_lr, self.finetune_warmup_epochs)] * len(optimizer.param_groups),
                self.num_epochs)
        return optimizer, scheduler

    def on_train_epoch_start(self):
        frozen = encoder_is_frozen(self.current_epoch, self.finetune_frozen_encoder_epochs)
        encoder = list(encoder_of(self.network).parameters())
        if any(p.requires_grad == frozen for p in encoder):
            for p in encoder:
                p.requires_grad_(not frozen)
            if isinstance(self.network, DDP):
                self.network = DDP(self.network.module, device_ids=self.network.device_ids)
        if self.finetune_frozen_encoder_epochs and self.current_epoch in (0, self.finetune_frozen_encoder_epochs):
            self.print_to_log_file(f"Encoder {'frozen' if frozen else 'trainable'} from epoch {self.current_epoch}")
        super().on_train_epoch_start()

