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
from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.update import GuardedUpdateMixin, batch_on_device

PRETRAINING = "pretraining"    # the phase named in the checkpoints of phase 1 ('sacl' entry)
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
    """Makes an nnU-Net trainer that has ``ContrastiveMixin`` and ``GuardedUpdateMixin`` (and the settings of
    ``PretrainingSettings``) a phase-1 trainer; put it first. ``pretrain_epochs`` epochs of
    ``num_iterations_per_epoch`` contrastive steps on encoder + projection head; each epoch's validation reports the
    contrastive loss on validation batches and, as nnU-Net's pseudo Dice, the F1 score of nearest-neighbour organ
    classification of their embeddings (``method.neighbours``). At its end the whole network (pretrained encoder,
    decoder as initialised) is written to ``encoder_file``, usable with ``-pretrained_weights``.

    SACLTrainer runs its phase 1 as this mixin in front of its own class, so that a variant's run length,
    augmentation and settings hold in both phases; such a phase-1 trainer works in ``fold_X/pretraining``."""

    finetune_warmup_epochs = 0                 # phase 1 of a SACLTrainer variant: the phase-2 schedules do not apply
    finetune_frozen_encoder_epochs = 0
    pseudo_dice_label = "nearest-neighbour organ F1 (validation)"
    augment_settings = augment_generator = None
    seed_phase = 1                             # seeded runs: phase 1 draws streams of its own (seeding.py)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.encoder_file = join(self.output_folder, self.encoder_file_name)

    # ----------------------------------------------------------------------------------------------- set-up
    def initialize(self):
        if self.was_initialized:
            return super().initialize()      # nnU-Net's: raises
        self.num_epochs = self.pretrain_epochs   # here: run-length mixins set num_epochs in their __init__
        super().initialize()
        self.build_contrastive_parts()
        # nnU-Net built its optimizer before the head existed
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.augments_on_device() and self.augment_settings is None:
            self.augment_settings, self.augment_generator = make_augmenter(self)

    def pretraining_parameters(self) -> list:
        return list(encoder_of(self.network).parameters()) + list(self.head.parameters())

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

    @hands_augmentation_to_device
    def get_training_transforms(self, *args, **kwargs):
        # nnU-Net's is a staticmethod called as self.get_training_transforms(...): with on-device augmentation the
        # CPU workers only crop (nnU-Net's initial patch size) and copy; the device applies what the implementation
        # behind this one returns (augment_settings.training_transforms)
        if self.augments_on_device():
            return None
        return super().get_training_transforms(*args, **kwargs)

    # --------------------------------------------------------------------------------------------- the loop
    def run_training(self):
        # nnU-Net's own loop, also where this mixin is put in front of a SACLTrainer (whose run_training chains
        # the two phases)
        nnUNetTrainer.run_training(self)

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


def pretraining_class(trainer_class: type) -> type:
    """Phase 1 of a SACLTrainer (variant): ``PretrainingMixin`` in front of the class, under the same name."""
    return type(trainer_class.__name__, (PretrainingMixin, trainer_class),
                {"__module__": trainer_class.__module__, "__qualname__": trainer_class.__qualname__})


class SACLPretrainer(PretrainingMixin, PretrainingSettings, ContrastiveMixin, GuardedUpdateMixin,
                     AtomicCheckpointMixin, SeededMixin, nnUNetTrainer):
    """SACL phase 1 alone: ``pretrain_epochs`` epochs of contrastive training of encoder + projection head, ending
    with ``fold_X/checkpoint_sacl_encoder.pth`` (and nnU-Net's checkpoint_final.pth); no segmentation training, no
    final validation. May train on a merged dataset with partial labels."""
