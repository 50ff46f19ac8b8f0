"""What a seeded run costs: nnU-Net's unseeded training (NonDetMultiThreadedAugmenter) against the same trainer
seeded (SeededMixin: batchgenerators' ordered MultiThreadedAugmenter, one seed per worker), interleaved, in process,
on a planned dataset. Prints and writes (JSON) the mean epoch time of each run after its first epoch.

    python benchmarks/seeded_cost.py DATASET CONFIG [--epochs 4] [--repeats 2] [-o results.json]

nnU-Net's folders come from the environment; the worker count is nnU-Net's own (nnUNet_n_proc_DA or its default,
at most the cores)."""
import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_sacl.nnunet.short_runs import nnUNetTrainer_demo


class nnUNetTrainer_cost_unseeded(nnUNetTrainer_demo):
    """The demo baseline's epochs (75 iterations, batch 5, no mirroring), unseeded."""
    seed = None


class nnUNetTrainer_cost_seeded(nnUNetTrainer_demo):
    """The same, seeded."""
    seed = 0


def epoch_seconds(trainer_class, dataset, configuration, epochs) -> list:
    results = tempfile.mkdtemp(prefix="seeded_cost_")
    os.environ["nnUNet_results"] = results
    probe = get_trainer_from_args(dataset, configuration, 0, "nnUNetTrainer", device=torch.device("cpu"))
    trainer = trainer_class(dict(probe.plans_manager.plans, continue_training=False), configuration, 0,
                            probe.dataset_json, torch.device("cpu"))
    trainer.num_epochs = epochs
    trainer.run_training()
    start = trainer.logger.get_value("epoch_start_timestamps", step=None)
    end = trainer.logger.get_value("epoch_end_timestamps", step=None)
    return [e - s for s, e in zip(start, end)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("configuration")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    runs = {"unseeded": [], "seeded": []}
    for _ in range(args.repeats):        # interleaved: unseeded, seeded, unseeded, seeded, ...
        for name, cls in (("unseeded", nnUNetTrainer_cost_unseeded), ("seeded", nnUNetTrainer_cost_seeded)):
            runs[name].append(epoch_seconds(cls, args.dataset, args.configuration, args.epochs))
    summary = {name: float(np.mean([s for run in r for s in run[1:]])) for name, r in runs.items()}
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "torch": torch.__version__, "augmentation_workers": get_allowed_n_proc_DA(),
              "dataset": args.dataset, "configuration": args.configuration, "epochs_per_run": args.epochs,
              "epoch_seconds": runs, "mean_epoch_seconds_after_the_first": summary,
              "seeded_over_unseeded": summary["seeded"] / summary["unseeded"]}
    print(json.dumps(report, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
