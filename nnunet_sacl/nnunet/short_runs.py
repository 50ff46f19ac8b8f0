"""Short CPU run lengths of the shipped trainers: the smoke trainers of the tests, the demo's trainers and the
pre-registered study's arms (docs/study.md). Each is an ordinary nnU-Net trainer found by ``-tr`` through
``trainers/``; they stand apart from the trainers users train with (``variants``)."""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunet_sacl.nnunet.joint import SACLTrainer_joint
from nnunet_sacl.nnunet.lr_schedules import EncoderDecoderLRMixin, PretrainedConventionMixin
from nnunet_sacl.nnunet.pretrainer import SACLPretrainer
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.trainer import SACLTrainer
from nnunet_sacl.nnunet.variants import SACLTrainer_PaperStyle, nnUNetTrainer_ftconvention, trainer_names


class _ShortRun(SeededMixin):
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
        # nnU-Net draws progress.png after every epoch, about 0.9 s on a CPU (a fifth of a smoke epoch): short runs
        # draw it after their last epoch (of each phase) only, with the same logger and the same drawing
        draw = self.logger.plot_progress_png

        def draw_after_the_last_epoch(output_folder):
            if self.current_epoch >= self.num_epochs - 1:
                draw(output_folder)

        self.logger.plot_progress_png = draw_after_the_last_epoch

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # Short CPU runs predict without nnU-Net's mirrored test-time augmentation (final validation and
        # nnUNetv2_predict read these axes): in 3D it runs 8 forward passes per window, about 7x the prediction
        # time, most of a smoke run. Training keeps its mirroring.
        settings = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return settings


class SACLTrainer_smoke(_ShortRun, SACLTrainer):
    """CPU smoke test: 3 pretraining + 2 segmentation epochs of 4 iterations (2 validation iterations)."""
    pretrain_epochs = 3


class SACLTrainer_torchaug_smoke(SACLTrainer_smoke):
    """CPU smoke test of phase 1 with nnunet_sacl.method.augment (the on-device path that CUDA runs use by default)."""
    pretrain_augmentation = "torch"


class SACLPretrainer_smoke(_ShortRun, SACLPretrainer):
    """CPU smoke test of phase 1 alone: 3 pretraining epochs of 4 iterations."""
    pretrain_epochs = 3


class nnUNetTrainer_smoke(_ShortRun, nnUNetTrainer):
    """Stock nnU-Net with SACLTrainer_smoke's segmentation length: the baseline (and -pretrained_weights target)."""


class _DemoRun(_ShortRun, nnUNetTrainerNoMirroring):
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


class SACLTrainer_demo(_DemoRun, SACLTrainer):
    """The README demo on CPU: 4 pretraining + 12 segmentation epochs of 75 iterations, batch 5, no mirroring."""
    pretrain_epochs = 4
    run_epochs = 12


class nnUNetTrainer_demo(_DemoRun, nnUNetTrainer):
    """Stock nnU-Net (without mirroring) for the demo's comparison: 16 epochs of 75 iterations, batch 5, as many
    iterations as SACLTrainer_demo's two phases together."""


class SACLTrainer_joint_demo(_DemoRun, SACLTrainer_joint):
    """SACLTrainer_joint at the demo's length: 16 epochs of 75 iterations, batch 5, no mirroring, contrastive term
    in every step (the third arm of the demo study, docs/study.md)."""


class SACLTrainer_demo_smoke(SACLTrainer_demo):
    """CPU test of the demo: 3 pretraining + 2 segmentation epochs of 4 iterations, batch 4."""
    pretrain_epochs, run_epochs, run_iterations, run_batch_size = 3, 2, 4, 4


class nnUNetTrainer_demo_smoke(nnUNetTrainer_demo):
    """CPU test of the demo's baseline: 5 epochs of 4 iterations, batch 4 (SACLTrainer_demo_smoke's total)."""
    run_epochs, run_iterations, run_batch_size = 5, 4, 4


class SACLTrainer_joint_smoke(_ShortRun, SACLTrainer_joint):
    """CPU smoke test of the joint trainer: 2 epochs of 4 iterations (2 validation iterations)."""


class SACLTrainer_PaperStyle_smoke(_ShortRun, SACLTrainer_PaperStyle):
    """CPU smoke test of the paper-style embedding."""
    pretrain_epochs = 3


class nnUNetTrainer_ftconvention_smoke(_ShortRun, nnUNetTrainer_ftconvention):
    """CPU test: nnUNetTrainer_ftconvention at the smoke length (2 epochs of 4 iterations)."""


class SACLTrainer_demo_eqseg(SACLTrainer_demo):
    """The demo's SACL arm at equal segmentation iterations: 4 pretraining + 16 segmentation epochs (pretraining on
    top of nnUNetTrainer_demo's 1,200 iterations)."""
    run_epochs = 16


class SACLTrainer_demo_eqseg_ftconvention(PretrainedConventionMixin, SACLTrainer_demo_eqseg):
    """SACLTrainer_demo_eqseg with nnU-Net's convention for pretrained weights in phase 2."""


class SACLTrainer_demo_eqseg_splitlr(EncoderDecoderLRMixin, SACLTrainer_demo_eqseg):
    """SACLTrainer_demo_eqseg with the encoder at 1e-3 (warmed up) and the decoder at 1e-2 in phase 2."""


class SACLTrainer_demo_splitlr(EncoderDecoderLRMixin, SACLTrainer_demo):
    """SACLTrainer_demo (equal total iterations) with SACLTrainer_splitlr's phase-2 LRs."""


class SACLTrainer_demo_ftconvention(PretrainedConventionMixin, SACLTrainer_demo):
    """SACLTrainer_demo (equal total iterations) with nnU-Net's convention for pretrained weights in phase 2."""


class SACLTrainer_joint_demo_w05(SACLTrainer_joint_demo):
    """SACLTrainer_joint_demo with contrastive weight 0.5."""
    joint_contrastive_weight = 0.5


class _PreregRun(_DemoRun):
    """The pre-registered study's run length (docs/study.md): the demo's epochs of 75 iterations at batch 5 without
    mirroring, 11 segmentation epochs (825 iterations), so that the whole study fits in about 2.5 hours of a 2-core
    CPU."""
    run_epochs = 11


class nnUNetTrainer_prereg(_PreregRun, nnUNetTrainer):
    """Pre-registered baseline: stock nnU-Net, 11 epochs of 75 iterations."""


class SACLTrainer_prereg(_PreregRun, SACLTrainer):
    """SACL as today at equal total iterations: 3 pretraining + 8 segmentation epochs."""
    pretrain_epochs, run_epochs = 3, 8


class SACLTrainer_prereg_ftconvention(PretrainedConventionMixin, SACLTrainer_prereg):
    """SACLTrainer_prereg (equal total iterations) with nnU-Net's convention for pretrained weights in phase 2."""


class SACLTrainer_prereg_splitlr(EncoderDecoderLRMixin, SACLTrainer_prereg):
    """SACLTrainer_prereg (equal total iterations) with the encoder at 1e-3 (warmed up), the decoder at 1e-2."""


class SACLTrainer_prereg_eqseg(_PreregRun, SACLTrainer):
    """SACL at equal segmentation iterations: 3 pretraining epochs on top of the baseline's 11."""
    pretrain_epochs = 3


class SACLTrainer_prereg_eqseg_ftconvention(PretrainedConventionMixin, SACLTrainer_prereg_eqseg):
    """SACLTrainer_prereg_eqseg with nnU-Net's convention for pretrained weights in phase 2."""


class SACLTrainer_prereg_eqseg_splitlr(EncoderDecoderLRMixin, SACLTrainer_prereg_eqseg):
    """SACLTrainer_prereg_eqseg with the encoder at 1e-3 (warmed up) and the decoder at 1e-2 in phase 2."""


class SACLTrainer_joint_prereg(_PreregRun, SACLTrainer_joint):
    """The joint trainer at the pre-registered length: 11 epochs, contrastive weight 0.1."""


class SACLTrainer_joint_prereg_w05(SACLTrainer_joint_prereg):
    """SACLTrainer_joint_prereg with contrastive weight 0.5."""
    joint_contrastive_weight = 0.5


class _Temperature01:
    """SupCon temperature 0.1 instead of the paper's 0.07 (Wang et al. 2021 found 0.1 best for a pixel-contrast
    term); the pre-registered arm 9 of the best SACL arm."""
    temperature = 0.1


class SACLTrainer_prereg_t01(_Temperature01, SACLTrainer_prereg):
    """SACLTrainer_prereg at temperature 0.1."""


class SACLTrainer_prereg_ftconvention_t01(_Temperature01, SACLTrainer_prereg_ftconvention):
    """SACLTrainer_prereg_ftconvention at temperature 0.1."""


class SACLTrainer_prereg_splitlr_t01(_Temperature01, SACLTrainer_prereg_splitlr):
    """SACLTrainer_prereg_splitlr at temperature 0.1."""


class SACLTrainer_prereg_eqseg_t01(_Temperature01, SACLTrainer_prereg_eqseg):
    """SACLTrainer_prereg_eqseg at temperature 0.1."""


class SACLTrainer_prereg_eqseg_ftconvention_t01(_Temperature01, SACLTrainer_prereg_eqseg_ftconvention):
    """SACLTrainer_prereg_eqseg_ftconvention at temperature 0.1."""


class SACLTrainer_prereg_eqseg_splitlr_t01(_Temperature01, SACLTrainer_prereg_eqseg_splitlr):
    """SACLTrainer_prereg_eqseg_splitlr at temperature 0.1."""


class _TransferRun(_DemoRun):
    """The transfer study's run length (docs/pretraining.md, "Evidence"): the demo's epochs of 75 iterations at batch
    5 without mirroring, 6 epochs (450 iterations), so that its 27 fine-tuning runs fit in about an hour of a 2-core
    CPU."""
    run_epochs = 6


class nnUNetTrainer_transfer(_TransferRun, nnUNetTrainer):
    """The transfer study's fine-tuning (and its supervised pretraining on the merge): stock nnU-Net, 6 epochs of
    75 iterations."""


class SACLPretrainer_transfer(_TransferRun, SACLPretrainer):
    """The transfer study's SACL pretraining on the merge: 6 epochs of 75 iterations, as many as its supervised rival
    (nnUNetTrainer_transfer on the same data)."""
    pretrain_epochs = 6


__all__ = trainer_names(globals(), __name__)
