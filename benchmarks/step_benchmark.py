"""Step benchmark: stock ``nnUNetTrainer.train_step`` against ``SACLPretrainer.train_step`` (SACL phase 1) and the
paper-style pretraining step (``SACLTrainer_PaperStyle``), on a network built from a real nnU-Net plans file.

The three trainers run one after another in one process, on synthetic batches shaped like nnU-Net's, so the
numbers measure the steps and nothing else (the data path is measured by data_path_benchmark.py and data_path_cpu.py).
On CUDA: CUDA events, medians after warm-up, steady-state peak memory, cudnn.benchmark and torch.compile set as
``nnUNetv2_train`` sets them. On CPU (to check the script without a GPU): wall-clock times, no peak memory.

    python benchmarks/step_benchmark.py --device cuda --out benchmarks/results
    python benchmarks/step_benchmark.py --device cpu --patch-size 16 32 32 --iters 3 --warmup 1 --out /tmp/bench

See benchmarks/README.md for the commands on a GPU machine.
"""
import argparse
import gc
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from io import StringIO
from math import ceil, sqrt
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_sacl.method.augment import downsample_for_deep_supervision
from nnunet_sacl.nnunet.pretrainer import SACLPretrainer

REPO = Path(__file__).resolve().parents[1]


class SACLPretrainer_PaperStyle(SACLPretrainer):
    """SACLTrainer_PaperStyle's phase 1 (its train_step is SACLPretrainer's with the paper-style embedding)."""
    embedding = "paper_style"


class SACLPretrainer_DCC(SACLPretrainer):
    """SACLTrainer_DCC's phase 1 (SACLPretrainer's train_step with intensity-weighted negatives)."""
    intensity_weighted_negatives = True
DEFAULT_PLANS = REPO / "plans" / "btcv_like_nnUNetPlans.json"
DEFAULT_DATASET_JSON = REPO / "plans" / "btcv_like_dataset.json"
GIB = 1024 ** 3

# record_function ranges of the profiled SACL step
STEP_RANGE, ENCODER_RANGE, POOL_RANGE, LOSS_RANGE = "sacl.step", "sacl.encoder", "sacl.mask_pool", "sacl.loss"


@dataclass(frozen=True)
class StepUnderTest:
    """One row of the table: which trainer, which of its methods is the step, and the JSON key prefix."""
    label: str
    trainer_class: type
    step_method: str
    key: str


STEPS = (
    StepUnderTest("stock nnUNetTrainer.train_step", nnUNetTrainer, "train_step", "stock"),
    StepUnderTest("SACLPretrainer.train_step (SACL phase 1)", SACLPretrainer, "train_step", "sacl"),
    StepUnderTest("SACLTrainer_PaperStyle phase 1 train_step", SACLPretrainer_PaperStyle, "train_step",
                  "paper_style"),
)


@dataclass
class StepResult:
    times_ms: List[float]
    peak_gib: Optional[float]
    compiled: bool

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


@dataclass(frozen=True)
class Target:
    """A target, as a ratio computed from the results of the same run."""
    name: str
    limit: float
    at_most: bool                       # True: ratio <= limit; False: ratio >= limit
    ratio: Callable[[dict], Optional[float]] = field(compare=False)

    def check(self, results: dict) -> dict:
        ratio = self.ratio(results)
        met = None if ratio is None else (ratio <= self.limit if self.at_most else ratio >= self.limit)
        return {"ratio": ratio, "limit": self.limit, "at_most": self.at_most, "met": met}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


TARGETS = (
    Target("SACL time / stock", 0.5, True, lambda r: _ratio(r["sacl_ms"], r["stock_ms"])),
    Target("SACL peak memory / stock", 0.45, True, lambda r: _ratio(r["sacl_peak_gib"], r["stock_peak_gib"])),
    Target("paper-style time / SACL", 9.0, False, lambda r: _ratio(r["paper_style_ms"], r["sacl_ms"])),
    Target("(mask_pool + loss) / SACL step", 0.05, True,
           lambda r: (r.get("sacl_profile") or {}).get("pool_and_loss_share")),
)


# ------------------------------------------------------------------------------------------------ plans & set-up
def load_json_file(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SystemExit(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{what} {path} is not valid JSON: {e}")


def plans_for_benchmark(plans: dict, plans_file: Path, configuration: str, patch_size: Optional[List[int]],
                        batch_size: Optional[int]) -> dict:
    """The plans with the --patch-size / --batch-size overrides written into the configuration, so that nnU-Net
    builds the trainer (batch size, deep-supervision scales) exactly as it would from such a plans file."""
    if configuration not in plans.get("configurations", {}):
        raise SystemExit(f"{plans_file} has no configuration {configuration!r}; it has "
                         f"{sorted(plans.get('configurations', {}))}")
    plans = deepcopy(plans)
    config = plans["configurations"][configuration]
    if patch_size is not None:
        config["patch_size"] = list(patch_size)
    if batch_size is not None:
        config["batch_size"] = batch_size
    check_patch_size(PlansManager(plans).get_configuration(configuration), plans_file, configuration)
    return plans


def check_patch_size(configuration_manager, plans_file: Path, configuration: str) -> None:
    """The U-Net's skip connections only line up when every axis divides by the product of the strides."""
    patch = list(configuration_manager.patch_size)
    strides = np.prod(np.array(configuration_manager.pool_op_kernel_sizes), axis=0).astype(int).tolist()
    if len(patch) != len(strides) or any(p % s for p, s in zip(patch, strides)):
        raise SystemExit(f"patch size {patch} ({plans_file}, {configuration}) must have {len(strides)} axes, each "
                         f"divisible by the network's total stride {strides}")


@contextmanager
def nnunet_workspace(plans: dict, configuration: str):
    """A throw-away nnUNet_preprocessed / nnUNet_results for trainers built by hand.

    nnU-Net's trainer writes its log under nnUNet_results when it is built, and ``initialize()`` ends with
    ``infer_dataset_class(preprocessed folder)``, which looks at the file endings in
    ``nnUNet_preprocessed/<dataset>/<data_identifier>``. The benchmark feeds synthetic batches and never reads that
    folder, so the least intrusive way through is nnU-Net's own layout in a temporary directory: the folder it
    expects, holding one empty ``.b2nd`` marker (the Blosc2 format nnU-Net 2.8 preprocesses to). nnunetv2.paths
    reads these variables when used, not at import, so setting them here is enough; nothing of nnU-Net is patched
    and the user's own nnU-Net folders are never touched.
    """
    manager = PlansManager(plans)
    data_identifier = manager.get_configuration(configuration).data_identifier
    saved = {k: os.environ.get(k) for k in ("nnUNet_preprocessed", "nnUNet_results")}
    with tempfile.TemporaryDirectory(prefix="sacl_step_benchmark_") as root:
        preprocessed = Path(root, "preprocessed", manager.dataset_name, data_identifier)
        preprocessed.mkdir(parents=True)
        (preprocessed / "benchmark_placeholder.b2nd").touch()
        os.environ["nnUNet_preprocessed"] = str(Path(root, "preprocessed"))
        os.environ["nnUNet_results"] = str(Path(root, "results"))
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def configure_torch_like_nnunet_train(device: torch.device, compile_network: bool) -> None:
    """What ``nnUNetv2_train`` sets before training (run/run_training.py), so the steps run as they do there."""
    os.environ["nnUNet_compile"] = "true" if compile_network else "false"   # read by nnUNetTrainer._do_i_compile
    if device.type == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(os.cpu_count())


def build_trainer(trainer_class: type, plans: dict, configuration: str, dataset_json: dict,
                  device: torch.device):
    """An initialized trainer built the way nnU-Net's get_trainer_from_args builds it (fold 0), its console
    chatter (citation banner, device line) kept out of the table; it still goes to the log file."""
    plans = deepcopy(plans)
    plans["continue_training"] = False          # popped by the constructor since nnU-Net 2.7
    with redirect_stdout(StringIO()):
        trainer = trainer_class(plans, configuration, 0, deepcopy(dataset_json), device)
        trainer.initialize()
    return trainer


# ------------------------------------------------------------------------------------------------ synthetic batch
def organ_block_labels(batch_size: int, patch_size, num_labels: int, generator: torch.Generator) -> torch.Tensor:
    """int16 labels [B, 1, *patch]: the in-plane field cut into a g x g grid of full-depth blocks, each sample
    with its own random assignment of labels 0..num_labels-1 to blocks (left-over blocks background), so every
    organ appears in every patch and is large enough to reach the bottleneck."""
    grid = ceil(sqrt(num_labels))
    *depth, height, width = patch_size
    rows = torch.arange(height) * grid // height
    cols = torch.arange(width) * grid // width
    block_of_voxel = rows[:, None] * grid + cols[None, :]                       # [H, W]
    samples = []
    for _ in range(batch_size):
        labels_of_blocks = torch.zeros(grid * grid, dtype=torch.int16)
        labels_of_blocks[torch.randperm(grid * grid, generator=generator)[:num_labels]] = \
            torch.arange(num_labels, dtype=torch.int16)
        plane = labels_of_blocks[block_of_voxel]
        samples.append(plane.expand(*depth, height, width))
    return torch.stack(samples)[:, None].contiguous()


def synthetic_batch(trainer, seed: int = 0) -> dict:
    """A batch like nnU-Net's dataloader gives: {'data': float32 [B, C, *patch], 'target': [int16 [B, 1, *]]},
    already on the trainer's device so the timing holds the step only."""
    generator = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    b = trainer.batch_size
    data = torch.randn(b, trainer.num_input_channels, *patch, generator=generator)
    seg = organ_block_labels(b, patch, len(trainer.label_manager.all_labels), generator)
    scales = trainer._get_deep_supervision_scales()
    targets = [seg] if scales is None else downsample_for_deep_supervision(seg, scales)
    return {"data": data.to(trainer.device), "target": [t.to(trainer.device) for t in targets]}


# ------------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[dict], dict], batch: dict, device: torch.device, iters: int) -> List[float]:
    """Milliseconds of each of ``iters`` steps: CUDA events on a GPU, wall clock on the CPU."""
    synchronize(device)
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            step(batch)
            times.append((time.perf_counter() - start) * 1e3)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        step(batch)
        end.record()
    synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()        # each trainer compiles afresh, as in its own nnUNetv2_train process
    if device.type == "cuda":
        torch.cuda.empty_cache()


def benchmark_step(what: StepUnderTest, plans: dict, configuration: str, dataset_json: dict,
                   device: torch.device, warmup: int, iters: int, profile_steps: int) -> tuple:
    """Builds the trainer, warms the step up (cudnn autotuning, compilation), times it, reads the steady-state
    peak memory (reset after warm-up) and, for the SACL step, profiles it. Returns (StepResult, profile|None)."""
    trainer = build_trainer(what.trainer_class, plans, configuration, dataset_json, device)
    compiled = bool(trainer._do_i_compile())
    print(f"  {what.label}: batch {trainer.batch_size}, patch {list(trainer.configuration_manager.patch_size)}, "
          f"{'torch.compile' if compiled else 'eager'}; {warmup} warm-up + {iters} timed steps", flush=True)
    batch = synthetic_batch(trainer)
    step = getattr(trainer, what.step_method)
    for _ in range(warmup):
        step(batch)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(step, batch, device, iters)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    summary = profile_sacl_step(trainer, batch, profile_steps) if what.key == "sacl" and profile_steps > 0 else None
    del trainer, batch, step
    free_device_memory(device)
    return StepResult(times, peak, compiled), summary


# ------------------------------------------------------------------------------------------------ profile
def _ranged(fn: Callable, name: str) -> Callable:
    def call(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    return call


BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


def _ancestors(event):
    while event.cpu_parent is not None:
        event = event.cpu_parent
        yield event


def _node_owners(events) -> dict:
    """(sequence number, thread) -> the forward op that created that autograd node. Ops that create no node
    still carry the counter's next value, so the owner is the last op to start with that number (composite ops
    and the op they call share it; both sit in the same ranges)."""
    owners = {}
    forward = [e for e in events if e.device_type == DeviceType.CPU and e.sequence_nr >= 0
               and not any(a.name.startswith(BACKWARD_PREFIX) for a in _ancestors(e))
               and not e.name.startswith(BACKWARD_PREFIX)]
    for e in sorted(forward, key=lambda e: e.time_range.start):
        owners[(e.sequence_nr, e.thread)] = e
    return owners


def _range_time_us(events, name: str, on_gpu: bool, owners: dict) -> float:
    """A forward range plus the backward nodes of the ops inside it (matched through autograd's sequence number
    and forward thread), as GPU kernel time on CUDA or CPU time on the CPU."""
    ranges = [e for e in events if e.name == name and e.device_type == DeviceType.CPU]
    backward = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith(BACKWARD_PREFIX)
                and (e.sequence_nr, e.fwd_thread) in owners
                and any(a.name == name for a in _ancestors(owners[(e.sequence_nr, e.fwd_thread)]))]
    return sum(e.device_time_total if on_gpu else e.cpu_time_total for e in ranges + backward)


def _total_time_us(events, on_gpu: bool) -> float:
    """All the work of the profiled steps: the sum of kernel times on CUDA (as the profiler's own table), the
    sum of self CPU times on the CPU."""
    if on_gpu:
        return sum(e.self_device_time_total for e in events
                   if e.device_type != DeviceType.CPU and not e.is_user_annotation)
    return sum(e.self_cpu_time_total for e in events)


def profile_sacl_step(trainer, batch: dict, steps: int) -> dict:
    """Shares of the SACL step spent in mask pooling and in the contrastive loss (forward and backward)."""
    on_gpu = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    # the SACL step inside a 'sacl.step' range; the trainer itself marks 'sacl.encoder', 'sacl.mask_pool', 'sacl.loss'
    step = _ranged(trainer.train_step, STEP_RANGE)
    step(batch)                                      # one unprofiled call through the wrapper
    synchronize(trainer.device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(batch)
        synchronize(trainer.device)
    events = prof.events()
    total = _total_time_us(events, on_gpu)
    owners = _node_owners(events)
    per_step = {name: _range_time_us(events, name, on_gpu, owners) / steps / 1e3
                for name in (ENCODER_RANGE, POOL_RANGE, LOSS_RANGE)}
    total_ms = total / steps / 1e3
    sort_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    return {
        "steps": steps,
        "clock": "GPU kernel time" if on_gpu else "CPU time",
        "step_ms": total_ms,
        "encoder_ms": per_step[ENCODER_RANGE],
        "mask_pool_ms": per_step[POOL_RANGE],
        "loss_ms": per_step[LOSS_RANGE],
        "pool_and_loss_share": (per_step[POOL_RANGE] + per_step[LOSS_RANGE]) / total_ms if total_ms else None,
        "top_ops": prof.key_averages().table(sort_by=sort_key, row_limit=8, max_name_column_width=50),
    }


# ------------------------------------------------------------------------------------------------ report
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def shown_path(path: Path) -> str:
    """Repository files as repo-relative paths, so results from different machines compare."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def format_table(results: dict) -> str:
    stock_ms, stock_peak = results["stock_ms"], results["stock_peak_gib"]
    lines = [f"{'step':<40} {'median ms':>10} {'peak GiB':>9} {'time/stock':>11} {'mem/stock':>10}"]
    for what in STEPS:
        ms, peak = results[f"{what.key}_ms"], results[f"{what.key}_peak_gib"]
        lines.append(f"{what.label:<40} {ms:>10.1f} {_fmt(peak, '.2f'):>9} {_fmt(_ratio(ms, stock_ms), '.2f'):>11} "
                     f"{_fmt(_ratio(peak, stock_peak), '.2f'):>10}")
    return "\n".join(lines)


def format_targets(checks: dict, title: str = "targets (ratios from this run):") -> str:
    lines = [title]
    for name, c in checks.items():
        verdict = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
        lines.append(f"  {name:<34} {_fmt(c['ratio'], '.3f'):>8}  {'<=' if c['at_most'] else '>='} "
                     f"{c['limit']:<5}  {verdict}")
    return "\n".join(lines)


def format_profile(p: Optional[dict]) -> str:
    if not p:
        return "profile: skipped (--profile-steps 0)"
    return (f"profile of the SACL step ({p['steps']} steps, {p['clock']}, forward + backward of each part):\n"
            f"  step {p['step_ms']:.2f} ms, encoder {p['encoder_ms']:.2f} ms, mask_pool {p['mask_pool_ms']:.3f} ms, "
            f"loss {p['loss_ms']:.3f} ms -> mask_pool + loss = {100 * p['pool_and_loss_share']:.2f}% of the step\n"
            f"{p['top_ops']}")


def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_results(results: dict, out: Path, stem: str, stamped: bool = True) -> Path:
    """results as JSON in out/<stem>[_<compile|eager>][_<UTC time>].json: one file per run when stamped; the mode
    when the results say whether the network was compiled."""
    out.mkdir(parents=True, exist_ok=True)
    if "compile" in results:
        stem += "_compile" if results["compile"] else "_eager"
    if stamped:
        stem += "_" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{stem}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ main
def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The plans, dataset.json and configuration options every benchmark script takes."""
    p.add_argument("--plans", type=Path, default=DEFAULT_PLANS, help="nnU-Net plans file")
    p.add_argument("--dataset-json", type=Path, default=DEFAULT_DATASET_JSON,
                   help="the dataset.json matching the plans (labels, channels)")
    p.add_argument("-c", "--configuration", default="3d_fullres")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_plan_arguments(p)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (cudnn autotuning, compilation)")
    p.add_argument("--iters", type=int, default=30, help="timed steps; the median is reported")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile as nnUNetv2_train does by default (sets nnUNet_compile; never on CPU)")
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N", help="override the plan's patch size")
    p.add_argument("--batch-size", type=int, help="override the plan's batch size")
    p.add_argument("--profile-steps", type=int, default=5, help="profiled SACL steps (0: no profile)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder for the JSON")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.profile_steps < 0:
        p.error("--iters must be >= 1, --warmup and --profile-steps >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (use --device cpu to check the script)")
    return args


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    plans = plans_for_benchmark(load_json_file(args.plans, "plans file"), args.plans, args.configuration,
                                args.patch_size, args.batch_size)
    dataset_json = load_json_file(args.dataset_json, "dataset.json")
    configure_torch_like_nnunet_train(device, args.compile)
    configuration_manager = PlansManager(plans).get_configuration(args.configuration)
    results = {
        "device": device_name(device), "torch": torch.__version__, "nnunetv2": version("nnunetv2"),
        "cpu_cores": os.cpu_count(), "plans": shown_path(args.plans), "configuration": args.configuration,
        "patch_size": list(configuration_manager.patch_size), "batch_size": configuration_manager.batch_size,
        "warmup": args.warmup, "iters": args.iters, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name] + sys.argv),
        "timing": "CUDA events, median" if device.type == "cuda" else "wall clock, median",
        "peak_memory": "torch.cuda.max_memory_allocated over the timed steps (reset after warm-up)"
                       if device.type == "cuda" else "not measured on the CPU",
    }
    print(f"{results['device']}, torch {results['torch']}, nnunetv2 {results['nnunetv2']}: {args.plans.name} "
          f"{args.configuration}, patch {results['patch_size']}, batch {results['batch_size']}", flush=True)
    with nnunet_workspace(plans, args.configuration):
        for what in STEPS:
            result, summary = benchmark_step(what, plans, args.configuration, dataset_json, device,
                                             args.warmup, args.iters, args.profile_steps)
            results.update({f"{what.key}_ms": result.median_ms, f"{what.key}_peak_gib": result.peak_gib,
                            f"{what.key}_all_ms": result.times_ms})
            results["compile"] = result.compiled
            if summary is not None:
                results["sacl_profile"] = summary
    results["targets"] = {t.name: t.check(results) for t in TARGETS}
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    print()
    print(format_table(results))
    print()
    print(format_targets(results["targets"]))
    print()
    print(format_profile(results.get("sacl_profile")))
    path = write_results(results, args.out, f"step_{slug(results['device'])}_{results['configuration']}")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
