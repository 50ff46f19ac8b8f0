"""``nnunet-sacl study --dry-run``: what a study would train and what it would cost, before anything trains.

Iterations per run come from the trainers themselves: each arm's class is built as ``nnUNetv2_train`` builds it
(plans, configuration, fold, dataset.json), with nnU-Net's results root pointed at a temporary folder, since
nnU-Net's ``__init__`` creates its output folder; its ``num_epochs`` x ``num_iterations_per_epoch`` are the
segmentation (or, for a phase-1 trainer, pretraining) iterations, and a SACLTrainer's ``pretrain_epochs`` x
``num_iterations_per_epoch`` its pretraining. Seconds per iteration: given (``--seconds-per-iteration``, e.g. a GPU
figure), or a probe here: the baseline's own ``initialize`` and ``train_step`` (network, loss, optimizer, gradient
clipping, autocast on CUDA) on a random batch of its batch size and patch size, timed after one warm-up step. The
probe leaves out data loading and augmentation and prices a pretraining iteration as a segmentation iteration (on a
CPU here, a pretraining iteration measured about half of one), so the hours are an estimate, said so.
"""
import math
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO

PROBE_STEPS = 3          # timed train steps of the probe, after one warm-up step


@dataclass(frozen=True)
class RunCost:
    pretraining_iterations: int
    segmentation_iterations: int


def _build(study, trainer_class: str, plans_identifier: str, fold: int, device: str):
    """The arm's trainer as nnUNetv2_train builds it, its output folder in a temporary results root."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_sacl.nnunet.trainer import results_folder
    with redirect_stdout(StringIO()):
        cls = recursive_find_trainer_class_by_name(trainer_class)
    plans = dict(load_json(str(study.preprocessed / f"{plans_identifier}.json")), continue_training=False)
    dataset_json = load_json(str(study.preprocessed / "dataset.json"))
    with tempfile.TemporaryDirectory() as root, results_folder(root), redirect_stdout(StringIO()):
        return cls(plans=plans, configuration=study.configuration, fold=fold, dataset_json=dataset_json,
                   device=torch.device(device))


def run_cost(trainer) -> RunCost:
    from nnunet_sacl.nnunet.pretrainer import SACLPretrainer
    steps = int(trainer.num_epochs) * int(trainer.num_iterations_per_epoch)
    if isinstance(trainer, SACLPretrainer):
        return RunCost(steps, 0)
    pretrain = int(getattr(trainer, "pretrain_epochs", 0) or 0) if hasattr(trainer, "pretrainer_class") else 0
    return RunCost(pretrain * int(trainer.num_iterations_per_epoch), steps)


def arm_costs(study) -> dict:
    """Arm name -> RunCost, from each arm's trainer built for the study's first fold (lengths do not depend on the
    fold)."""
    # the base plans: an arm's own plans copy (weights, seed) differs in its name only, and is written later
    return {name: run_cost(_build(study, study.arm(name).trainer, study.plans, study.folds[0], "cpu"))
            for name in study.trainers}


def probe_seconds_per_iteration(study, steps: int = PROBE_STEPS) -> float:
    """Seconds of one training iteration of the baseline on ``study.device`` (see the module's docstring)."""
    import torch
    import torch.nn.functional as F
    arm = study.arm(study.trainers[0])
    trainer = _build(study, arm.trainer, study.plans, study.folds[0], study.device)
    with redirect_stdout(StringIO()):
        trainer.initialize()
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    labels = [int(v) for v in trainer.label_manager.all_labels if v is not None and int(v) >= 0] or [0, 1]
    data = torch.randn(trainer.batch_size, trainer.num_input_channels, *patch)
    seg = torch.tensor(labels)[torch.randint(0, len(labels), (trainer.batch_size, 1, *patch))].float()
    scales = trainer._get_deep_supervision_scales()
    target = seg if scales is None else [
        F.interpolate(seg, size=[round(p * s) for p, s in zip(patch, scale)], mode="nearest") for scale in scales]
    batch = {"data": data, "target": target}

    def step():
        trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
    trainer.network.train()
    step()                                   # warm-up: allocations, cudnn's search
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def plan_rows(studies: list, costs: dict) -> list:
    rows = []
    for study in studies:
        for run in study.runs:
            c = costs[run.trainer]
            rows.append({"arm": run.trainer, "fold": run.fold, "seed": run.seed, "train_cases": study.train_cases,
                         "state": run.state(), "pretraining_iterations": c.pretraining_iterations,
                         "segmentation_iterations": c.segmentation_iterations})
    return rows


def plan_text(rows: list, seconds: float, source: str, pending: list) -> str:
    """The table of runs and the totals: iterations, estimated hours (unfinished runs), the SLURM array size."""
    regimes = any(r["train_cases"] is not None for r in rows)
    seeded = any(r["seed"] is not None for r in rows)
    head = ["arm", "fold"] + (["seed"] if seeded else []) + (["train cases"] if regimes else []) + \
           ["state", "pretraining it.", "segmentation it.", "est. hours"]
    table = [head]
    for r in rows:
        hours = (r["pretraining_iterations"] + r["segmentation_iterations"]) * seconds / 3600
        table.append([r["arm"], str(r["fold"])] + ([str(r["seed"])] if seeded else []) +
                     ([str(r["train_cases"])] if regimes else []) +
                     [r["state"], f"{r['pretraining_iterations']:,}", f"{r['segmentation_iterations']:,}",
                      "-" if r["state"] == "finished" else f"{hours:.2f}"])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    todo = [r for r in rows if r["state"] != "finished"]
    iterations = sum(r["pretraining_iterations"] + r["segmentation_iterations"] for r in todo)
    hours = iterations * seconds / 3600
    lines += ["", f"{len(rows)} run(s), {len(todo)} to train: {iterations:,} iterations "
                  f"({sum(r['pretraining_iterations'] for r in todo):,} pretraining), about {hours:.1f} h at "
                  f"{seconds:.3g} s per iteration ({source}; data loading and validation not included)",
              f"SLURM array (--slurm-array): {len(pending)} task(s)"
              + (f", --array=0-{len(pending) - 1}" if pending else "")
              + (f"; about {hours / len(todo):.2f} h per task on average" if todo else ""),
              "Nothing was trained. Run the same command without --dry-run to train."]
    return "\n".join(lines)


def dry_run(studies: list, seconds_per_iteration: float = None) -> str:
    """The plan of ``studies`` (a study per regime) as text; trains nothing and writes nothing."""
    from nnunet_sacl.analysis.study import pending_commands
    base = studies[0]
    costs = arm_costs(base)
    if seconds_per_iteration is None:
        seconds = probe_seconds_per_iteration(base)
        source = f"probe: {PROBE_STEPS} train steps of {base.trainers[0]} on {base.device} here"
    else:
        seconds, source = float(seconds_per_iteration), "given"
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"--seconds-per-iteration {seconds_per_iteration}: give a positive number of seconds")
    rows = plan_rows(studies, costs)
    return plan_text(rows, seconds, source, pending_commands(studies))
