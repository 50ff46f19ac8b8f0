"""The arms of the pre-registered study (docs/studies/prereg/README.md). nnU-Net finds them when this folder follows
the package's trainers folder in nnUNet_extTrainer (run.sh sets it):

    export nnUNet_extTrainer="$(python -c 'import nnunet_sacl; print(nnunet_sacl.trainers_folder())'):$PWD/docs/studies/prereg/arms"

Every arm is one of the demo's trainers (epochs of 75 iterations at batch 5, 2 validation iterations, no mirroring)
with the study's lengths: 11 segmentation epochs (825 iterations), SACL 3 pretraining epochs (225 iterations).
Like every short run they are now seeded (seed 0); the study's committed results came from unseeded runs."""
from nnunet_sacl.nnunet.lr_schedules import EncoderDecoderLRMixin, PretrainedConventionMixin
from nnunet_sacl.nnunet.short_runs import SACLTrainer_demo, SACLTrainer_joint_demo, nnUNetTrainer_demo


class nnUNetTrainer_prereg(nnUNetTrainer_demo):
    """Pre-registered baseline: stock nnU-Net, 11 epochs of 75 iterations."""
    run_epochs = 11


class SACLTrainer_prereg(SACLTrainer_demo):
    """SACL as today at equal total iterations: 3 pretraining + 8 segmentation epochs."""
    pretrain_epochs, run_epochs = 3, 8


class SACLTrainer_prereg_ftconvention(PretrainedConventionMixin, SACLTrainer_prereg):
    """SACLTrainer_prereg (equal total iterations) with nnU-Net's convention for pretrained weights in phase 2."""


class SACLTrainer_prereg_splitlr(EncoderDecoderLRMixin, SACLTrainer_prereg):
    """SACLTrainer_prereg (equal total iterations) with the encoder at 1e-3 (warmed up), the decoder at 1e-2."""


class SACLTrainer_prereg_eqseg(SACLTrainer_demo):
    """SACL at equal segmentation iterations: 3 pretraining epochs on top of the baseline's 11."""
    pretrain_epochs, run_epochs = 3, 11


class SACLTrainer_prereg_eqseg_ftconvention(PretrainedConventionMixin, SACLTrainer_prereg_eqseg):
    """SACLTrainer_prereg_eqseg with nnU-Net's convention for pretrained weights in phase 2."""


class SACLTrainer_prereg_eqseg_splitlr(EncoderDecoderLRMixin, SACLTrainer_prereg_eqseg):
    """SACLTrainer_prereg_eqseg with the encoder at 1e-3 (warmed up) and the decoder at 1e-2 in phase 2."""


class SACLTrainer_joint_prereg(SACLTrainer_joint_demo):
    """The joint trainer at the pre-registered length: 11 epochs, contrastive weight 0.1."""
    run_epochs = 11


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
