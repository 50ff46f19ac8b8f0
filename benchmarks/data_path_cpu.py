"""CPU-seconds per batch of one dataloader worker: nnU-Net's stock training transforms against the crop-only
loader of SACL's phase 1 (augmentation on the device), and ``nnunet_sacl.method.augment`` on the CPU for reference.

On the dataset of benchmarks/make_btcv_sized_dataset.py (nnU-Net-planned, preprocessed, 3d_fullres patch
48x192x192, batch 2), three things are measured in one process, interleaved batch by batch:

- ``stock``: ``next(dataloader_train)`` of ``nnUNetTrainer`` with ``nnUNet_n_proc_DA=0`` (nnU-Net's single-threaded
  augmenter: the same ``nnUNetDataLoader`` and transforms a worker runs: load, crop the initial patch, augment);
- ``crop_only``: the same for ``SACLTrainer`` with ``pretrain_augmentation="torch"`` (phase 1 on CUDA: the loader
  only loads and crops nnU-Net's initial patch);
- ``torch_augment_cpu``: ``nnunet_sacl.method.augment.augment_batch`` on the crop-only batch, on the CPU.

Like a worker (batchgenerators' NonDetMultiThreadedAugmenter) the process runs with one torch thread and one BLAS
thread, so process CPU time per batch is one worker's CPU-seconds. Mean and median over ``--batches`` (the
augmentation on the CPU over the first ``--augment-batches`` of them). A worker's throughput is set by the mean:
nnU-Net's transforms are random (a rotation or scaling costs far more than a crop), so single batches vary a lot.

    python benchmarks/make_btcv_sized_dataset.py --root /tmp/dp --cases 5 -np 1
    python benchmarks/data_path_cpu.py --root /tmp/dp --batches 60
"""
import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from nnunet_sacl.method.augment import augment_batch
from nnunet_sacl.environment import with_ext_trainer

from data_path_benchmark import CPU_AUG, GPU_AUG, RUNS, STOCK, build_trainer, start_loaders, stop_loaders
from make_btcv_sized_dataset import use_root
from step_benchmark import REPO, device_name, write_results

CPU = torch.device("cpu")


def cpu_seconds(fn):
    """(result, CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def measure(args) -> dict:
    runs = {r.key: r for r in RUNS}
    stock = build_trainer(runs[STOCK], args.dataset, args.configuration, args.plans, CPU)
    sacl = build_trainer(runs[GPU_AUG], args.dataset, args.configuration, args.plans, CPU)
    assert CPU_AUG in runs
    facts = {"dataset_name": stock.plans_manager.dataset_name,
             "patch_size": list(stock.configuration_manager.patch_size), "batch_size": stock.batch_size,
             "initial_patch_size": list(sacl.augment_settings.initial_patch_size)}
    start_loaders(stock, 0)
    start_loaders(sacl, 0)
    times = {"stock": ([], []), "crop_only": ([], []), "torch_augment_cpu": ([], [])}
    try:
        for i in range(args.warmup + args.batches):
            _, cpu_s, wall_s = cpu_seconds(lambda: next(stock.dataloader_train))
            keep = i >= args.warmup
            if keep:
                times["stock"][0].append(cpu_s), times["stock"][1].append(wall_s)
            batch, cpu_s, wall_s = cpu_seconds(lambda: next(sacl.dataloader_train))
            if keep:
                times["crop_only"][0].append(cpu_s), times["crop_only"][1].append(wall_s)
            if i >= args.warmup + args.augment_batches:
                continue
            seg = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
            _, cpu_s, wall_s = cpu_seconds(lambda: augment_batch(batch["data"], seg, sacl.augment_settings,
                                                                 sacl.augment_generator))
            if keep:
                times["torch_augment_cpu"][0].append(cpu_s), times["torch_augment_cpu"][1].append(wall_s)
    finally:
        stop_loaders(stock)
        stop_loaders(sacl)
    rows = [{"pipeline": k, "cpu_s_per_batch": statistics.mean(c), "cpu_s_median": statistics.median(c),
             "cpu_s_min": min(c), "cpu_s_max": max(c), "wall_s_per_batch": statistics.mean(w)}
            for k, (c, w) in times.items()]
    return {**facts, "rows": rows}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, help="nnUNet_raw/preprocessed/results under this folder (as "
                                             "make_btcv_sized_dataset.py --root); else the environment's")
    p.add_argument("-d", "--dataset", default="991")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    p.add_argument("--augment-batches", type=int, default=10,
                   help="time nnunet_sacl.method.augment on the first this many timed batches only (it is the slowest)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    use_root(args.root)
    os.environ["nnUNet_extTrainer"] = with_ext_trainer(os.environ)["nnUNet_extTrainer"]
    os.environ["nnUNet_compile"] = "false"
    torch.set_num_threads(1)
    one, five, fifteen = os.getloadavg()
    results = {"kind": "data_path_cpu", "device": "cpu", "cpu": device_name(CPU), "cpu_cores": os.cpu_count(),
               "threads": 1, "torch": torch.__version__, "nnunetv2": version("nnunetv2"), "dataset": args.dataset,
               "configuration": args.configuration, "batches": args.batches, "warmup": args.warmup,
               "augment_batches": min(args.augment_batches, args.batches),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": shlex.join([Path(sys.executable).name] + sys.argv),
               "timing": "process CPU time (time.process_time) per batch, one torch and one BLAS thread, the "
                         "three pipelines interleaved batch by batch",
               "load_before": {"load_1min": one, "load_5min": five, "load_15min": fifteen}}
    with threadpool_limits(1, None):
        results.update(measure(args))
    one, five, fifteen = os.getloadavg()
    results["load_after"] = {"load_1min": one, "load_5min": five, "load_15min": fifteen}
    by = {r["pipeline"]: r for r in results["rows"]}
    ratio = by["crop_only"]["cpu_s_per_batch"] / by["stock"]["cpu_s_per_batch"]
    results["ratios"] = {"crop_only/stock": ratio,
                         "torch_augment_cpu/stock": by["torch_augment_cpu"]["cpu_s_per_batch"] /
                         by["stock"]["cpu_s_per_batch"]}
    results["targets"] = {"crop_only/stock CPU per batch": {"ratio": ratio, "limit": 0.2, "at_most": True,
                                                            "met": ratio <= 0.2}}
    print(f"{results['dataset_name']}: patch {results['patch_size']} (loader crops {results['initial_patch_size']}"
          f" for the device path), batch {results['batch_size']}; CPU-seconds per batch of one worker")
    for r in results["rows"]:
        print(f"  {r['pipeline']:<18} mean {r['cpu_s_per_batch']:.3f} s  median {r['cpu_s_median']:.3f} s  "
              f"(min {r['cpu_s_min']:.3f}, max {r['cpu_s_max']:.3f}), wall {r['wall_s_per_batch']:.3f} s")
    print(f"  crop_only / stock = {ratio:.3f} (<= 0.2)")
    print(f"written: {write_results(results, args.out, 'data_path_cpu')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
