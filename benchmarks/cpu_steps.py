"""CPU wall-clock of the training steps side by side, and how the SACL and paper-style steps grow with organs.

``ratios``: stock ``nnUNetTrainer.train_step``, ``SACLPretrainer.train_step`` (SACL phase 1) and the paper-style step
(``SACLTrainer_PaperStyle``) on the BTCV-like plan at a CPU-sized patch (default 24x64x64, batch 2, the 13 BTCV
organs in every sample). The steps are interleaved (A B C A B C ...), so load from other processes falls on all of
them alike; median, min and max over the rounds (``"kind": "step"``).

``scaling``: the SACL and paper-style steps as the organs present go 2 -> 13 -> 50 -> 117 and the batch 2 -> 8:
CPU time at the CPU-sized patch (interleaved as above), the share of the SACL step spent in mask pooling, the
projection head and the loss (torch.profiler, forward and backward of each), and FLOPs and saved bytes counted by
accounting.py at the plan's full patch (``"kind": "scaling"``; ``flops`` is at ``full_patch_size``). The paper-style step is timed only where it fits in memory and time
(``--paper-style-max-rows`` encoder passes), and counted everywhere.

Trainers are built as ``nnUNetv2_train`` builds them (step_benchmark.build_trainer) on synthetic batches of the
plan's shape (step_benchmark.synthetic_batch); torch uses ``--threads`` threads (default 1: on a machine shared
with other work, one thread per process avoids OpenMP threads waiting on each other). Wall clock is the measure;
the process CPU time of each step is recorded too, and the machine's load average before and after.

    python benchmarks/cpu_steps.py ratios --rounds 9
    python benchmarks/cpu_steps.py scaling --rounds 7
"""
import argparse
import gc
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Dict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.nnunet.pretrainer import SACLPretrainer

import accounting
from step_benchmark import (LOSS_RANGE, add_plan_arguments, POOL_RANGE, REPO, SACLPretrainer_PaperStyle, STEP_RANGE,
                            _node_owners, _range_time_us, _ranged, _total_time_us, build_trainer, device_name,
                            load_json_file, nnunet_workspace, plans_for_benchmark, shown_path, synthetic_batch,
                            write_results)

HEAD_RANGE = "sacl.head"
CPU = torch.device("cpu")
STEPS = {   # key -> (trainer class, step method)
    "stock": (nnUNetTrainer, "train_step"),
    "sacl": (SACLPretrainer, "train_step"),
    "paper_style": (SACLPretrainer_PaperStyle, "train_step"),
}


def load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"load_1min": one, "load_5min": five, "load_15min": fifteen, "time": time.strftime("%H:%M:%S")}


def interleaved_ms(steps: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Dict[str, tuple]:
    """Each step once per round, in turn (A B C A B C ...); ``warmup`` untimed rounds first. Per step the wall
    milliseconds and the process CPU milliseconds of every timed round."""
    times = {k: ([], []) for k in steps}
    for r in range(warmup + rounds):
        for key, step in steps.items():
            start, cpu = time.perf_counter(), time.process_time()
            step()
            if r >= warmup:
                times[key][0].append((time.perf_counter() - start) * 1e3)
                times[key][1].append((time.process_time() - cpu) * 1e3)
        print(f"    round {r + 1}/{warmup + rounds} done ({load()['load_1min']:.1f} load)", flush=True)
    return times


def summary(wall_and_cpu: tuple) -> dict:
    ms, cpu = wall_and_cpu
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "all_ms": ms,
            "cpu_median_ms": statistics.median(cpu), "cpu_all_ms": cpu}


# ------------------------------------------------------------------------------------------------ profile
class _HeadRange(torch.nn.Module):
    """The projection head inside a record_function range, so its forward and backward can be told apart."""

    def __init__(self, head):
        super().__init__()
        self.inner = head

    def forward(self, x):
        with record_function(HEAD_RANGE):
            return self.inner(x)


def pool_head_loss_share(trainer, batch: dict, steps: int) -> dict:
    """CPU time of mask pooling, projection head and loss (each forward plus the backward ops autograd runs for
    it) against the CPU time of the whole SACL step (step_benchmark's profile method, with the head added)."""
    trainer.head = _HeadRange(trainer.head)          # same parameters; the optimizer holds the same tensors
    try:
        step = _ranged(trainer.train_step, STEP_RANGE)
        step(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step(batch)
        events = prof.events()
        owners = _node_owners(events)
        parts = {name: _range_time_us(events, name, False, owners) / steps / 1e3
                 for name in (POOL_RANGE, HEAD_RANGE, LOSS_RANGE)}
        total = _total_time_us(events, False) / steps / 1e3
    finally:
        trainer.head = trainer.head.inner
    return {"profiled_steps": steps, "step_cpu_ms": total, "mask_pool_ms": parts[POOL_RANGE],
            "head_ms": parts[HEAD_RANGE], "loss_ms": parts[LOSS_RANGE],
            "pool_head_loss_share": sum(parts.values()) / total if total else None}


# ------------------------------------------------------------------------------------------------ runs
def common(args, plans: dict) -> dict:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    config = PlansManager(plans).get_configuration(args.configuration)
    return {
        "device": "cpu", "machine": f"{os.cpu_count()}-core CPU", "cpu": device_name(CPU),
        "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "nnunetv2": version("nnunetv2"), "plans": shown_path(args.plans),
        "configuration": args.configuration, "patch_size": list(config.patch_size), "rounds": args.rounds,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name] + sys.argv),
        "timing": "wall clock per step, steps interleaved round by round, one untimed round first",
    }


def run_ratios(args) -> dict:
    plans = plans_for_benchmark(load_json_file(args.plans, "plans file"), args.plans, args.configuration,
                                args.patch_size, args.batch_size)
    dataset_json = load_json_file(args.dataset_json, "dataset.json")
    results = {"kind": "step", **common(args, plans), "batch_size": args.batch_size,
               "organs": len(dataset_json["labels"]) - 1, "load_before": load()}
    with nnunet_workspace(plans, args.configuration):
        trainers = {k: build_trainer(cls, plans, args.configuration, dataset_json, CPU) for k, (cls, _) in
                    STEPS.items()}
        batches = {k: synthetic_batch(t) for k, t in trainers.items()}
        steps = {k: (lambda k=k: getattr(trainers[k], STEPS[k][1])(batches[k])) for k in trainers}
        print(f"interleaving {list(steps)} for {args.rounds} rounds", flush=True)
        times = interleaved_ms(steps, args.rounds)
    results["load_after"] = load()
    results["rows"] = [{"step": k, **summary(v)} for k, v in times.items()]
    med = {r["step"]: r["median_ms"] for r in results["rows"]}
    results["ratios"] = {"sacl/stock": med["sacl"] / med["stock"], "paper_style/sacl": med["paper_style"] / med["sacl"]}
    results["targets"] = {
        "sacl/stock": {"ratio": results["ratios"]["sacl/stock"], "limit": 0.45, "at_most": True,
                       "met": results["ratios"]["sacl/stock"] <= 0.45},
        "paper_style/sacl": {"ratio": results["ratios"]["paper_style/sacl"], "limit": 9.0, "at_most": False,
                             "met": results["ratios"]["paper_style/sacl"] >= 9.0},
    }
    for r in results["rows"]:
        print(f"  {r['step']:<12} median {r['median_ms']:8.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f})")
    print(f"  SACL/stock {results['ratios']['sacl/stock']:.3f} (<= 0.45), paper-style/SACL "
          f"{results['ratios']['paper_style/sacl']:.2f} (>= 9)")
    return results


def run_scaling(args) -> dict:
    base_plans = load_json_file(args.plans, "plans file")
    base_json = load_json_file(args.dataset_json, "dataset.json")
    full_plans = plans_for_benchmark(base_plans, args.plans, args.configuration, None, None)
    results = {"kind": "scaling", **common(args, plans_for_benchmark(base_plans, args.plans, args.configuration,
                                                                    args.patch_size, None)),
               "full_patch_size": full_plans["configurations"][args.configuration]["patch_size"],
               "load_before": load(), "rows": []}
    for batch_size in args.batch_sizes:
        plans = plans_for_benchmark(base_plans, args.plans, args.configuration, args.patch_size, batch_size)
        full = plans_for_benchmark(base_plans, args.plans, args.configuration, None, batch_size)
        for organs in args.organs:
            dataset_json = accounting.dataset_json_with_organs(base_json, organs)
            time_paper = organs * batch_size <= args.paper_style_max_rows
            keys = ["sacl", "paper_style"] if time_paper else ["sacl"]
            with nnunet_workspace(plans, args.configuration):
                trainers = {k: build_trainer(STEPS[k][0], plans, args.configuration, dataset_json, CPU) for k in keys}
                batches = {k: synthetic_batch(t) for k, t in trainers.items()}
                steps = {k: (lambda k=k: trainers[k].train_step(batches[k])) for k in keys}
                times = interleaved_ms(steps, args.rounds)
                share = pool_head_loss_share(trainers["sacl"], batches["sacl"], args.profile_steps)
                del trainers, batches, steps
                gc.collect()
            with nnunet_workspace(full, args.configuration):
                counted_full = {k: accounting.count_step(accounting.CountedStep(k, STEPS[k][0], "train_step", k),
                                                         full, args.configuration, dataset_json, organs, peak=False)
                                for k in ("sacl", "paper_style")}
            for k in ("sacl", "paper_style"):
                row = {"step": k, "organs": organs, "batch_size": batch_size, "patch_size": list(args.patch_size),
                       "full_patch_size": counted_full[k]["patch_size"], "flops": counted_full[k]["flops"],
                       "saved_bytes_full_patch": counted_full[k]["saved_bytes"],
                       "flops_besides_encoder": counted_full[k]["flops_besides_encoder"],
                       "cpu_ms": None, "min_ms": None, "max_ms": None, "pool_head_loss_share": None}
                if k in times:
                    s = summary(times[k])
                    row.update(cpu_ms=s["median_ms"], min_ms=s["min_ms"], max_ms=s["max_ms"], all_ms=s["all_ms"],
                               process_cpu_median_ms=s["cpu_median_ms"])
                else:
                    row["cpu_ms_skipped"] = (f"{organs * batch_size} encoder passes per step > "
                                             f"--paper-style-max-rows {args.paper_style_max_rows}")
                if k == "sacl":
                    row.update(share)
                results["rows"].append(row)
                cpu = "n/a" if row["cpu_ms"] is None else f"{row['cpu_ms']:.1f} ms"
                print(f"  {k:<12} organs {organs:>3} batch {batch_size}: cpu {cpu:>10}, "
                      f"{row['flops'] / 1e12:7.2f} TFLOP at {row['full_patch_size']}"
                      + (f", pool+head+loss {100 * row['pool_head_loss_share']:.2f}%" if k == "sacl" else ""),
                      flush=True)
    results["load_after"] = load()
    at_117 = [r for r in results["rows"] if r["step"] == "sacl" and r["organs"] == max(args.organs)]
    worst = max((r["pool_head_loss_share"] for r in at_117), default=None)
    results["targets"] = {f"pool+head+loss / SACL CPU step at {max(args.organs)} organs": {
        "ratio": worst, "limit": 0.05, "at_most": True, "met": None if worst is None else worst < 0.05}}
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=("ratios", "scaling"))
    add_plan_arguments(p)
    p.add_argument("--patch-size", type=int, nargs="+", default=[24, 64, 64])
    p.add_argument("--batch-size", type=int, default=2, help="ratios: the batch size")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8], help="scaling: batch sizes")
    p.add_argument("--organs", type=int, nargs="+", default=[2, 13, 50, 117], help="scaling: organs present")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (median, min, max)")
    p.add_argument("--profile-steps", type=int, default=3, help="scaling: profiled SACL steps")
    p.add_argument("--paper-style-max-rows", type=int, default=100,
                   help="scaling: time the paper-style step only up to this many encoder passes per step")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["nnUNet_compile"] = "false"
    results = run_ratios(args) if args.what == "ratios" else run_scaling(args)
    print(f"written: {write_results(results, args.out, results['kind'] + '_cpu')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
