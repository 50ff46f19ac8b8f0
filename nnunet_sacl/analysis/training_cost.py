"""What a finished nnU-Net run cost, read from its own files: the ``logging`` entry of its ``checkpoint_final.pth``
(nnU-Net's logger: each epoch's start and end timestamps and pseudo Dice, one entry per epoch, so an epoch that a
killed run started and ``--c`` ran again counts once, its last run), ``debug.json`` (the trainer's settings as
nnU-Net dumps them at the start of training) and ``training_log_*.txt``.

The training logs are read only for what the checkpoint does not hold: the wall time, which spans every log file
from its first to its last line (start-up, validation and the time lost to a kill included), and, for a run without
a readable ``checkpoint_final.pth`` (stopped, or trained with checkpointing disabled), the epoch lines, epoch times
and pseudo Dice that nnU-Net prints from the same logger. Lines that do not match are ignored.
"""
import json
import math
import re
from datetime import datetime
from pathlib import Path

_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?): ", re.M)
_EPOCH = re.compile(r": Epoch (\d+) ?$")
_EPOCH_TIME = re.compile(r": Epoch time: ([0-9.eE+-]+) s")
_PSEUDO_DICE = re.compile(r": Pseudo dice \[(.*)\]")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan")
_PRETRAINING_START = "SACL pretraining: epochs"   # PretrainingMixin.on_train_start: this log is a phase-1 training

COST_COLUMNS = ("pretrain_epochs", "pretrain_seconds", "epochs", "epoch_seconds", "iterations_per_epoch",
                "iterations", "wall_seconds")


# ---------------------------------------------------------------- the checkpoint's logging

def final_checkpoint_logging(folder) -> tuple:
    """(nnU-Net's logging dict, is a SACL pretraining) of ``folder/checkpoint_final.pth``, or (None, False) when
    the run has no readable final checkpoint with epoch timestamps."""
    path = Path(folder) / "checkpoint_final.pth"
    if not path.is_file():
        return None, False
    from nnunet_sacl.nnunet.checkpoints import read_checkpoint
    from nnunet_sacl.nnunet.pretrainer import PRETRAINING
    try:
        checkpoint = read_checkpoint(str(path))
    except (OSError, RuntimeError):      # unreadable: the logs still say what the run printed
        return None, False
    logging = checkpoint.get("logging")
    if not isinstance(logging, dict) or not logging.get("epoch_end_timestamps"):
        return None, False
    return logging, (checkpoint.get("sacl") or {}).get("phase") == PRETRAINING


def _epochs_from_logging(logging: dict) -> dict:
    """Epoch -> its time in seconds (end - start timestamp, as nnU-Net's "Epoch time" line)."""
    return {epoch: float(end - start) for epoch, (start, end) in
            enumerate(zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"]))}


# ---------------------------------------------------------------- the training logs

def _logs(folder: Path) -> list:
    return [log.read_text(errors="replace") for log in sorted(Path(folder).glob("training_log_*.txt"))]


def _wall_seconds(text: str) -> float:
    stamps = [datetime.fromisoformat(s) for s in _TIMESTAMP.findall(text)]
    return (max(stamps) - min(stamps)).total_seconds() if len(stamps) > 1 else 0.0


def _per_epoch_from_logs(texts: list, pattern: re.Pattern, value) -> dict:
    """Epoch -> ``value(match)`` of the last line matching ``pattern`` after that epoch's "Epoch N" line; a repeated
    epoch (``--c``) counts once, its last run."""
    found = {}
    for text in texts:
        epoch = None
        for line in text.splitlines():
            match = _EPOCH.search(line)
            if match:
                epoch = int(match.group(1))
                continue
            match = pattern.search(line)
            if match and epoch is not None:
                found[epoch] = value(match)
    return found


def _mean_pseudo_dice(match) -> float:
    """The mean of one "Pseudo dice [...]" line's values (one per foreground class), NaN classes left out."""
    values = [float(v) for v in _NUMBER.findall(match.group(1).replace("np.float32", "").replace("np.float64", ""))]
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def pseudo_dice_from_logs(folder) -> dict:
    """Epoch -> nnU-Net's pseudo Dice from its "Pseudo dice [...]" log lines (the mean over foreground classes,
    NaN classes left out); a repeated epoch (``--c``) counts once, its last."""
    return _per_epoch_from_logs(_logs(folder), _PSEUDO_DICE, _mean_pseudo_dice)


# ---------------------------------------------------------------- a run's cost and curve

def _iterations_per_epoch(folder: Path) -> float:
    try:
        return float(int(json.loads((folder / "debug.json").read_text())["num_iterations_per_epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
        return math.nan


def _nnunet_epochs(folder: Path):
    """nnU-Net's epochs of one folder's run (epoch -> its time), the summed wall time of its logs, and whether the
    run is a SACL pretraining."""
    texts = _logs(folder)
    wall = sum(_wall_seconds(text) for text in texts)
    logging, pretraining = final_checkpoint_logging(folder)
    if logging is not None:
        return _epochs_from_logging(logging), wall, pretraining
    # no final checkpoint to read: the epoch times nnU-Net printed from the same logger (rounded to 0.01 s)
    epochs = _per_epoch_from_logs(texts, _EPOCH_TIME, lambda match: float(match.group(1)))
    return epochs, wall, any(_PRETRAINING_START in text for text in texts)


def run_cost(folder) -> dict:
    """Cost of the run in ``folder`` (an nnU-Net ``fold_X``): epochs and summed epoch times of SACL pretraining and
    of segmentation training, iterations per epoch (the same in both phases), total iterations, and wall time.
    SACLTrainer's pretraining is the nnU-Net training whose results root is ``fold_X/pretraining`` (its fold folder
    ``fold_X/pretraining/DATASET/PRETRAINER__PLANS__CONFIGURATION/fold_X``; an earlier version's phase 1 in
    ``fold_X/pretraining`` itself); a SACLPretrainer run's epochs are all pretraining."""
    folder = Path(folder)
    segmentation, wall, pretraining = _nnunet_epochs(folder)
    pretrain = {}
    if pretraining:
        pretrain, segmentation = segmentation, {}
    phase_one = [*sorted((folder / "pretraining").glob(f"*/*__*/{folder.name}")), folder / "pretraining"]
    phase_one = next((f for f in phase_one if f.is_dir() and _logs(f)), None)
    if phase_one is not None:
        pretrain, phase_one_wall, _ = _nnunet_epochs(phase_one)
        wall += phase_one_wall
    per_epoch = _iterations_per_epoch(folder)
    return {"pretrain_epochs": len(pretrain), "pretrain_seconds": sum(pretrain.values()),
            "epochs": len(segmentation), "epoch_seconds": sum(segmentation.values()),
            "iterations_per_epoch": per_epoch, "iterations": per_epoch * (len(pretrain) + len(segmentation)),
            "wall_seconds": wall}


def pseudo_dice_curve(folder) -> dict:
    """Epoch -> nnU-Net's pseudo Dice of that epoch (the mean over foreground classes, NaN classes left out): its
    logger's ``mean_fg_dice`` in ``checkpoint_final.pth``, else its "Pseudo dice" log lines."""
    logging, _ = final_checkpoint_logging(folder)
    if logging is not None and logging.get("mean_fg_dice"):
        return {epoch: float(value) for epoch, value in enumerate(logging["mean_fg_dice"])}
    return pseudo_dice_from_logs(folder)
