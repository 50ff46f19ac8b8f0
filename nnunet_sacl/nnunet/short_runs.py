"""Short CPU run lengths that README and the demo name: the smoke run of README's dataset block and the demo's
trainers (seeded, so that the same command gives the same weights). Each is an ordinary nnU-Net trainer found by
``-tr`` through ``trainers/``; they stand apart from the trainers users train with (``variants``). The tests' own
lengths live with the tests (tests/trainers/), a study's arms with the study (docs/studies/NAME/arms/), each
found by adding that folder to nnUNet_extTrainer."""
import torch

from nnunetv2.training.logging.nnunet_logger import MetaLogger
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunet_sacl.nnunet.joint import SACLTrainer_joint
from nnunet_sacl.nnunet.pretrainer import SACLPretrainer
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.trainer import SACLTrainer
from nnunet_sacl.nnunet.variants import trainer_names


class ProgressAtTheEnd(MetaLogger):
    """nnU-Net's logger, drawing progress.png after the trainer's last epoch only (drawing it takes about 0.9 s on a
    CPU, a fifth of a smoke epoch): the same logger and the same drawing, less often."""

    def __init__(self, trainer):
        super().__init__(trainer.output_folder, trainer.logger.resume)
        self.trainer = trainer

    def plot_progress_png(self, output_folder: str):
        if self.trainer.current_epoch >= self.trainer.num_epochs - 1:
            super().plot_progress_png(output_folder)


class ShortRun(SeededMixin):
    """Mixin that shortens nnU-Net's own run length (nnU-Net sets it in __init__, not as class attributes). Short runs
    are seeded (seed 0, ``SeededMixin``; $SACL_SEED chooses another): the same command gives the same weights."""
    run_epochs, run_iterations, run_val_iterations = 2, 4, 2
    seed = 0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.run_epochs
        self.num_iterations_per_epoch = self.run_iterations
        self.num_val_iterations_per_epoch = self.run_val_iterations
        self.save_every = 1
        self.logger = ProgressAtTheEnd(self)      # before anything is logged

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # Short CPU runs predict without nnU-Net's mirrored test-time augmentation (final validation and
        # nnUNetv2_predict read these axes): in 3D it runs 8 forward passes per window, about 7x the prediction
        # time, most of a smoke run. Training keeps its mirroring.
        settings = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return settings


class SACLPretrainer_smoke(ShortRun, SACLPretrainer):
    """SACL phase 1 alone for CPU smoke runs: 3 pretraining epochs of 4 iterations; SACLTrainer_smoke's phase 1."""
    run_epochs = 3


class SACLTrainer_smoke(ShortRun, SACLTrainer):
    """CPU smoke run (README's dataset block, the tests): 3 pretraining + 2 segmentation epochs of 4 iterations (2
    validation iterations), phase 1 by SACLPretrainer_smoke."""
    pretrain_epochs = 3
    pretrainer_class = SACLPretrainer_smoke


class _DemoRun(ShortRun, nnUNetTrainerNoMirroring):
    """The demo's run length on a CPU: 16 epochs of 75 iterations, batch 5 instead of the 40 nnU-Net plans for the
    demo data in 2d (more updates for the same CPU time; few, long epochs: each ends with nnU-Net's pseudo-Dice
    validation and a checkpoint), and no mirroring: nnU-Net's own nnUNetTrainerNoMirroring, which drops the mirror
    axes of whatever the demo class's trainer configures. Abdominal CT is always scanned supine, and a flip
    makes the spleen look like a small liver; in measured demo runs without mirroring the baseline's held-out spleen
    Dice went from 0.00 to about 0.7-0.8 at the same number of iterations."""
    run_epochs, run_iterations, run_val_iterations, run_batch_size = 16, 75, 2, 5

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if not self.is_ddp:
            self.batch_size = self.run_batch_size

    def print_plans(self):
        super().print_plans()     # the plans as planned: their batch size is not this run's
        if self.batch_size != self.configuration_manager.batch_size:
            self.print_to_log_file(f"{self.__class__.__name__} trains at batch size {self.batch_size}, not the "
                                   f"plans' {self.configuration_manager.batch_size} (a short CPU run length)")


class SACLPretrainer_demo(_DemoRun, SACLPretrainer):
    """SACL phase 1 alone at the demo's length on a CPU: 4 pretraining epochs of 75 iterations, batch 5, no
    mirroring (a few minutes on 2 cores); SACLTrainer_demo's phase 1."""
    run_epochs = 4


class SACLTrainer_demo(_DemoRun, SACLTrainer):
    """The README demo on CPU: 4 pretraining + 12 segmentation epochs of 75 iterations, batch 5, no mirroring."""
    pretrain_epochs = 4
    run_epochs = 12
    pretrainer_class = SACLPretrainer_demo


class nnUNetTrainer_demo(_DemoRun, nnUNetTrainer):
    """Stock nnU-Net (without mirroring) for the demo's comparison: 16 epochs of 75 iterations, batch 5, as many
    iterations as SACLTrainer_demo's two phases together."""


class SACLTrainer_joint_demo(_DemoRun, SACLTrainer_joint):
    """SACLTrainer_joint at the demo's length: 16 epochs of 75 iterations, batch 5, no mirroring, contrastive term
    in every step (the third arm of the demo study, docs/studies/demo-3fold)."""


__all__ = trainer_names(globals(), __name__)
