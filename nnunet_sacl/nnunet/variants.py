"""The shipped trainer variants, in nnU-Net's style: each changes one thing of SACLTrainer (or of stock nnU-Net, for
``-pretrained_weights`` runs). ``-tr NAME`` finds them through ``trainers/`` (``nnUNet_extTrainer``). The short CPU
run lengths of the tests, the demo and the pre-registered study are in ``short_runs``."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.nnunet.device_augmentation import OnDeviceAugmentationMixin
from nnunet_sacl.nnunet.finetune import FineTuneScheduleMixin
from nnunet_sacl.nnunet.joint import SACLTrainer_joint  # noqa: F401 (exported: -tr finds it through trainers/)
from nnunet_sacl.nnunet.lr_schedules import EncoderDecoderLRMixin, PretrainedConventionMixin
from nnunet_sacl.nnunet.pretrainer import SACLPretrainer  # noqa: F401 (exported, as SACLTrainer_joint)
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.trainer import SACLTrainer


def trainer_names(namespace: dict, module: str = "nnunet_sacl.") -> list:
    """The public nnU-Net trainer classes of this package (defined in `module`, or in any of its modules) in a
    module's namespace: that module's ``__all__``, so that ``from ... import *`` in ``trainers/`` exports every one
    and no hand-kept list can forget one."""
    return sorted(name for name, obj in namespace.items()
                  if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and not name.startswith("_")
                  and obj.__module__.startswith(module))


class SACLTrainer_PaperStyle(SACLTrainer):
    """Embeddings as in the paper: one encoder pass per organ-masked input, globally pooled (for comparison)."""
    embedding = "paper_style"


class SACLTrainer_phases(SACLTrainer):
    """Organ x contrast-phase labels (same organ, other phase = negative) from sacl_phases.json; see
    nnunet_sacl.method.phases."""
    use_phase_labels = True


class SACLTrainer_DCC(SACLTrainer):
    """Intensity-weighted negatives (DCC): organs of alike mean intensity repel fully, others less; CT datasets."""
    intensity_weighted_negatives = True


class SACLTrainer_warmup50(SACLTrainer):
    """Phase 2 starts with a 50-epoch linear LR warm-up (then poly decay over the remaining epochs)."""
    finetune_warmup_epochs = 50


class SACLTrainer_frozen50(SACLTrainer):
    """Phase 2 trains only the decoder for 50 epochs, then the whole network."""
    finetune_frozen_encoder_epochs = 50


class nnUNetTrainer_seeded(SeededMixin, nnUNetTrainer):
    """Stock nnU-Net whose runs repeat: seeded with $SACL_SEED (0 when unset), like SACL's trainers (seeding.py)."""
    seed = 0


class nnUNetTrainer_frozen50(FineTuneScheduleMixin, nnUNetTrainer):
    """For ``-pretrained_weights`` runs: encoder frozen for 50 epochs, then the whole network. (For a warm-up,
    nnU-Net's own ``nnUNetTrainer_warmup`` already does 50 linear epochs, then poly over the rest.)"""
    finetune_frozen_encoder_epochs = 50


class SACLTrainer_torchaug(OnDeviceAugmentationMixin, SACLTrainer):
    """Both phases augmented on the training device (phase 1 already is on CUDA by default); for few CPU cores per GPU."""


class nnUNetTrainer_torchaug(OnDeviceAugmentationMixin, nnUNetTrainer):
    """Stock nnU-Net training augmented on the training device instead of by CPU workers."""


class SACLTrainer_ftconvention(PretrainedConventionMixin, SACLTrainer):
    """Phase 2 with nnU-Net's convention for pretrained weights: LR 1e-3, linear warm-up over the first 5% of the
    segmentation epochs, then poly."""


class nnUNetTrainer_ftconvention(PretrainedConventionMixin, nnUNetTrainer):
    """Stock nnU-Net for ``-pretrained_weights`` runs with nnU-Net's convention: LR 1e-3, 5% linear warm-up, poly."""


class SACLTrainer_splitlr(EncoderDecoderLRMixin, SACLTrainer):
    """Phase 2 with separate LRs: decoder at nnU-Net's 1e-2 (poly from epoch 0), the pretrained encoder at 1e-3,
    warmed up over the first 5% of the segmentation epochs."""


class nnUNetTrainer_splitlr(EncoderDecoderLRMixin, nnUNetTrainer):
    """Stock nnU-Net for ``-pretrained_weights`` runs with SACLTrainer_splitlr's encoder/decoder LRs."""


__all__ = trainer_names(globals())
