"""The arms of the length study (docs/studies/length/README.md). nnU-Net finds them when this folder is in
nnUNet_extTrainer, after the package's trainers folder:

    export nnUNet_extTrainer="$(python -c 'import nnunet_sacl; print(nnunet_sacl.trainers_folder())'):$PWD/docs/studies/length/arms"

Every arm is one of the demo's trainers (epochs of 75 iterations at batch 5, 2 validation iterations, no mirroring)
with the study's lengths and a seed: seed 1 for every arm (the same network initialisation and batches for the
arms of one length, so a paired difference is the method's, not the draw's), seed 2 for the second baseline."""
from nnunet_sacl.nnunet.short_runs import SACLTrainer_demo, SACLTrainer_joint_demo, nnUNetTrainer_demo


class nnUNetTrainer_len825(nnUNetTrainer_demo):
    """A0: stock nnU-Net, 11 epochs (825 iterations), seed 1."""
    run_epochs, seed = 11, 1


class nnUNetTrainer_len825_seed2(nnUNetTrainer_len825):
    """A0': A0 with seed 2 (how far two seeds of one trainer lie apart)."""
    seed = 2


class SACLTrainer_joint_len825(SACLTrainer_joint_demo):
    """A1: the joint trainer (contrastive weight 0.1), 11 epochs, seed 1."""
    run_epochs, seed = 11, 1


class SACLTrainer_len825_pre225(SACLTrainer_demo):
    """A2: SACL, 3 pretraining epochs (225 iterations) on top of 11 segmentation epochs, seed 1."""
    pretrain_epochs, run_epochs, seed = 3, 11, 1


class SACLTrainer_len825_pre900(SACLTrainer_len825_pre225):
    """A3: SACL, 12 pretraining epochs (900 iterations) + 11 segmentation epochs, seed 1."""
    pretrain_epochs = 12


class SACLTrainer_len825_pre3600(SACLTrainer_len825_pre225):
    """A4: SACL, 48 pretraining epochs (3,600 iterations) + 11 segmentation epochs, seed 1."""
    pretrain_epochs = 48


class nnUNetTrainer_len3300(nnUNetTrainer_demo):
    """B0: stock nnU-Net, 44 epochs (3,300 iterations), seed 1."""
    run_epochs, seed = 44, 1


class SACLTrainer_joint_len3300(SACLTrainer_joint_demo):
    """B1: the joint trainer (weight 0.1), 44 epochs, seed 1."""
    run_epochs, seed = 44, 1
