"""SACLTrainer: SACL pretraining of the encoder (phase 1), then nnU-Net's own training from that encoder (phase 2),
in one ``nnUNetv2_train`` call."""
import os
from os.path import isfile, join

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.method.distributed import broadcast_module, is_distributed
from nnunet_sacl.nnunet.checkpoints import AtomicCheckpointMixin, read_checkpoint
from nnunet_sacl.nnunet.contrastive import ContrastiveMixin
from nnunet_sacl.nnunet.finetune import FineTuneScheduleMixin
from nnunet_sacl.nnunet.network import unwrap
from nnunet_sacl.nnunet.partial_labels import refuse_partial_labels
from nnunet_sacl.nnunet.phases import PRETRAINING, SEGMENTATION, only_in
from nnunet_sacl.nnunet.pretrainer import PretrainingMixin, PretrainingSettings, refuse_earlier_layout
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.update import GuardedUpdateMixin


class SACLTrainer(PretrainingMixin, FineTuneScheduleMixin, PretrainingSettings, ContrastiveMixin, GuardedUpdateMixin,
                  AtomicCheckpointMixin, SeededMixin, nnUNetTrainer):
    """Phase 1: ``pretrain_epochs`` epochs of SACL, run as an nnU-Net training of its own in ``fold_X/pretraining``
    by an instance of this very class in the pretraining phase (``make_pretrainer``; ``PretrainingMixin`` acts
    there): the variant's run length, augmentation and settings hold in both phases. Phase 2: nnU-Net's standard
    training for ``num_epochs`` from the pretrained encoder (``fold_X/checkpoint_sacl_encoder.pth``), with a fresh
    optimizer and poly schedule (``FineTuneScheduleMixin`` and the like act here only).

    ``--c`` resumes in either phase: nnU-Net resumes phase 2 from fold_X's checkpoints; when there are none, phase 1
    resumes from fold_X/pretraining's (nnU-Net tells the trainer about ``--c`` through the plans it passes).
    Settings are class attributes: a variant is a one-line subclass (see docs/trainers.md).
    """
    phase = SEGMENTATION        # the instance that runs phase 1 is in PRETRAINING (make_pretrainer)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        continue_training = bool(plans.get("continue_training", False))   # nnU-Net's __init__ pops it
        super().__init__(plans, configuration, fold, dataset_json, device)
        refuse_partial_labels(self.dataset_json, self.plans_manager.dataset_name, self.__class__.__name__,
                              announce=True)
        self.continue_training = continue_training
        self.pretraining_done = self.pretrain_epochs == 0   # or a phase-2 checkpoint was loaded (--c)

    @property
    def pretraining_folder(self) -> str:
        return join(self.output_folder, PRETRAINING)

    @only_in(SEGMENTATION)
    def run_training(self):
        if not self.pretraining_done:
            self.run_pretraining()
        super().run_training()

    # ------------------------------------------------------------------------------------------------ phase 1
    def make_pretrainer(self) -> "SACLTrainer":
        """Phase 1's trainer: an instance of this trainer's own class in the pretraining phase, working in
        fold_X/pretraining and writing the encoder file into fold_X."""
        plans = dict(self.plans_manager.plans, continue_training=self.continue_training)
        pretrainer = type(self)(plans=plans, configuration=self.configuration_name, fold=self.fold,
                                dataset_json=self.dataset_json, device=self.device)
        pretrainer.phase = PRETRAINING
        pretrainer.disable_checkpointing = self.disable_checkpointing
        # nnU-Net's __init__ opened its log in fold_X: phase 1 logs into its own folder (a log file of the same
        # second is this trainer's own, which keeps it)
        log_file = join(self.pretraining_folder, pretrainer.log_file[len(self.output_folder) + 1:])
        if pretrainer.local_rank == 0:
            os.makedirs(self.pretraining_folder, exist_ok=True)   # nnU-Net's log writes retry for seconds without it
            if pretrainer.log_file != self.log_file and isfile(pretrainer.log_file):
                os.replace(pretrainer.log_file, log_file)
        pretrainer.output_folder, pretrainer.log_file = self.pretraining_folder, log_file
        pretrainer.encoder_file = join(self.output_folder, self.encoder_file_name)
        return pretrainer

    def run_pretraining(self):
        """Phase 1 (or what is left of it under --c), then this trainer's network takes the pretrained encoder."""
        pretrainer = self.make_pretrainer()
        checkpoints = {name: join(self.pretraining_folder, f"checkpoint_{name}.pth")
                       for name in ("final", "latest", "best")}       # nnU-Net's order for --c
        resume_from = next((f for f in checkpoints.values() if isfile(f)), None) if self.continue_training else None
        weights = None                 # from the encoder file when phase 1 finished in an earlier run
        if resume_from == checkpoints["final"]:
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
    @only_in(SEGMENTATION)
    def checkpoint_extras(self) -> dict:
        return {'phase': SEGMENTATION, 'pretrain_epochs': self.pretrain_epochs}

    @only_in(SEGMENTATION)
    def check_checkpoint_extras(self, filename: str, extras) -> None:
        if extras is None:
            raise RuntimeError(f"{filename} was not written by a SACL trainer (no 'sacl' entry); to start from its "
                               f"weights use -pretrained_weights instead of --c")
        refuse_earlier_layout(filename, extras)
        if extras.get('phase') != SEGMENTATION:
            raise RuntimeError(f"{filename} is a checkpoint of SACL pretraining, not of the segmentation phase: "
                               f"--c finds it in {self.pretraining_folder} by itself")

    @only_in(SEGMENTATION)
    def load_checkpoint_extras(self, extras) -> None:
        self.pretraining_done = True   # a segmentation checkpoint: phase 1 is behind it
