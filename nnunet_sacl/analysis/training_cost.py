"""What a finished nnU-Net run cost, read from its own files: ``training_log_*.txt`` (epoch lines and times, SACL
pretraining lines) and ``debug.json`` (the trainer's settings as nnU-Net dumps them at the start of training).

Lines that do not match are ignored; an epoch that a killed run started and ``--c`` ran again counts once (its last
time), while the lost time stays in the wall time, which spans every log file from its first to its last line.
"""
import json
import math
import re
from datetime import datetime
from pathlib import Path

_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?): ", re.M)
_EPOCH = re.compile(r": Epoch (\d+) ?$")
_EPOCH_TIME = re.compile(r": Epoch time: ([0-9.eE+-]+) s")
_PRETRAINING_START = "SACL pretraining: epochs"   # PretrainingMixin.on_train_start: this log is a phase-1 training

COST_COLUMNS = ("pretrain_epochs", "pretrain_seconds", "epochs", "epoch_seconds", "iterations_per_epoch",
                "iterations", "wall_seconds")


def _wall_seconds(text: str) -> float:
    stamps = [datetime.fromisoformat(s) for s in _TIMESTAMP.findall(text)]
    return (max(stamps) - min(stamps)).total_seconds() if len(stamps) > 1 else 0.0


def _iterations_per_epoch(folder: Path) -> float:
    try:
        return float(int(json.loads((folder / "debug.json").read_text())["num_iterations_per_epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
        return math.nan


def _nnunet_epochs(folder: Path):
    """nnU-Net's epochs in the logs of one folder (epoch -> its time), the summed wall time of the logs, and whether
    they are a SACL pretraining run's."""
    epochs, wall, pretraining = {}, 0.0, False
    for log in sorted(folder.glob("training_log_*.txt")):
        text = log.read_text(errors="replace")
        wall += _wall_seconds(text)
        pretraining |= _PRETRAINING_START in text
        epoch = None
        for line in text.splitlines():
            match = _EPOCH.search(line)
            if match:
                epoch = int(match.group(1))
                continue
            match = _EPOCH_TIME.search(line)
            if match and epoch is not None:
                epochs[epoch] = float(match.group(1))
    return epochs, wall, pretraining


def run_cost(folder) -> dict:
    """Cost of the run in ``folder`` (an nnU-Net ``fold_X``): epochs and summed epoch times of SACL pretraining and
    of segmentation training, iterations per epoch (the same in both phases), total iterations, and wall time.
    SACLTrainer's pretraining is the nnU-Net training in ``fold_X/pretraining``; a SACLPretrainer run's epochs are
    all pretraining."""
    folder = Path(folder)
    segmentation, wall, pretraining = _nnunet_epochs(folder)
    pretrain = {}
    if pretraining:
        pretrain, segmentation = segmentation, {}
    if (folder / "pretraining").is_dir():
        pretrain, phase_one_wall, _ = _nnunet_epochs(folder / "pretraining")
        wall += phase_one_wall
    per_epoch = _iterations_per_epoch(folder)
    return {"pretrain_epochs": len(pretrain), "pretrain_seconds": sum(pretrain.values()),
            "epochs": len(segmentation), "epoch_seconds": sum(segmentation.values()),
            "iterations_per_epoch": per_epoch, "iterations": per_epoch * (len(pretrain) + len(segmentation)),
            "wall_seconds": wall}


_PSEUDO_DICE = re.compile(r": Pseudo dice \[(.*)\]")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan")


def pseudo_dice_curve(folder) -> dict:
    """Segmentation epoch -> nnU-Net's pseudo Dice of that epoch (its "Pseudo dice [...]" log line, one value per
    foreground class; here their mean, NaN classes left out). A repeated epoch (``--c``) counts once, its last."""
    curve = {}
    for log in sorted(Path(folder).glob("training_log_*.txt")):
        epoch = None
        for line in log.read_text(errors="replace").splitlines():
            match = _EPOCH.search(line)
            if match:
                epoch = int(match.group(1))
                continue
            match = _PSEUDO_DICE.search(line)
            if match and epoch is not None:
                values = [float(v) for v in _NUMBER.findall(match.group(1).replace("np.float32", "")
                                                            .replace("np.float64", ""))]
                finite = [v for v in values if not math.isnan(v)]
                curve[epoch] = sum(finite) / len(finite) if finite else math.nan
    return curve
