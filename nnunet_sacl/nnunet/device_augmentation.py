"""On-device augmentation for nnU-Net trainers: CPU workers only crop, the training device transforms the batch."""
import torch

from nnunet_sacl.method.augment import augment_batch, downsample_for_deep_supervision
from nnunet_sacl.nnunet.augment_settings import augment_settings_from_trainer, refuse_augmentation_on_the_cpu
from nnunet_sacl.nnunet.update import batch_on_device


def make_augmenter(trainer):
    """(settings read from the trainer's own nnU-Net augmentation, a generator on its device seeded per rank).
    Raises NotReproducible for augmentation the device cannot reproduce, or that the CPU workers would apply too,
    before any training."""
    refuse_augmentation_on_the_cpu(trainer)
    generator = torch.Generator(device=trainer.device)
    generator.manual_seed(torch.initial_seed() % 2 ** 63 + trainer.local_rank)
    return augment_settings_from_trainer(trainer), generator


class OnDeviceAugmentationMixin:
    """Put before an nnUNetTrainer subclass: its training batches are augmented by ``nnunet_sacl.method.augment`` on the
    training device instead of by nnU-Net's CPU workers, which then only crop nnU-Net's initial patch size. For
    machines with few CPU cores per GPU, where nnU-Net's own augmentation cannot keep up. Validation is unchanged.
    The device applies the transforms of the class's own get_training_transforms behind this mixin (e.g. mixed in
    front of nnUNetTrainerNoMirroring it does not mirror); what it cannot reproduce is refused at initialize()."""
    pretrain_augmentation = "torch"   # SACL trainers: phase 1 on the device as well

    def initialize(self):
        super().initialize()
        self.augment_settings, self.augment_generator = make_augmenter(self)

    def get_training_transforms(self, *args, **kwargs):
        return None                   # the CPU workers only crop

    def augmentation_transforms(self, *args, **kwargs):
        """What the device applies: the transforms of the get_training_transforms behind this mixin."""
        return super().get_training_transforms(*args, **kwargs)

    def train_step(self, batch: dict) -> dict:
        data, seg = batch_on_device(batch, self.device)
        data, seg = augment_batch(data, seg, self.augment_settings, self.augment_generator)
        target = downsample_for_deep_supervision(seg, self._get_deep_supervision_scales()) \
            if self.enable_deep_supervision else seg
        return super().train_step(dict(batch, data=data, target=target))
