"""Demo-length arms for the one-fold probe of schedules and budgets that followed the demo study (2026-11-30) and
led to the pre-registered study (docs/studies/prereg/README.md): `_eqseg` pretrains 4 epochs on top of the
baseline's 16 segmentation epochs (equal segmentation iterations), the others keep the demo's equal total; `_w05` is
the joint trainer at contrastive weight 0.5. Found by nnU-Net when this folder follows the package's trainers folder
in nnUNet_extTrainer."""
from nnunet_sacl.nnunet.lr_schedules import EncoderDecoderLRMixin, PretrainedConventionMixin
from nnunet_sacl.nnunet.short_runs import SACLTrainer_demo, SACLTrainer_joint_demo


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
