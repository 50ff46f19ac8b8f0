"""Run lengths of the pseudo-label recipe's CPU demonstration (benchmarks/pseudo_label_recipe_demo.sh), found by
adding this folder to nnUNet_extTrainer: the demo trainers' settings (batch 5, no mirroring, seeded) at fewer
iterations, so that the whole recipe (three trainings) runs in about 20 minutes on a shared 2-core CPU."""
from nnunet_sacl.nnunet.short_runs import SACLPretrainer_demo, nnUNetTrainer_demo


class nnUNetTrainer_recipe(nnUNetTrainer_demo):
    """Stock nnU-Net at the demo's settings: 3 epochs of 40 iterations."""
    run_epochs, run_iterations = 3, 40


class SACLPretrainer_recipe(SACLPretrainer_demo):
    """SACL phase 1 at the demo's settings: 2 epochs of 40 iterations."""
    run_epochs, run_iterations = 2, 40
