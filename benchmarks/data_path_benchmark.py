"""Data-path benchmark: SACL pretraining wall time per iteration with nnU-Net's real dataloaders on a
preprocessed dataset, for several ``nnUNet_n_proc_DA``, against the compute-only step and stock nnU-Net.

For each worker count W the real dataloaders run (``on_train_start()`` of trainers built in-process with nnU-Net's
``get_trainer_from_args``, cudnn.benchmark and torch.compile as ``nnUNetv2_train`` sets them) and four numbers are
taken, all in milliseconds per iteration:

- ``gpu_aug_wall_ms``: phase 1 ``train_step(next(dataloader_train))`` with ``pretrain_augmentation="torch"``
  (CPU workers only crop nnU-Net's initial patch, ``nnunet_sacl.method.augment`` augments the batch on the device);
- ``cpu_aug_wall_ms``: the same with ``pretrain_augmentation="nnunet"`` (nnU-Net's CPU augmentation pipeline);
- ``compute_only_ms``: the SACL step alone on one batch kept on the device (initial patch size, so the on-device
  augmentation counts as compute), and ``augment_ms``, ``augment_share``: ``augment_batch`` alone on that batch;
- ``stock_wall_ms``: stock ``nnUNetTrainer.train_step(next(dataloader_train))``.

Loader runs are wall clock over ``--iters`` steps with a device synchronisation only at start and end, so loader
stalls count; ``*_loader_wait_ms`` is the host time spent in ``next()``. Each trainer is built (and compiled) once
and its dataloaders are restarted for every W. The dataset comes from benchmarks/make_btcv_sized_dataset.py; the
commands for a GPU machine are in benchmarks/DATA_PATH.md.

    python benchmarks/data_path_benchmark.py --root /tmp/nnunet_dp --workers 4 8 12 16 --out benchmarks/results
    python benchmarks/data_path_benchmark.py --root /tmp/dp_small --device cpu --workers 0 1 --iters 3 --warmup 1 \
        --out /tmp/dp
"""
import argparse
import math
import os
import shlex
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from io import StringIO
from pathlib import Path
from typing import Callable, Optional

import torch

from nnunetv2.run.run_training import get_trainer_from_args

from nnunet_sacl.method.augment import augment_batch
from nnunet_sacl.environment import with_ext_trainer
from nnunet_sacl.nnunet.trainer import SACLTrainer

from make_btcv_sized_dataset import use_root
from step_benchmark import (REPO, Target, _fmt, _ratio, configure_torch_like_nnunet_train, device_name,
                            free_device_memory, slug, synchronize, write_results)

GPU_AUG, CPU_AUG, STOCK = "gpu_aug", "cpu_aug", "stock"


@dataclass(frozen=True)
class LoaderRun:
    """One kind of training iteration timed with the real dataloaders: trainer name, the SACL data path (None for
    stock nnU-Net), and which trainer method is the step."""
    key: str
    label: str
    trainer_name: str
    pretrain_augmentation: Optional[str]
    step_method: str


RUNS = (
    LoaderRun(GPU_AUG, "SACL pretraining, augmentation on the device", "SACLTrainer", "torch", "train_step"),
    LoaderRun(CPU_AUG, "SACL pretraining, nnU-Net's CPU augmentation", "SACLTrainer", "nnunet", "train_step"),
    LoaderRun(STOCK, "stock nnUNetTrainer.train_step", "nnUNetTrainer", None, "train_step"),
)

TARGET_WORKERS = (8, 16)
TARGETS = (   # each with the worker counts it is set at (None: every one)
    (Target("GPU-aug wall / compute-only", 1.1, True, lambda r: _ratio(r["gpu_aug_wall_ms"], r["compute_only_ms"])),
     TARGET_WORKERS),
    (Target("GPU-aug wall / stock wall", 0.45, True, lambda r: _ratio(r["gpu_aug_wall_ms"], r["stock_wall_ms"])),
     None),
    (Target("augment_batch / compute-only step", 0.15, True, lambda r: r.get("augment_share")), None),
)


# ------------------------------------------------------------------------------------------------ trainers
def build_trainer(run: LoaderRun, dataset: str, configuration: str, plans: str, device: torch.device):
    """The trainer as nnUNetv2_train builds it (fold 0), initialized; the SACL data path is set on the instance
    before initialize(), which is where SACLTrainer reads it (the same as a one-line subclass)."""
    with redirect_stdout(StringIO()):          # citation banner and device line; they still go to the log file
        trainer = get_trainer_from_args(dataset, configuration, 0, run.trainer_name, plans, device=device)
        if isinstance(trainer, SACLTrainer):      # SACL pretraining: the trainer's phase 1
            trainer = trainer.make_pretrainer()
        if run.pretrain_augmentation is not None:
            trainer.pretrain_augmentation = run.pretrain_augmentation
        trainer.initialize()
    return trainer


def start_loaders(trainer, workers: int) -> None:
    """nnU-Net's on_train_start with nnUNet_n_proc_DA=W (get_dataloaders reads it); 0 = single-threaded."""
    os.environ["nnUNet_n_proc_DA"] = str(workers)
    with redirect_stdout(StringIO()):          # print_plans; worker tracebacks still reach stderr
        trainer.on_train_start()
    trainer.network.train()
    if getattr(trainer, "head", None) is not None:
        trainer.head.train()


def stop_loaders(trainer) -> None:
    """Finish the dataloaders as nnU-Net's on_train_end does, without its checkpoint (stock trainers too)."""
    with redirect_stdout(StringIO()):
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
        trainer.dataloader_train = trainer.dataloader_val = None


# ------------------------------------------------------------------------------------------------ timing
def prefetch_capacity(loader) -> int:
    """Batches NonDetMultiThreadedAugmenter can hold ready: its two queues (num_cached each), one finished batch
    per worker and one being pinned. 0 for the single-threaded augmenter, which prefetches nothing."""
    if not hasattr(loader, "num_processes"):
        return 0
    return 2 * loader.num_cached + loader.num_processes + 1


def warm_up(step: Callable[[dict], dict], loader, steps: int) -> None:
    """Half the warm-up steps (compilation, cudnn autotuning), then the batches the workers prefetched meanwhile
    are drained, then the other half: timing starts in the loader's steady state, not on a full queue."""
    for _ in range(math.ceil(steps / 2)):
        step(next(loader))
    for _ in range(prefetch_capacity(loader)):
        next(loader)
    for _ in range(steps // 2):
        step(next(loader))


def time_loader_steps(step: Callable[[dict], dict], loader, iters: int, device: torch.device) -> dict:
    """Wall ms per iteration of step(next(loader)), synchronised only at start and end so loader stalls count,
    and the host ms per iteration spent waiting in next()."""
    waited = 0.0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        before = time.perf_counter()
        batch = next(loader)
        waited += time.perf_counter() - before
        step(batch)
    synchronize(device)
    return {"wall_ms": (time.perf_counter() - start) * 1e3 / iters, "loader_wait_ms": waited * 1e3 / iters}


def wall_ms_per_call(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3 / iters


def batch_on_device(batch: dict, device: torch.device) -> dict:
    target = batch["target"]
    target = [t.to(device) for t in target] if isinstance(target, (list, tuple)) else target.to(device)
    return dict(batch, data=batch["data"].to(device), target=target)


def measure_compute_only(trainer, batch: dict, warmup: int, iters: int) -> dict:
    """The SACL step on one batch already on the device (no loader), and augment_batch alone on that batch: the
    augmentation's share of the step (both on one stream, so the step's time includes it)."""
    device = trainer.device
    for _ in range(warmup):
        trainer.train_step(batch)
    step_ms = wall_ms_per_call(lambda: trainer.train_step(batch), iters, device)
    seg = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]

    def augment():
        return augment_batch(batch["data"], seg, trainer.augment_settings, trainer.augment_generator)

    for _ in range(warmup):
        augment()
    augment_ms = wall_ms_per_call(augment, iters, device)
    return {"compute_only_ms": step_ms, "augment_ms": augment_ms, "augment_share": _ratio(augment_ms, step_ms)}


def measure_run(run: LoaderRun, trainer, workers: int, warmup: int, iters: int) -> dict:
    """One trainer at one worker count: loaders started, warmed up, timed, stopped; for the on-device data path
    also the compute-only step on a batch taken from the same loader."""
    start_loaders(trainer, workers)
    try:
        step = getattr(trainer, run.step_method)
        loader = trainer.dataloader_train
        warm_up(step, loader, warmup)
        timed = time_loader_steps(step, loader, iters, trainer.device)
        row = {f"{run.key}_wall_ms": timed["wall_ms"], f"{run.key}_loader_wait_ms": timed["loader_wait_ms"]}
        kept = batch_on_device(next(loader), trainer.device) if run.key == GPU_AUG else None
    finally:
        stop_loaders(trainer)
    if kept is not None:
        row.update(measure_compute_only(trainer, kept, max(warmup, 1), iters))
    return row


def benchmark(args: argparse.Namespace, device: torch.device) -> dict:
    """All runs; each trainer is built and compiled once, its loaders restarted for every worker count."""
    rows = {w: {"workers": w} for w in args.workers}
    facts = {}
    for run in RUNS:
        trainer = build_trainer(run, args.dataset, args.configuration, args.plans, device)
        compiled = bool(trainer._do_i_compile())
        facts.update(compile=compiled, patch_size=list(trainer.configuration_manager.patch_size),
                     batch_size=trainer.batch_size, dataset_name=trainer.plans_manager.dataset_name)
        if getattr(trainer, "augment_settings", None) is not None:
            facts["initial_patch_size"] = list(trainer.augment_settings.initial_patch_size)
        print(f"{run.label} ({run.trainer_name}, {'torch.compile' if compiled else 'eager'})", flush=True)
        for w in args.workers:
            row = measure_run(run, trainer, w, args.warmup, args.iters)
            rows[w].update(row)
            print(f"  nnUNet_n_proc_DA={w:<3} {row[f'{run.key}_wall_ms']:8.1f} ms/iteration "
                  f"(waiting for the loader {row[f'{run.key}_loader_wait_ms']:.1f} ms)"
                  + (f"; compute-only {row['compute_only_ms']:.1f} ms, augment_batch {row['augment_ms']:.1f} ms"
                     if "compute_only_ms" in row else ""), flush=True)
        del trainer
        free_device_memory(device)
    for row in rows.values():
        row.update(ratios(row))
        row["targets"] = {t.name: t.check(row) for t, at in TARGETS if at is None or row["workers"] in at}
    return {**facts, "by_workers": list(rows.values())}


def ratios(row: dict) -> dict:
    return {"gpu_aug_over_compute_only": _ratio(row["gpu_aug_wall_ms"], row["compute_only_ms"]),
            "gpu_aug_over_stock": _ratio(row["gpu_aug_wall_ms"], row["stock_wall_ms"]),
            "cpu_aug_over_stock": _ratio(row["cpu_aug_wall_ms"], row["stock_wall_ms"])}


# ------------------------------------------------------------------------------------------------ report
def format_table(results: dict) -> str:
    lines = [f"{'workers':>7} {'GPU-aug':>8} {'CPU-aug':>8} {'compute':>8} {'stock':>8} {'augment':>8} "
             f"{'GPU/comp':>9} {'GPU/stock':>10} {'CPU/stock':>10} {'aug share':>10}",
             f"{'':>7} {'wall ms':>8} {'wall ms':>8} {'only ms':>8} {'wall ms':>8} {'ms':>8} "
             f"{'<= 1.1':>9} {'<= 0.45':>10} {'':>10} {'< 0.15':>10}"]
    for r in results["by_workers"]:
        lines.append(f"{r['workers']:>7} {r['gpu_aug_wall_ms']:>8.1f} {r['cpu_aug_wall_ms']:>8.1f} "
                     f"{r['compute_only_ms']:>8.1f} {r['stock_wall_ms']:>8.1f} {r['augment_ms']:>8.1f} "
                     f"{_fmt(r['gpu_aug_over_compute_only'], '.2f'):>9} {_fmt(r['gpu_aug_over_stock'], '.2f'):>10} "
                     f"{_fmt(r['cpu_aug_over_stock'], '.2f'):>10} {_fmt(r['augment_share'], '.3f'):>10}")
    return "\n".join(lines)


def format_targets(results: dict) -> str:
    lines = ["targets (ratios from this run):"]
    for r in results["by_workers"]:
        for name, c in r["targets"].items():
            verdict = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
            lines.append(f"  {r['workers']:>3} workers  {name:<36} {_fmt(c['ratio'], '.3f'):>7} <= {c['limit']:<5} "
                         f"{verdict}")
    return "\n".join(lines)


def cpu_cores() -> int:
    """Cores this process may use (the GPU machine's container may show more in os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, help="nnUNet_raw/preprocessed/results under this folder (as "
                                             "make_btcv_sized_dataset.py --root); else the environment's")
    p.add_argument("-d", "--dataset", default="991", help="dataset id or name (make_btcv_sized_dataset.py's)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--workers", type=int, nargs="+", default=[4, 8, 12, 16], help="nnUNet_n_proc_DA values")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per run (half before, half after "
                                                          "draining the prefetched batches)")
    p.add_argument("--iters", type=int, default=200, help="timed iterations per run")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile as nnUNetv2_train does by default (sets nnUNet_compile; never on CPU)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder for the JSON")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or min(args.workers) < 0:
        p.error("--iters must be >= 1, --warmup and --workers >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (use --device cpu to check the script)")
    return args


def set_up_environment(args: argparse.Namespace, device: torch.device) -> None:
    """nnU-Net's folders, SACL's trainers folder in nnUNet_extTrainer, and torch set as nnUNetv2_train sets it."""
    use_root(args.root)
    os.environ["nnUNet_extTrainer"] = with_ext_trainer(os.environ)["nnUNet_extTrainer"]
    configure_torch_like_nnunet_train(device, args.compile)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    set_up_environment(args, device)
    results = {
        "kind": "data_path", "device": device_name(device), "cpu_cores": cpu_cores(), "torch": torch.__version__,
        "nnunetv2": version("nnunetv2"), "dataset": args.dataset, "configuration": args.configuration,
        "plans": args.plans, "workers": args.workers, "warmup": args.warmup, "iters": args.iters,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name] + sys.argv),
        "timing": "wall clock per iteration, mean over iters, device synchronised at start and end only; "
                  "loader runs start after warm-up with the prefetched batches drained",
    }
    print(f"{results['device']}, {results['cpu_cores']} CPU cores, torch {results['torch']}, nnunetv2 "
          f"{results['nnunetv2']}: dataset {args.dataset} {args.configuration}, workers {args.workers}, "
          f"{args.warmup} warm-up + {args.iters} timed iterations per run", flush=True)
    results.update(benchmark(args, device))
    print(f"\n{results['dataset_name']}: patch {results['patch_size']}, batch {results['batch_size']}, "
          f"{'torch.compile' if results['compile'] else 'eager'}; ms per iteration")
    print(format_table(results))
    print()
    print(format_targets(results))
    path = write_results(results, args.out, f"data_path_{slug(results['device'])}")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
