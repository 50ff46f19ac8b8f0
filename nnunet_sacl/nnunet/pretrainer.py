"""SACL's phase 1 as an ordinary nnU-Net trainer: nnU-Net's run_training, epoch hooks, logger, checkpoints and
progress.png, with the contrastive step as its train_step."""
from os.path import join

import numpy as np
import torch
from torch.profiler import record_function

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.method.augment import augment_batch
from nnunet_sacl.method.distributed import is_distributed
from nnunet_sacl.method.neighbours import nearest_neighbour_counts
from nnunet_sacl.nnunet.augment_settings import hands_augmentation_to_device
from nnunet_sacl.nnunet.checkpoints import AtomicCheckpointMixin, save_atomically
from nnunet_sacl.nnunet.contrastive import ContrastiveMixin
from nnunet_sacl.nnunet.device_augmentation import make_augmenter
from nnunet_sacl.nnunet.encoder_file import encoder_file_contents
from nnunet_sacl.nnunet.network import encoder_of
from nnunet_sacl.nnunet.phases import PRETRAINING, only_in, phase_of
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.update import GuardedUpdateMixin, batch_on_device

PRETRAINING_CURVE = "nearest-neighbour organ F1 (validation)"   # phase 1's pseudo Dice (progress.png's right axis)
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
    """Phase 1's settings, shared by SACLPretrainer and SACLTrainer (class attributes, see docs/trainers.md)."""
    pretrain_epochs: int = 100
    pretrain_initial_lr: float = 1e-2          # SGD, Nesterov, momentum 0.99, poly decay, as nnU-Net's own
    pretrain_weight_decay: float = 3e-5
    pretrain_augmentation: str = "auto"        # "torch": batches augmented on the training device (CPU workers only
                                               # crop), "nnunet": nnU-Net's CPU pipeline; "auto": torch on CUDA
    encoder_file_name: str = "checkpoint_sacl_encoder.pth"


class PretrainingMixin:
    """SACL's phase 1 for an nnU-Net trainer that has ``ContrastiveMixin`` and ``GuardedUpdateMixin`` (and the
    settings of ``PretrainingSettings``), acting while the trainer's ``phase`` is ``PRETRAINING`` (``phases.py``):
    ``pretrain_epochs`` epochs of ``num_iterations_per_epoch`` contrastive steps on encoder + projection head; each
    epoch's validation reports the contrastive loss on validation batches and, as nnU-Net's pseudo Dice, the F1 score
    of nearest-neighbour organ classification of their embeddings (``method.neighbours``). At its end the whole
    network (pretrained encoder, decoder as initialised) is written to ``encoder_file``, usable with
    ``-pretrained_weights``.

    SACLPretrainer is always in phase 1. SACLTrainer has this mixin too and runs its phase 1 as an instance of its
    own class with ``phase = PRETRAINING`` (``SACLTrainer.make_pretrainer``, working in ``fold_X/pretraining``), so
    that a variant's run length, augmentation and settings hold in both phases; in its segmentation phase every
    method of this mixin marked ``only_in(PRETRAINING)`` hands over to the next class."""

    phase = PRETRAINING
    augment_settings = augment_generator = None

    @property
    def num_epochs(self) -> int:
        """The length of the phase this trainer runs: ``pretrain_epochs`` in phase 1; in the segmentation phase
        nnU-Net's ``num_epochs`` as set (by nnU-Net's __init__, a run-length variant, a user)."""
        return self.pretrain_epochs if phase_of(self) == PRETRAINING else self.segmentation_epochs

    @num_epochs.setter
    def num_epochs(self, epochs: int) -> None:
        self.segmentation_epochs = epochs

    @property
    def seed_phase(self) -> int:
        """Seeded runs: phase 1 draws random streams of its own (seeding.py)."""
        return 1 if phase_of(self) == PRETRAINING else 0

    @property
    def pseudo_dice_label(self) -> str:
        return PRETRAINING_CURVE if phase_of(self) == PRETRAINING else super().pseudo_dice_label

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.encoder_file = join(self.output_folder, self.encoder_file_name)

    # ----------------------------------------------------------------------------------------------- set-up
    @only_in(PRETRAINING)
    def initialize(self):
        if self.was_initialized:
            return super().initialize()      # nnU-Net's: raises
        super().initialize()
        self.build_contrastive_parts()
        # nnU-Net built its optimizer before the head existed
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.augments_on_device() and self.augment_settings is None:
            self.augment_settings, self.augment_generator = make_augmenter(self)

    def pretraining_parameters(self) -> list:
        return list(encoder_of(self.network).parameters()) + list(self.head.parameters())

    @only_in(PRETRAINING)
    def configure_optimizers(self):
        params = self.pretraining_parameters() if self.head is not None else encoder_of(self.network).parameters()
        optimizer = torch.optim.SGD(params, self.pretrain_initial_lr, weight_decay=self.pretrain_weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.pretrain_initial_lr, self.num_epochs)

    def augments_on_device(self) -> bool:
        """Whether batches are augmented with nnunet_sacl.method.augment on the training device."""
        if self.pretrain_augmentation not in ("auto", "torch", "nnunet"):
            raise RuntimeError(f"{self.__class__.__name__}.pretrain_augmentation = {self.pretrain_augmentation!r}: "
                               f"use 'auto', 'torch' or 'nnunet'")
        return self.pretrain_augmentation == "torch" or \
            (self.pretrain_augmentation == "auto" and self.device.type == "cuda")

    @only_in(PRETRAINING)
    @hands_augmentation_to_device
    def get_training_transforms(self, *args, **kwargs):
        # nnU-Net's is a staticmethod called as self.get_training_transforms(...): with on-device augmentation the
        # CPU workers only crop (nnU-Net's initial patch size) and copy; the device applies what the implementation
        # behind this one returns (augment_settings.training_transforms)
        if self.augments_on_device():
            return None
        return super().get_training_transforms(*args, **kwargs)

    # --------------------------------------------------------------------------------------------- the loop
    @only_in(PRETRAINING)
    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"SACL pretraining: epochs {self.current_epoch}..{self.num_epochs - 1}, {self.num_iterations_per_epoch} "
            f"iterations each, pooling encoder stages {self.pool_stages} ({self.embedding}), temperature "
            f"{self.temperature}. The pseudo Dice of this phase is the F1 score of nearest-neighbour organ "
            f"classification of validation embeddings.")

    @only_in(PRETRAINING)
    def on_train_epoch_start(self):
        self.head.train()
        super().on_train_epoch_start()

    @only_in(PRETRAINING)
    def on_validation_epoch_start(self):
        self.head.eval()
        super().on_validation_epoch_start()

    @only_in(PRETRAINING)
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

    @only_in(PRETRAINING)
    def on_train_epoch_end(self, train_outputs: list):
        statistics = self.epoch_statistics(train_outputs)       # skipped steps included
        super().on_train_epoch_end(train_outputs)               # nnU-Net logs the mean loss of the finite steps
        self.print_to_log_file(
            f"SACL pretraining epoch {self.current_epoch}: contrastive loss "
            f"{self.logger.get_value('train_losses', step=-1):.4f}, lr {self.optimizer.param_groups[0]['lr']:.5f}, "
            f"organ embeddings per batch {statistics['organs_per_batch']:.1f}, batches without a positive pair "
            f"{statistics['batches_without_positive']}")

    @only_in(PRETRAINING)
    def validation_step(self, batch: dict) -> dict:
        data, seg = batch_on_device(batch, self.device, full_resolution_only=True)
        with self.amp_context():
            z, organs, samples = self.embed(data, seg)
            loss, _ = self.contrastive_term(z, organs, samples, data, seg, batch.get('keys'))
        tp, fp, fn = nearest_neighbour_counts(z, organs, self.label_manager.num_segmentation_heads)
        return {'loss': loss.detach().float().cpu().numpy(), 'tp_hard': tp.cpu().numpy(),
                'fp_hard': fp.cpu().numpy(), 'fn_hard': fn.cpu().numpy()}

    @only_in(PRETRAINING)
    def on_train_end(self):
        self.save_pretrained_encoder()     # before checkpoint_final.pth: a finished phase 1 has its encoder file
        super().on_train_end()

    @only_in(PRETRAINING)
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

    @only_in(PRETRAINING)
    def checkpoint_extras(self) -> dict:
        return {'phase': PRETRAINING, 'head': self.head.state_dict()}

    @only_in(PRETRAINING)
    def check_checkpoint_extras(self, filename: str, extras) -> None:
        refuse_earlier_layout(filename, extras)
        phase = (extras or {}).get('phase')
        if phase != PRETRAINING:
            raise RuntimeError(f"{filename} is not a checkpoint of SACL pretraining ('sacl' entry: phase {phase!r}); "
                               f"{self.__class__.__name__} resumes only its own checkpoints")

    @only_in(PRETRAINING)
    def load_checkpoint_extras(self, extras) -> None:
        self.head.load_state_dict(extras['head'])


class SACLPretrainer(PretrainingMixin, PretrainingSettings, ContrastiveMixin, GuardedUpdateMixin,
                     AtomicCheckpointMixin, SeededMixin, nnUNetTrainer):
    """SACL phase 1 alone: ``pretrain_epochs`` epochs of contrastive training of encoder + projection head, ending
    with ``fold_X/checkpoint_sacl_encoder.pth`` (and nnU-Net's checkpoint_final.pth); no segmentation training, no
    final validation. May train on a merged dataset with partial labels."""
