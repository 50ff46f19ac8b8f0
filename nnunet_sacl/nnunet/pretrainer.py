"""SACL's phase 1 as an ordinary nnU-Net trainer, ``SACLPretrainer``: nnU-Net's run_training, epoch hooks, logger,
checkpoints and progress.png, with the contrastive step as its train_step.

It runs alone (``nnUNetv2_train D C F -tr SACLPretrainer``, e.g. on a merged dataset) or as phase 1 of
``SACLTrainer``, which builds one (``SACLTrainer.make_pretrainer``) and hands it its own settings as a value
(``HandedSettings``): the variant's run length, learning rate, augmentation, batch size, seed and SACL settings.
Alone, its settings are its own, in nnU-Net's way: ``self.num_epochs``, ``self.initial_lr``, ``self.weight_decay``
(set in ``__init__``; by default from the class attributes ``pretrain_epochs``, ``pretrain_initial_lr``,
``pretrain_weight_decay``) and the SACL settings of ``ContrastiveSettings``.
"""
from dataclasses import dataclass
from os.path import join
from typing import Any, Optional

import numpy as np
import torch
from torch.profiler import record_function

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.method.augment import augment_batch
from nnunet_sacl.method.distributed import is_distributed
from nnunet_sacl.method.neighbours import nearest_neighbour_counts
from nnunet_sacl.nnunet.checkpoints import AtomicCheckpointMixin, save_atomically
from nnunet_sacl.nnunet.contrastive import CONTRASTIVE_SETTINGS, ContrastiveMixin
from nnunet_sacl.nnunet.device_augmentation import make_augmenter
from nnunet_sacl.nnunet.encoder_file import encoder_file_contents
from nnunet_sacl.nnunet.network import encoder_of
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.update import GuardedUpdateMixin, batch_on_device

PRETRAINING = "pretraining"        # the phase a checkpoint's 'sacl' entry names, and SACLTrainer's phase-1 folder
EARLIER_PRETRAINING = "pretrain"   # the same in nnunet-sacl 0.1, which kept phase 1 in the fold folder itself


def refuse_earlier_layout(filename: str, extras) -> None:
    """A pretraining checkpoint of nnunet-sacl 0.1 cannot be continued by this version: refused with a way on."""
    if (extras or {}).get('phase') == EARLIER_PRETRAINING:
        raise RuntimeError(
            f"{filename} was written during SACL pretraining by an earlier nnunet-sacl (0.1), which kept phase 1 in "
            f"the fold folder itself; this version runs phase 1 as an nnU-Net training of its own (fold_X/pretraining)"
            f" and cannot continue that run. Delete {filename} and start again without --c (phase 1 starts over), "
            f"or finish the run with the version that wrote it.")


class PretrainingSettings:
    """Phase 1's settings as class attributes (one-line variants; see docs/trainers.md). SACLTrainer hands them to
    its pretrainer; SACLPretrainer turns the first three into nnU-Net's own ``num_epochs``, ``initial_lr`` and
    ``weight_decay`` in its ``__init__``."""
    pretrain_epochs: int = 100
    pretrain_initial_lr: float = 1e-2          # SGD, Nesterov, momentum 0.99, poly decay, as nnU-Net's own
    pretrain_weight_decay: float = 3e-5
    pretrain_augmentation: str = "auto"        # "torch": batches augmented on the training device (CPU workers only
                                               # crop), "nnunet": nnU-Net's CPU pipeline; "auto": torch on CUDA
    encoder_file_name: str = "checkpoint_sacl_encoder.pth"


# what a SACLTrainer hands its pretrainer as attributes of the same name (HandedSettings.attributes), beside the
# contrastive settings (CONTRASTIVE_SETTINGS); the first three are read from pretrain_epochs, pretrain_initial_lr and
# pretrain_weight_decay, the others from the attribute of the same name (nnU-Net's run length as the variant set it)
HANDED_ATTRIBUTES = ("num_epochs", "initial_lr", "weight_decay", "pretrain_augmentation", "num_iterations_per_epoch",
                     "num_val_iterations_per_epoch", "save_every", "disable_checkpointing", "seed",
                     "max_nonfinite_in_a_row")


@dataclass(frozen=True)
class HandedSettings:
    """What a SACLTrainer (variant) hands the pretrainer that runs its phase 1, read from the trainer when phase 1
    starts (``SACLTrainer.hand_over``), so that whatever set them (class attributes, ``__init__``, a user) holds:
    ``attributes``, (name, value) of every HANDED_ATTRIBUTES and CONTRASTIVE_SETTINGS entry, which
    ``SACLPretrainer.take`` sets as its own; and what the pretrainer's batch size, augmentation and encoder file
    read."""
    trainer_name: str                       # the SACLTrainer variant whose phase 1 this is
    attributes: tuple
    batch: tuple                            # (batch_size, oversample_foreground_percent) of this rank
    spatial: tuple                          # its configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    transforms: Any                         # its training augmentation (batchgeneratorsv2 transforms)
    encoder_file: str


class SACLPretrainer(ContrastiveMixin, PretrainingSettings, GuardedUpdateMixin, AtomicCheckpointMixin, SeededMixin,
                     nnUNetTrainer):
    """SACL phase 1: ``num_epochs`` epochs of ``num_iterations_per_epoch`` contrastive steps on encoder + projection
    head; each epoch's validation reports the contrastive loss on validation batches and, as nnU-Net's pseudo Dice,
    the F1 score of nearest-neighbour organ classification of their embeddings (``method.neighbours``). At its end
    the whole network (pretrained encoder, decoder as initialised) is written to ``encoder_file``
    (``fold_X/checkpoint_sacl_encoder.pth``), usable with ``-pretrained_weights``; no segmentation training, no final
    validation. May train on a merged dataset with partial labels."""

    seed_phase = 1          # seeded runs: phase 1 draws random streams of its own (seeding.py)
    handed: Optional[HandedSettings] = None
    augment_settings = augment_generator = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.pretrain_epochs
        self.initial_lr = self.pretrain_initial_lr
        self.weight_decay = self.pretrain_weight_decay
        self.encoder_file = join(self.output_folder, self.encoder_file_name)

    def take(self, handed: HandedSettings) -> None:
        """Phase 1 of a SACLTrainer: its settings replace this trainer's own (before ``initialize``)."""
        for name, value in handed.attributes:
            setattr(self, name, value)
        self.nonfinite.limit = self.max_nonfinite_in_a_row   # the guard nnU-Net's __init__ built
        self.encoder_file = handed.encoder_file
        self.handed = handed

    # ----------------------------------------------------------------------------------------------- set-up
    def initialize(self):
        if self.was_initialized:
            return super().initialize()      # nnU-Net's: raises
        super().initialize()
        if self.handed is not None:     # after nnU-Net's (and any variant's) batch size from the plans
            self.batch_size, self.oversample_foreground_percent = self.handed.batch
        self.build_contrastive_parts()
        # nnU-Net built its optimizer before the head existed
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.augments_on_device():
            self.augment_settings, self.augment_generator = make_augmenter(self)

    def pretraining_parameters(self) -> list:
        return list(encoder_of(self.network).parameters()) + list(self.head.parameters())

    def configure_optimizers(self):
        # nnU-Net's optimizer and poly schedule, over encoder + head (the encoder alone before the head is built)
        params = self.pretraining_parameters() if self.head is not None else encoder_of(self.network).parameters()
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def augments_on_device(self) -> bool:
        """Whether batches are augmented with nnunet_sacl.method.augment on the training device."""
        if self.pretrain_augmentation not in ("auto", "torch", "nnunet"):
            raise RuntimeError(f"{self.__class__.__name__}.pretrain_augmentation = {self.pretrain_augmentation!r}: "
                               f"use 'auto', 'torch' or 'nnunet'")
        return self.pretrain_augmentation == "torch" or \
            (self.pretrain_augmentation == "auto" and self.device.type == "cuda")

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        if self.handed is None:
            return super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = self.handed.spatial[3]    # as nnU-Net's sets and logs it
        self.print_to_log_file(f"do_dummy_2d_data_aug: {self.handed.spatial[1]} (the augmentation of "
                               f"{self.handed.trainer_name})")
        return self.handed.spatial

    def get_training_transforms(self, *args, **kwargs):
        # nnU-Net's is a staticmethod called as self.get_training_transforms(...): with on-device augmentation the CPU
        # workers only crop (nnU-Net's initial patch size) and copy, and the device applies augmentation_transforms
        if self.augments_on_device():
            return None
        return self.augmentation_transforms(*args, **kwargs)

    def augmentation_transforms(self, *args, **kwargs):
        """Phase 1's augmentation, wherever it runs: that of the SACLTrainer it runs for, or this class's own."""
        if self.handed is not None:
            return self.handed.transforms
        return super().get_training_transforms(*args, **kwargs)

    # --------------------------------------------------------------------------------------------- the loop
    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"SACL pretraining: epochs {self.current_epoch}..{self.num_epochs - 1}, {self.num_iterations_per_epoch} "
            f"iterations each, pooling encoder stages {self.pool_stages} ({self.embedding}), temperature "
            f"{self.temperature}. The pseudo Dice of this phase is the F1 score of nearest-neighbour organ "
            f"classification of validation embeddings.")

    def on_train_epoch_start(self):
        self.head.train()
        super().on_train_epoch_start()

    def on_validation_epoch_start(self):
        self.head.eval()
        super().on_validation_epoch_start()

    def train_step(self, batch: dict) -> dict:
        data, seg = batch_on_device(batch, self.device, full_resolution_only=True)
        if self.augment_settings is not None:
            with record_function("sacl.augment"):
                data, seg = augment_batch(data, seg, self.augment_settings, self.augment_generator)
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp_context():
            z, organs, samples = self.embed(data, seg)
            loss, statistics = self.contrastive_term(z, organs, samples, data, seg, batch.get('keys'))
        step = {'organs': z.shape[0], 'without_positive': int(statistics['anchors'] == 0)}
        if not self.nonfinite.is_finite(loss, f"pretraining epoch {self.current_epoch}"):
            return {'loss': np.nan, **step}
        # the encoder runs outside nnU-Net's DDP wrapper: its (and the head's) gradients are averaged here
        self.backward_and_step(loss, self.pretraining_parameters(), average_over_ranks=is_distributed())
        return {'loss': loss.detach().cpu().numpy(), **step}

    def on_train_epoch_end(self, train_outputs: list):
        statistics = self.epoch_statistics(train_outputs)       # skipped steps included
        super().on_train_epoch_end(train_outputs)               # nnU-Net logs the mean loss of the finite steps
        self.print_to_log_file(
            f"SACL pretraining epoch {self.current_epoch}: contrastive loss "
            f"{self.logger.get_value('train_losses', step=-1):.4f}, lr {self.optimizer.param_groups[0]['lr']:.5f}, "
            f"organ embeddings per batch {statistics['organs_per_batch']:.1f}, batches without a positive pair "
            f"{statistics['batches_without_positive']}")

    def validation_step(self, batch: dict) -> dict:
        data, seg = batch_on_device(batch, self.device, full_resolution_only=True)
        with self.amp_context():
            z, organs, samples = self.embed(data, seg)
            loss, _ = self.contrastive_term(z, organs, samples, data, seg, batch.get('keys'))
        tp, fp, fn = nearest_neighbour_counts(z, organs, self.label_manager.num_segmentation_heads)
        return {'loss': loss.detach().float().cpu().numpy(), 'tp_hard': tp.cpu().numpy(),
                'fp_hard': fp.cpu().numpy(), 'fn_hard': fn.cpu().numpy()}

    def on_train_end(self):
        self.save_pretrained_encoder()     # before checkpoint_final.pth: a finished phase 1 has its encoder file
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file(f"{self.__class__.__name__} trains no decoder: nothing to validate. Pretrained "
                               f"encoder: {self.encoder_file}")

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_pretrained_encoder(self):
        """The whole network (pretrained encoder, decoder as initialised) as CPU tensors, so that stock
        ``nnUNetv2_train ... -pretrained_weights FILE`` (which needs every key but seg_layers) accepts it."""
        if self.local_rank != 0:
            return
        save_atomically(encoder_file_contents(self), self.encoder_file)   # with plans, dataset, settings
        self.print_to_log_file(f"Pretrained encoder written to {self.encoder_file} (usable with -pretrained_weights)")

    def checkpoint_extras(self) -> dict:
        return {'phase': PRETRAINING, 'head': self.head.state_dict()}

    def check_checkpoint_extras(self, filename: str, extras) -> None:
        refuse_earlier_layout(filename, extras)
        phase = (extras or {}).get('phase')
        if phase != PRETRAINING:
            raise RuntimeError(f"{filename} is not a checkpoint of SACL pretraining ('sacl' entry: phase {phase!r}); "
                               f"{self.__class__.__name__} resumes only its own checkpoints")

    def load_checkpoint_extras(self, extras) -> None:
        self.head.load_state_dict(extras['head'])
