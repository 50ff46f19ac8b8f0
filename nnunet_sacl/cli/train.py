"""``nnunet-sacl train`` (``python -m nnunet_sacl.cli train`` under torchrun): ``nnUNetv2_train``'s arguments, one
process or a torchrun worker (the launcher: ``nnunet_sacl.train``)."""
import argparse

from nnunet_sacl import train as launcher
from nnunet_sacl.cli import RAW, Command, refusing, run_command
from nnunet_sacl.train import DEFAULT_COLLECTIVE_TIMEOUT_S

EXAMPLE = ("torchrun --standalone --nproc_per_node 8 \\\n"
           "    -m nnunet_sacl.cli train 17 3d_fullres 0 -tr SACLTrainer\n"
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes 2 \\\n"
           "    --node_rank $SLURM_NODEID --nproc_per_node 8 --rdzv_backend c10d \\\n"
           "    --rdzv_endpoint $HEAD_NODE:29500 --max-restarts 3 \\\n"
           "    --no-python nnunet-sacl train 17 3d_fullres 0 -tr SACLTrainer\n"
           "# no torchrun: one process, as nnUNetv2_train\n"
           "nnunet-sacl train 17 3d_fullres 0 -tr SACLTrainer\n"
           "(docs/distributed.md: SLURM script, batch and negatives per world size, faults)")


def add_arguments(p) -> None:
    p.add_argument("dataset_name_or_id", help="dataset name or id")
    p.add_argument("configuration", help="configuration, e.g. 3d_fullres")
    p.add_argument("fold", help="fold (0-4 or all)")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer class (default nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-pretrained_weights", default=None, help="checkpoint to start from (as nnUNetv2_train)")
    p.add_argument("--npz", action="store_true", help="save softmax of the final validation (as nnUNetv2_train)")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth")
    p.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="cuda (default), cpu or mps")
    p.add_argument("--dist-backend", default="auto", choices=["auto", "nccl", "gloo"],
                   help="under torchrun: nccl on cuda, gloo on cpu (auto, the default)")
    p.add_argument("--collective-timeout", type=float, default=DEFAULT_COLLECTIVE_TIMEOUT_S, metavar="SECONDS",
                   help=f"under torchrun: a collective that waits this long for a lost rank fails and the worker "
                        f"exits (default {DEFAULT_COLLECTIVE_TIMEOUT_S})")


def run(args) -> int:
    with refusing(launcher.LaunchError):
        return launcher.launch(args)


COMMANDS = [Command("train", "nnUNetv2_train's arguments, one process or a torchrun worker (multi-node)", EXAMPLE,
                    add_arguments, run)]
