"""Accounting benchmark: FLOPs and memory of one training step at full scale, counted without doing the arithmetic.

Each trainer is built and initialized as ``nnUNetv2_train`` builds it (fold 0, on the CPU), then its modules'
parameters and buffers are swapped for fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``) and its
optimizer is rebuilt on them. Its own step method then runs on a fake image and real labels (``label_values.py``
keeps real values for everything computed from the labels, so mask pooling finds the organs as it would), inside
fp16 autocast, while torch's tools count:

- ``flops``: ``torch.utils.flop_counter.FlopCounterMode`` over the whole step, forward and backward (convolutions,
  matmuls, linear layers; element-wise ops count 0, as in the tool);
- ``saved_bytes``: unique storages packed by ``torch.autograd.graph.saved_tensors_hooks`` in the forward pass,
  in the dtype autocast gives them (parameters themselves left out; their fp16 copies counted): the activations
  held for backward;
- ``param_grad_optimizer_bytes``: the parameters the step's optimizer updates, their gradients and the
  optimizer's state after the step (SGD momentum);
- ``peak_bytes``: ``torch.distributed._tools.mem_tracker.MemTracker``'s peak over the step (parameters, gradients,
  optimizer state, activations and temporaries of the whole process's tracked tensors), an estimate.

No GPU is needed: fake tensors live on the CPU, and autocast is CPU autocast in float16, whose casting list
agrees with CUDA's for convolutions, linear layers and matmuls; ops that CUDA autocast runs in float32 when their
input is float16 (softmax, log_softmax, sum, ...) are given float32 here too (``CudaLikeAutocast``). The same
script runs unchanged on a machine with a GPU (it counts; it does not time). Not counted: nnU-Net's GradScaler
(element-wise loss scaling; the trainers are counted with ``grad_scaler = None``), the host copy of the loss that
ends nnU-Net's ``train_step`` (``.cpu().numpy()``), and SACL's on-device augmentation (the counted SACL steps get
a batch that is already augmented, as the stock step does).

    python benchmarks/accounting.py                              # BTCV-like 3d_fullres
    python benchmarks/accounting.py -c 2d
    python benchmarks/accounting.py --plans plans/btcv_like_nnUNetResEncUNetMPlans.json

One JSON per plans file and configuration in benchmarks/results/ (``"kind": "accounting"``); see
benchmarks/README.md and docs/performance.md.
"""
import argparse
import contextlib
import os
import shlex
import sys
import traceback
from contextlib import redirect_stdout
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from io import StringIO
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_sacl.method.augment import downsample_for_deep_supervision
from nnunet_sacl.nnunet import variants
from nnunet_sacl.nnunet.network import encoder_of

from label_values import AssumeFinite, LabelValues
from step_benchmark import (REPO, SACLPretrainer_DCC, SACLPretrainer_PaperStyle, add_plan_arguments, format_targets,
                            load_json_file, nnunet_workspace, organ_block_labels, plans_for_benchmark, shown_path,
                            write_results)

CPU = torch.device("cpu")


@dataclass(frozen=True)
class CountedStep:
    """A row of the table: JSON key, trainer class (None: not importable here) and its step method."""
    key: str
    trainer_class: Optional[type]
    step_method: str
    what: str


def counted_steps() -> List[CountedStep]:
    joint = getattr(variants, "SACLTrainer_joint", None)
    return [
        CountedStep("stock", nnUNetTrainer, "train_step", "nnUNetTrainer.train_step (whole U-Net, deep supervision)"),
        CountedStep("sacl", variants.SACLPretrainer, "train_step", "SACLPretrainer.train_step (SACL phase 1)"),
        CountedStep("paper_style", SACLPretrainer_PaperStyle, "train_step",
                    "SACLTrainer_PaperStyle phase 1 (one encoder pass per organ)"),
        CountedStep("dcc", SACLPretrainer_DCC, "train_step",
                    "SACLTrainer_DCC phase 1 (intensity-weighted negatives)"),
        CountedStep("joint", joint, "train_step",
                    "SACLTrainer_joint.train_step (segmentation loss + SupCon in one pass)"),
    ]


# ------------------------------------------------------------------------------------------------ autocast
# CUDA autocast runs these in float32 when given float16 without a dtype ("fp32_set_opt_dtype" in torch's
# autocast_mode.cpp); CPU autocast leaves them in float16. Given float32 here, as on a GPU.
_FP32_WHEN_FP16 = {
    torch.softmax, torch.log_softmax, torch.sum, torch.prod, torch.cumsum, torch.cumprod,
    nn.functional.softmax, nn.functional.log_softmax,
    torch.Tensor.softmax, torch.Tensor.log_softmax, torch.Tensor.sum, torch.Tensor.prod, torch.Tensor.cumsum,
    torch.Tensor.cumprod,
}


class CudaLikeAutocast(TorchFunctionMode):
    """While CPU autocast is on: softmax, log_softmax, sum, prod, cumsum, cumprod of a float16 tensor without an
    explicit dtype run in float32, as CUDA autocast runs them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if (func in _FP32_WHEN_FP16 and torch.is_autocast_enabled("cpu") and args
                and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float16
                and kwargs.get("dtype") is None):
            kwargs["dtype"] = torch.float32
        return func(*args, **kwargs)


@contextlib.contextmanager
def fp16_autocast():
    with torch.autocast("cpu", dtype=torch.float16), CudaLikeAutocast():
        yield


# ------------------------------------------------------------------------------------------------ fake trainer
def dataset_json_with_organs(base: dict, organs: int) -> dict:
    """``base`` with ``organs`` foreground labels (its own names when it has that many, else organ_001, ...)."""
    if len(base["labels"]) - 1 == organs:
        return deepcopy(base)
    out = deepcopy(base)
    out["labels"] = {"background": 0, **{f"organ_{i:03d}": i for i in range(1, organs + 1)}}
    return out


def _fake_module(module: nn.Module, labels: LabelValues) -> None:
    """Parameters of ``module`` (and its children) replaced by fake tensors of the same shape; buffers (constants
    such as DCC's intensity range, counters) by fake tensors that keep their real values."""
    fake_mode = labels.fake_mode
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and not isinstance(p, FakeTensor):
                m._parameters[name] = nn.Parameter(fake_mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and not isinstance(b, FakeTensor):
                m._buffers[name] = labels.track(b, b.device)


def fake_trainer(trainer_class: type, plans: dict, configuration: str, dataset_json: dict, labels: LabelValues):
    """The trainer as nnU-Net's get_trainer_from_args builds it (fold 0, CPU) and ``initialize()``s it, with every
    module it holds (network, projection head, losses) made fake and the optimizer rebuilt on the fake parameters."""
    plans = deepcopy(plans)
    plans["continue_training"] = False          # popped by the constructor since nnU-Net 2.7
    with redirect_stdout(StringIO()):
        trainer = trainer_class(plans, configuration, 0, deepcopy(dataset_json), CPU)
        trainer.initialize()
    for value in list(vars(trainer).values()):
        if isinstance(value, nn.Module):
            _fake_module(value, labels)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.grad_scaler = None
    return trainer


def trainer_modules(trainer) -> List[nn.Module]:
    return [v for v in vars(trainer).values() if isinstance(v, nn.Module)]


# ------------------------------------------------------------------------------------------------ batch
def real_targets(trainer, batch_size: int, organs: int, seed: int = 0) -> List[torch.Tensor]:
    """Labels as the dataloader gives them (int16 [B, 1, *patch], one per deep-supervision scale): full-depth
    blocks so that all ``organs`` appear in every sample (step_benchmark.organ_block_labels)."""
    generator = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    seg = organ_block_labels(batch_size, patch, organs + 1, generator)
    scales = trainer._get_deep_supervision_scales()
    return [seg] if scales is None else downsample_for_deep_supervision(seg, scales)


# ------------------------------------------------------------------------------------------------ counting
@dataclass
class SavedTensors:
    """Unique storages packed for backward, parameters' own storages left out."""
    excluded: set
    storages: Dict[int, int] = field(default_factory=dict)
    by_dtype: Dict[str, int] = field(default_factory=dict)

    def pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.excluded and key not in self.storages:
            self.storages[key] = storage.nbytes()
            name = str(t.dtype).replace("torch.", "")
            self.by_dtype[name] = self.by_dtype.get(name, 0) + storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def _tensor_bytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def optimizer_bytes(optimizer) -> int:
    """Parameters the optimizer updates + their gradients + its state tensors (bytes)."""
    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            total += _tensor_bytes(p) + _tensor_bytes(p.grad)
            total += sum(_tensor_bytes(v) for v in optimizer.state.get(p, {}).values())
    return total


def run_step_to_its_end(step: Callable[[dict], dict], batch: dict) -> None:
    """The step; nnU-Net's ``train_step`` ends with ``loss.detach().cpu().numpy()``, which a fake tensor cannot
    answer: that last host copy (after the optimizer step) is the only thing left out."""
    try:
        step(batch)
    except RuntimeError as e:
        frames = traceback.extract_tb(e.__traceback__)
        if ".numpy() is not supported for tensor subclasses" in str(e) and any(
                f.name == "train_step" and ".numpy()" in (f.line or "") for f in frames):
            return
        raise


def encoder_flops(trainer, data: torch.Tensor, fake_mode: FakeTensorMode) -> int:
    """Forward + backward FLOPs of the encoder alone on the step's image, backpropagated from the bottleneck
    (the image needs no gradient, as in every step): the part of any step that the encoder does."""
    counter = FlopCounterMode(display=False)
    with fake_mode, counter, fp16_autocast():
        features = encoder_of(trainer.network)(data)
        features[-1].float().sum().backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def count_step(step: CountedStep, plans: dict, configuration: str, dataset_json: dict, organs: int,
               peak: bool = True) -> dict:
    """One row: the step's counts on a batch with ``organs`` organs present in every sample."""
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    labels = LabelValues(fake_mode)
    trainer = fake_trainer(step.trainer_class, plans, configuration, dataset_json, labels)
    batch_size, patch = trainer.batch_size, list(trainer.configuration_manager.patch_size)
    targets = [labels.track(t, CPU) for t in real_targets(trainer, batch_size, organs)]
    with fake_mode:
        data = torch.empty(batch_size, trainer.num_input_channels, *patch, dtype=torch.float32)
    batch = {"data": data, "target": targets, "keys": [f"case_{i}" for i in range(batch_size)]}
    parameters = [p for m in trainer_modules(trainer) for p in m.parameters()]
    saved = SavedTensors(excluded={p.untyped_storage()._cdata for p in parameters})
    counter = FlopCounterMode(display=False)
    method = getattr(trainer, step.step_method)
    tracker = None
    if peak:
        from torch.distributed._tools.mem_tracker import MemTracker
        tracker = MemTracker()
        tracker.track_external(*trainer_modules(trainer), trainer.optimizer)
    with fake_mode, labels, AssumeFinite(labels), fp16_autocast():
        run_step_to_its_end(method, batch)      # warm-up: the optimizer's state exists, as in training
    with fake_mode, labels, counter, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), \
            AssumeFinite(labels), fp16_autocast(), (tracker if tracker is not None else contextlib.nullcontext()):
        run_step_to_its_end(method, batch)
    total = int(counter.get_total_flops())
    state_bytes = optimizer_bytes(trainer.optimizer)
    enc = encoder_flops(trainer, data, fake_mode)
    row = {
        "step": step.key, "what": step.what, "organs": organs, "batch_size": batch_size, "patch_size": patch,
        "flops": total, "encoder_flops": enc, "flops_besides_encoder": total - enc,
        "saved_bytes": saved.total, "saved_bytes_by_dtype": saved.by_dtype,
        "param_grad_optimizer_bytes": state_bytes,
        "parameter_bytes_all_modules": sum(_tensor_bytes(p) for p in parameters),
    }
    if tracker is not None:
        snapshot = tracker.get_tracker_snapshot("peak")
        row["peak_bytes"] = int(max(v.get("Total", 0) for v in snapshot.values())) if snapshot else None
    del trainer, batch, method
    return row


# ------------------------------------------------------------------------------------------------ report
def ratios(rows: List[dict]) -> dict:
    by_step = {r["step"]: r for r in rows}
    out = {}
    for a, b in (("sacl", "stock"), ("paper_style", "sacl"), ("dcc", "sacl"), ("joint", "stock"),
                 ("paper_style", "stock")):
        if a in by_step and b in by_step:
            out[f"{a}/{b}"] = {k: by_step[a][k] / by_step[b][k] for k in
                               ("flops", "saved_bytes", "param_grad_optimizer_bytes", "peak_bytes")
                               if by_step[a].get(k) and by_step[b].get(k)}
    return out


TARGETS = (   # (ratio, quantity, limit, at_most)
    ("sacl/stock", "flops", 0.34, True),
    ("sacl/stock", "saved_bytes", 0.45, True),
    ("paper_style/sacl", "flops", 9.0, False),
)


def check_targets(ratio_table: dict) -> dict:
    out = {}
    for pair, quantity, limit, at_most in TARGETS:
        value = ratio_table.get(pair, {}).get(quantity)
        met = None if value is None else (value <= limit if at_most else value >= limit)
        out[f"{pair} {quantity}"] = {"ratio": value, "limit": limit, "at_most": at_most, "met": met}
    return out


def gib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 1024 ** 3:.2f}"


def format_table(rows: List[dict]) -> str:
    stock = next((r for r in rows if r["step"] == "stock"), None)
    lines = [f"{'step':<12} {'TFLOP':>8} {'encoder':>8} {'saved GiB':>10} {'param+grad+opt GiB':>19} "
             f"{'peak GiB':>9} {'FLOPs/stock':>12} {'saved/stock':>12}"]
    for r in rows:
        rel = (lambda k: f"{r[k] / stock[k]:.3f}" if stock else "n/a")
        lines.append(f"{r['step']:<12} {r['flops'] / 1e12:>8.3f} {r['encoder_flops'] / 1e12:>8.3f} "
                     f"{gib(r['saved_bytes']):>10} {gib(r['param_grad_optimizer_bytes']):>19} "
                     f"{gib(r.get('peak_bytes')):>9} {rel('flops'):>12} {rel('saved_bytes'):>12}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_plan_arguments(p)
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N", help="override the plan's patch size")
    p.add_argument("--batch-size", type=int, help="override the plan's batch size")
    p.add_argument("--organs", type=int, help="organs present in every sample (default: the dataset's labels; "
                                               "other counts get labels organ_001, ...)")
    p.add_argument("--steps", nargs="+", help="only these steps (stock sacl paper_style dcc joint)")
    p.add_argument("--no-peak", action="store_true", help="skip MemTracker's peak estimate")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder for the JSON")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    plans = plans_for_benchmark(load_json_file(args.plans, "plans file"), args.plans, args.configuration,
                                args.patch_size, args.batch_size)
    base_json = load_json_file(args.dataset_json, "dataset.json")
    organs = args.organs if args.organs is not None else len(base_json["labels"]) - 1
    dataset_json = dataset_json_with_organs(base_json, organs)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    os.environ["nnUNet_compile"] = "false"       # fake tensors are counted eagerly; compilation changes no count
    manager = PlansManager(plans)
    config = manager.get_configuration(args.configuration)
    results = {
        "kind": "accounting", "plans": shown_path(args.plans), "plans_name": manager.plans_name,
        "configuration": args.configuration, "network": config.network_arch_class_name.split(".")[-1],
        "patch_size": list(config.patch_size), "batch_size": config.batch_size, "organs": organs,
        "torch": torch.__version__, "nnunetv2": version("nnunetv2"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name] + sys.argv),
        "counted": __doc__.split("\n\n")[1].replace("\n", " "),
        "autocast": "float16 (CPU autocast; softmax, log_softmax, sum, prod, cumsum, cumprod in float32 as CUDA "
                    "autocast runs them)",
        "flops_tool": "torch.utils.flop_counter.FlopCounterMode",
        "saved_bytes_tool": "torch.autograd.graph.saved_tensors_hooks, unique storages, parameters left out",
        "peak_tool": "torch.distributed._tools.mem_tracker.MemTracker (estimate under FakeTensorMode)",
        "rows": [], "skipped": [],
    }
    print(f"{shown_path(args.plans)} {args.configuration}: {results['network']}, patch {results['patch_size']}, "
          f"batch {results['batch_size']}, {organs} organs", flush=True)
    wanted = set(args.steps) if args.steps else None
    with nnunet_workspace(plans, args.configuration):
        for step in counted_steps():
            if wanted is not None and step.key not in wanted:
                continue
            if step.trainer_class is None:
                note = f"{step.key}: skipped (SACLTrainer_joint is not in nnunet_sacl.nnunet.variants here)"
                print(f"  {note}", flush=True)
                results["skipped"].append(note)
                continue
            row = count_step(step, plans, args.configuration, dataset_json, organs, peak=not args.no_peak)
            print(f"  {step.key}: {row['flops'] / 1e12:.3f} TFLOP, saved {gib(row['saved_bytes'])} GiB", flush=True)
            results["rows"].append(row)
    results["ratios"] = ratios(results["rows"])
    results["targets"] = check_targets(results["ratios"])
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    print()
    print(format_table(results["rows"]))
    print()
    print(format_targets(results["targets"], "targets:"))
    path = write_results(results, args.out, f"accounting_{results['plans_name']}_{results['configuration']}",
                         stamped=False)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
