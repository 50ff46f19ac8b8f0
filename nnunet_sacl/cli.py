"""``nnunet-sacl``: the package's own commands (nnU-Net's commands stay as they are)."""
import argparse
import sys

EXAMPLES = {
    "env": "nnunet-sacl env\n"
           "# prints the export line; exit code 1 if nnUNet_extTrainer is not right",
    "synthetic-data": "nnunet-sacl synthetic-data -d 991    # into $nnUNet_raw/Dataset991_SACLSynthetic",
}
RAW = argparse.RawDescriptionHelpFormatter  # examples keep their lines (argparse would re-wrap them mid-argument)


def _env(args) -> int:
    from nnunet_sacl.environment import export_line, ext_trainer_problems
    problems = ext_trainer_problems()
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"nnUNet_extTrainer is set up for SACL ({export_line()})")
    return 1 if problems else 0


def _synthetic(args) -> int:
    import os
    from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
    raw = args.raw or os.environ.get("nnUNet_raw")
    if not raw:
        print("nnUNet_raw is not set: export it or pass --raw FOLDER", file=sys.stderr)
        return 1
    print(make_synthetic_dataset(raw, args.d, num_training=args.num_training, seed=args.seed))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-sacl", description="SACL pretraining for nnU-Net v2")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("env", help="check that nnU-Net can find the SACL trainers", epilog=EXAMPLES["env"],
                       formatter_class=RAW)
    p.set_defaults(func=_env)

    p = sub.add_parser("synthetic-data", help="write the small generated dataset used by tests and the demo",
                       epilog=EXAMPLES["synthetic-data"], formatter_class=RAW)
    p.add_argument("-d", type=int, required=True, help="dataset id")
    p.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--num-training", type=int, default=10, help="number of training cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the shapes (default 0)")
    p.set_defaults(func=_synthetic)

    from nnunet_sacl import demo, train
    from nnunet_sacl.analysis import embeddings, evaluation, study, weights
    from nnunet_sacl.dataset_conversion import converters, demo_data, submission
    for module in (converters, demo, demo_data, submission, evaluation, embeddings, weights):
        module.add_cli(sub)
    for module in (train, study):
        module.add_cli(sub)

    args = parser.parse_args(argv)
    if getattr(args, "device", "unset") is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
