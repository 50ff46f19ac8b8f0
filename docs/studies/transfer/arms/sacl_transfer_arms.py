"""The arms of the transfer study (docs/studies/transfer/README.md), found by nnU-Net when this folder follows the
package's trainers folder in nnUNet_extTrainer (run.sh sets it). The demo's epochs (75 iterations at batch 5,
2 validation iterations, no mirroring), 6 epochs (450 iterations), so that the study's 27 fine-tuning runs fit in
about an hour of a 2-core CPU. Like every short run they are now seeded (seed 0); the study's committed results
came from unseeded runs."""
from nnunet_sacl.nnunet.short_runs import SACLPretrainer_demo, nnUNetTrainer_demo


class nnUNetTrainer_transfer(nnUNetTrainer_demo):
    """The transfer study's fine-tuning (and its supervised pretraining on the merge): stock nnU-Net, 6 epochs of
    75 iterations."""
    run_epochs = 6


class SACLPretrainer_transfer(SACLPretrainer_demo):
    """The transfer study's SACL pretraining on the merge: 6 epochs of 75 iterations, as many as its supervised rival
    (nnUNetTrainer_transfer on the same data)."""
    pretrain_epochs = 6
