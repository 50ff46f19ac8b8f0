"""SACLTrainer: SACL pretraining of the encoder (phase 1, a ``SACLPretrainer`` it builds and runs), then nnU-Net's own
training from that encoder (phase 2, this trainer itself), in one ``nnUNetv2_train`` call."""
import os
from contextlib import contextmanager
from os.path import isfile, join

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.method.distributed import broadcast_module, is_distributed
from nnunet_sacl.nnunet.augment_settings import augmentation_of
from nnunet_sacl.nnunet.checkpoints import AtomicCheckpointMixin, read_checkpoint
from nnunet_sacl.nnunet.contrastive import CONTRASTIVE_SETTINGS, ContrastiveSettings
from nnunet_sacl.nnunet.finetune import FineTuneScheduleMixin
from nnunet_sacl.nnunet.network import unwrap
from nnunet_sacl.nnunet.partial_labels import refuse_partial_labels
from nnunet_sacl.nnunet.pretrainer import (HANDED_ATTRIBUTES, PRETRAINING, HandedSettings, PretrainingSettings,
                                           SACLPretrainer, refuse_earlier_layout)
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.torchrun import TorchrunMixin, with_torchrun
from nnunet_sacl.nnunet.update import GuardedUpdateMixin

SEGMENTATION = "segmentation"      # the phase a segmentation checkpoint's 'sacl' entry names
# the attributes of SACLTrainer that HANDED_ATTRIBUTES' first three are read from (the others: the same name)
PHASE_ONE_NAMES = {"num_epochs": "pretrain_epochs", "initial_lr": "pretrain_initial_lr",
                   "weight_decay": "pretrain_weight_decay"}


@contextmanager
def results_folder(folder: str):
    """nnU-Net's results root (``nnUNet_results``, which nnU-Net reads when a trainer is built) is ``folder`` while
    the block runs."""
    saved = os.environ.get("nnUNet_results")
    os.environ["nnUNet_results"] = folder
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("nnUNet_results")
        else:
            os.environ["nnUNet_results"] = saved


class SACLTrainer(FineTuneScheduleMixin, ContrastiveSettings, PretrainingSettings, GuardedUpdateMixin,
                  AtomicCheckpointMixin, SeededMixin, nnUNetTrainer):
    """Phase 1: ``pretrain_epochs`` epochs of SACL, run by a ``pretrainer_class`` (``SACLPretrainer``) that this
    trainer builds (``make_pretrainer``) and hands its settings (``hand_over``): an nnU-Net training of its own, whose
    results root is ``fold_X/pretraining``. Phase 2: nnU-Net's standard training for ``num_epochs`` from the
    pretrained encoder (``fold_X/checkpoint_sacl_encoder.pth``), with a fresh optimizer and poly schedule.

    ``--c`` resumes in either phase: nnU-Net resumes phase 2 from fold_X's checkpoints; when there are none, phase 1
    resumes from its own folder's. Settings are class attributes or set in ``__init__`` (see docs/trainers.md)."""

    pretrainer_class = SACLPretrainer

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        continue_training = bool(plans.get("continue_training", False))   # nnU-Net's __init__ pops it
        super().__init__(plans, configuration, fold, dataset_json, device)
        refuse_partial_labels(self.dataset_json, self.plans_manager.dataset_name, self.__class__.__name__,
                              announce=True)
        self.continue_training = continue_training
        self.pretraining_done = False   # phase 1 ran, or a phase-2 checkpoint was loaded (--c)

    @property
    def pretraining_root(self) -> str:
        """Phase 1's nnU-Net results root."""
        return join(self.output_folder, PRETRAINING)

    @property
    def pretraining_folder(self) -> str:
        """Phase 1's fold folder (checkpoints, log, progress.png), where nnU-Net puts the pretrainer's results."""
        return join(self.pretraining_root, self.plans_manager.dataset_name,
                    f"{self.pretrainer_class.__name__}__{self.plans_manager.plans_name}__{self.configuration_name}",
                    f"fold_{self.fold}")

    def run_training(self):
        if not self.pretraining_done and self.pretrain_epochs > 0:
            self.run_pretraining()
        super().run_training()

    # ------------------------------------------------------------------------------------------------ phase 1
    def hand_over(self) -> HandedSettings:
        """This trainer's phase-1 settings as they are now, for its pretrainer."""
        attributes = [(name, getattr(self, PHASE_ONE_NAMES.get(name, name))) for name in HANDED_ATTRIBUTES]
        attributes += [(name, getattr(self, name)) for name in CONTRASTIVE_SETTINGS]
        if not self.was_initialized:
            self._set_batch_size_and_oversample()    # nnU-Net's initialize does it again
        spatial, transforms = augmentation_of(self)
        return HandedSettings(trainer_name=self.__class__.__name__, attributes=tuple(attributes),
                              batch=(self.batch_size, self.oversample_foreground_percent), spatial=spatial,
                              transforms=transforms, encoder_file=join(self.output_folder, self.encoder_file_name))

    def make_pretrainer(self) -> SACLPretrainer:
        """Phase 1's trainer: a ``pretrainer_class`` built as nnUNetv2_train builds a trainer, with
        ``fold_X/pretraining`` as its results root, and this trainer's settings."""
        handed = self.hand_over()
        cls = with_torchrun(self.pretrainer_class) if isinstance(self, TorchrunMixin) else self.pretrainer_class
        with results_folder(self.pretraining_root):
            pretrainer = cls(plans=dict(self.plans_manager.plans, continue_training=self.continue_training),
                             configuration=self.configuration_name, fold=self.fold, dataset_json=self.dataset_json,
                             device=self.device)
        pretrainer.take(handed)
        return pretrainer

    def run_pretraining(self):
        """Phase 1 (or what is left of it under --c), then this trainer's network takes the pretrained encoder."""
        pretrainer = self.make_pretrainer()
        # nnU-Net's order for --c; then phase 1 as nnunet-sacl 0.2 kept it (in fold_X/pretraining itself)
        checkpoints = [join(folder, f"checkpoint_{name}.pth") for folder in (pretrainer.output_folder,
                                                                            self.pretraining_root)
                       for name in ("final", "latest", "best")]
        resume_from = next((f for f in checkpoints if isfile(f)), None) if self.continue_training else None
        weights = None                 # from the encoder file when phase 1 finished in an earlier run
        if resume_from is not None and resume_from.endswith("checkpoint_final.pth"):
            self.print_to_log_file(f"SACL pretraining finished earlier ({resume_from})")
        else:
            if resume_from is not None:
                pretrainer.load_checkpoint(resume_from)
                self.print_to_log_file(f"Resumed SACL pretraining from {resume_from} at epoch "
                                       f"{pretrainer.current_epoch}")
            elif self.continue_training:
                self.print_to_log_file(f"--c: no checkpoint in {self.output_folder} or {self.pretraining_folder}: "
                                       f"SACL pretraining starts from the beginning")
            if self.was_initialized:   # weights given before training (-pretrained_weights): phase 1 starts there
                pretrainer.initialize()
                unwrap(pretrainer.network).load_state_dict(unwrap(self.network).state_dict())
            pretrainer.run_training()
            # equal on every rank (phase 1 averaged its gradients), which need not share a results folder
            weights = {k: v.detach().cpu() for k, v in unwrap(pretrainer.network).state_dict().items()}
        encoder_file = pretrainer.encoder_file
        del pretrainer                 # its network, optimizer and stopped data loaders
        self.start_from_pretrained_encoder(encoder_file, weights)

    def start_from_pretrained_encoder(self, encoder_file: str, weights: dict = None):
        """Hand-off: the network of phase 1 (pretrained encoder, decoder as initialised), given or read from the
        encoder file, with a fresh optimizer and schedule (nnU-Net's initialize)."""
        if not self.was_initialized:
            self.initialize()
        if weights is None and self.local_rank == 0:
            if not isfile(encoder_file):
                raise RuntimeError(f"SACL pretraining has finished but its encoder file {encoder_file} is missing: "
                                   f"start the training again without --c to pretrain again")
            weights = read_checkpoint(encoder_file)['network_weights']
        if weights is not None:
            unwrap(self.network).load_state_dict(weights)
        if is_distributed():           # rank 0's read of the file (ranks need not share a results folder)
            broadcast_module(unwrap(self.network))
        self.pretraining_done = True
        # nnU-Net ends each phase with its "Training done.": say which one ended and that the run goes on
        self.print_to_log_file(f"SACL pretraining done: phase 1 of 2 ({self.pretrain_epochs} epochs) has ended. Phase 2 "
                               f"of 2, segmentation training, starts from the pretrained encoder {encoder_file}: "
                               f"{self.num_epochs} epochs.")

    # ------------------------------------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> dict:
        return {'phase': SEGMENTATION, 'pretrain_epochs': self.pretrain_epochs}

    def check_checkpoint_extras(self, filename: str, extras) -> None:
        if extras is None:
            raise RuntimeError(f"{filename} was not written by a SACL trainer (no 'sacl' entry); to start from its "
                               f"weights use -pretrained_weights instead of --c")
        refuse_earlier_layout(filename, extras)
        if extras.get('phase') != SEGMENTATION:
            raise RuntimeError(f"{filename} is a checkpoint of SACL pretraining, not of the segmentation phase: "
                               f"--c finds it in {self.pretraining_folder} by itself")

    def load_checkpoint_extras(self, extras) -> None:
        self.pretraining_done = True   # a segmentation checkpoint: phase 1 is behind it
