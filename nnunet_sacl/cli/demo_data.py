"""``nnunet-sacl demo-data``: the real-CT demo dataset (``nnunet_sacl.dataset_conversion.demo_data``)."""
from nnunet_sacl.cli import Command, refusing
from nnunet_sacl.defaults import SDIST_NAME

EXAMPLE = ("nnunet-sacl demo-data -d 992    # into $nnUNet_raw/Dataset992_SACLDemoCT\n"
           "nnunet-sacl demo-data -d 992 --sdist totalsegmentator-2.18.0.tar.gz \\\n"
           "      --raw nnUNet_raw            # offline\n"
           "nnunet-sacl demo-data -d 993 --pretraining-source aorta   # TSAortaReport\n"
           "nnunet-sacl demo-data -d 994 --pretraining-source heart   # TSHeartReport")


def add_arguments(p) -> None:
    p.add_argument("-d", type=int, required=True, help="dataset id")
    p.add_argument("--sdist", help=f"a local {SDIST_NAME} (default: the cache folder, else download from PyPI)")
    p.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--num-training", type=int,
                   help="number of training cases, seeded perturbations of the one CT (default 20; 4 with "
                        "--pretraining-source)")
    p.add_argument("--pretraining-source", choices=("aorta", "heart"),
                   help="instead of the demo dataset, one of two labelled pretraining sources from the same sdist "
                        "(another scan, other structures; to try merge-datasets and SACLPretrainer, see "
                        "docs/pretraining.md)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the perturbations (default 0)")


def run(args) -> int:
    from nnunet_sacl.dataset_conversion.demo_data import DemoDataUnavailable, build_demo_dataset
    from nnunet_sacl.dataset_conversion.pretraining_sources import build_pretraining_source
    with refusing(DemoDataUnavailable, FileExistsError, ValueError):
        if args.pretraining_source:
            print(build_pretraining_source(args.pretraining_source, args.d, raw_folder=args.raw, sdist=args.sdist,
                                           num_cases=args.num_training or 4, seed=args.seed))
        else:
            print(build_demo_dataset(args.d, raw_folder=args.raw, sdist=args.sdist,
                                     num_training=args.num_training or 20, seed=args.seed))
    return 0


COMMANDS = [Command("demo-data", "write the real-CT demo dataset (BTCV labels) from the TotalSegmentator 2.18.0 sdist",
                    EXAMPLE, add_arguments, run)]
