"""``nnunet-sacl synthetic-data``: the small generated dataset of the tests and ``demo --synthetic``."""
import os

from nnunet_sacl.cli import Command, CommandError, refusing

EXAMPLE = "nnunet-sacl synthetic-data -d 991    # into $nnUNet_raw/Dataset991_SACLSynthetic"


def add_arguments(p) -> None:
    p.add_argument("-d", type=int, required=True, help="dataset id")
    p.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--num-training", type=int, default=10, help="number of training cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the shapes (default 0)")


def run(args) -> int:
    raw = args.raw or os.environ.get("nnUNet_raw")
    if not raw:
        raise CommandError("nnUNet_raw is not set: export it or pass --raw FOLDER")
    from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
    with refusing(FileExistsError):   # the dataset id is taken
        print(make_synthetic_dataset(raw, args.d, num_training=args.num_training, seed=args.seed))
    return 0


COMMANDS = [Command("synthetic-data", "write the small generated dataset used by tests and the demo", EXAMPLE,
                    add_arguments, run)]
