"""Helpers shared by the test modules (one place, so that no test module imports another): the session dataset's
names, nnU-Net subprocesses and their logs, in-process trainers, torchrun launches, independent reference
implementations of the method's formulas, and small generated images and challenge folder layouts. Fixtures live in
conftest.py."""
import argparse
import glob
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stdout
from io import StringIO
from os.path import join
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.run.run_training import get_trainer_from_args
from torch.nn import functional as F

from nnunet_sacl import trainers_folder
from nnunet_sacl.environment import planning_env
from nnunet_sacl.nnunet.trainer import SACLTrainer

# ---------------------------------------------------------------- README's recipe

# The processes of each of nnU-Net's pools in the tests (planning's -npfp/-np, nnUNet_def_n_proc for the final
# validation's export and metrics, nnUNet_npp/nnUNet_nps for nnUNetv2_predict; nnU-Net's defaults: 8, 4 for
# 3d_fullres, 8, 3, 3): every one is a fresh interpreter that imports torch and nnU-Net (about 6 s of one core) and
# the data is small, so on the 2-core test machine one is fastest (measured: README's run 80 and 74 s against 88 and
# 78 s with 2, a smoke training 31 against 32 s)
NNUNET_PROCESSES = "1"

README = Path(__file__).resolve().parent.parent / "README.md"
README_SECTION = "## Using it on your dataset"
# the CPU smoke trainer for SACLTrainer (3 + 2 short epochs instead of 100 + 1000), and planning processes
README_PLANNING = f"-npfp {NNUNET_PROCESSES} -np {NNUNET_PROCESSES}"
README_SUBSTITUTIONS = [("-tr SACLTrainer ", "-tr SACLTrainer_smoke "),
                       ("-tr SACLTrainer\n", "-tr SACLTrainer_smoke\n"),
                       ("--verify_dataset_integrity", f"--verify_dataset_integrity {README_PLANNING}")]


def readme_block() -> str:
    """The first ```bash block of README's "Using it on your dataset" section."""
    text = README.read_text()
    section = text[text.index(README_SECTION):]
    section = section[:section.index("\n## ", len(README_SECTION))]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def run_readme_block(folder: Path) -> dict:
    """README's block run by bash in the empty ``folder`` as a new user runs it (a clean shell: no nnUNet_* set, the
    environment's bin not on PATH, ``.venv`` the environment of the first command), with the smoke trainer and
    the tests' nnU-Net process counts (NNUNET_PROCESSES: README_SUBSTITUTIONS, nnUNet_npp, nnUNet_nps). Where the
    tests do not run in a virtual environment (no bin/activate) its first line puts the environment on PATH instead
    (``activated`` False). Returns the folder, the result and the nnU-Net environment of that folder."""
    script = readme_block()
    for old, new in README_SUBSTITUTIONS:
        script = script.replace(old, new)
    activated = (Path(sys.prefix) / "bin" / "activate").is_file()
    if activated:
        (folder / ".venv").symlink_to(sys.prefix)
    else:
        bin_dir = shlex.quote(str(Path(sys.executable).parent))
        script = script.replace("source .venv/bin/activate\n", f"export PATH={bin_dir}:$PATH\n", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k != "VIRTUAL_ENV"}
    env.update(nnUNet_def_n_proc=NNUNET_PROCESSES, nnUNet_n_proc_DA="1", nnUNet_compile="f",   # as the rest
               nnUNet_npp=NNUNET_PROCESSES, nnUNet_nps=NNUNET_PROCESSES)      # of the suite
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.prefix, "bin").resolve())
    result = subprocess.run(["bash", "-e", "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=1500)
    nnunet = make_nnunet_env(folder)
    nnunet.update(nnUNet_raw=str(folder / "nnUNet_raw"), nnUNet_preprocessed=str(folder / "nnUNet_preprocessed"),
                  nnUNet_results=str(folder / "nnUNet_results"))
    return {"folder": folder, "result": result, "activated": activated, "env": nnunet}


def readme_model(readme_run: dict) -> str:
    """The fold folder README's nnUNetv2_train wrote (SACLTrainer_smoke, fold 0); fails with the block's output if
    the block failed."""
    r = readme_run["result"]
    assert r.returncode == 0, f"README block failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return fold_folder(readme_run["env"], "SACLTrainer_smoke", 0)


# ---------------------------------------------------------------- the command line

def cli_parsers() -> dict:
    """name -> argparse parser of every ``nnunet-sacl`` subcommand, as ``nnunet_sacl.cli.main`` builds them."""
    from nnunet_sacl.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# ---------------------------------------------------------------- the session dataset, nnU-Net subprocesses

DATASET_ID = 991
DATASET_NAME = f"Dataset{DATASET_ID:03d}_SACLSynthetic"
D = str(DATASET_ID)


def nnunet_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def make_nnunet_env(root: Path) -> dict:
    """Environment for nnU-Net subprocesses: fresh nnUNet_* folders under root, our trainers folder and the tests' own (tests/trainers), the tests'
    process counts (NNUNET_PROCESSES). Without nnUNet_n_proc_DA (``planning_env``); training sets it itself."""
    return planning_env(dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                             nnUNet_results=str(root / "results"),
                             nnUNet_extTrainer=os.pathsep.join([str(trainers_folder()), str(TEST_TRAINERS)]),
                             nnUNet_def_n_proc=NNUNET_PROCESSES, nnUNet_npp=NNUNET_PROCESSES,
                             nnUNet_nps=NNUNET_PROCESSES, nnUNet_compile="f", PYTHONUNBUFFERED="1"))


def run(cmd, env, timeout=600, **kwargs):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def parse_with_nnunet(line, monkeypatch):
    """A printed ``nnUNetv2_train ...`` line through nnU-Net's own argument parsing (run_training replaced by a
    recorder): (dataset, configuration, fold, trainer, plans, pretrained weights, --c)."""
    import nnunetv2.run.run_training as rt
    calls = []
    monkeypatch.setattr(rt, "run_training", lambda *a, **k: calls.append(a))
    words = shlex.split(line)
    assert Path(words[0]).name == "nnUNetv2_train", line
    monkeypatch.setattr("sys.argv", ["nnUNetv2_train", *words[1:]])
    threads = torch.get_num_threads()
    try:
        rt.run_training_entry()
    finally:
        torch.set_num_threads(threads)
    dataset, configuration, fold, trainer, plans, weights, _, _, continue_training = calls[0][:9]
    return dataset, configuration, fold, trainer, plans, weights, continue_training


def paired(rows, trainer, baseline, organs, organ):
    """Independent reference for the study's pairing, from per_case.csv rows: per case, the trainer's and the
    baseline's Dice of one organ, or their means over the organs in the case's reference label (`organ` = "mean");
    an organ absent from the reference is not scored."""
    value = {(r["trainer"], r["case"], r["organ"]): float(r["dice"]) if int(r["reference_voxels"]) > 0 else math.nan
             for r in rows}
    a, b = [], []
    for case in sorted({r["case"] for r in rows}):
        pairs = [(value[(trainer, case, o)], value[(baseline, case, o)])
                 for o in (organs if organ == "mean" else [organ])]
        pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
        if pairs:
            a.append(np.mean([x for x, _ in pairs]))
            b.append(np.mean([y for _, y in pairs]))
    return np.array(a), np.array(b)


# ---------------------------------------------------------------- in-process trainers

def make_trainer(trainer, configuration="3d_fullres", plans="nnUNetPlans", fold=0):
    """A trainer built as nnUNetv2_train builds it, its __init__ included: by name (found via nnUNet_extTrainer,
    as nnU-Net does), or a test's own trainer class (a user's variant: settings as class attributes or in
    ``__init__``)."""
    if isinstance(trainer, str):
        made = get_trainer_from_args(str(DATASET_ID), configuration, fold, trainer, plans, device=torch.device("cpu"))
    else:
        from nnunetv2.paths import nnUNet_preprocessed
        folder = join(str(nnUNet_preprocessed), DATASET_NAME)
        plans_dict = dict(json.load(open(join(folder, f"{plans}.json"))), continue_training=False)
        made = trainer(plans_dict, configuration, fold, json.load(open(join(folder, "dataset.json"))),
                       torch.device("cpu"))
    return made


def make_pretrainer(trainer, **kwargs):
    """Phase 1 of a SACLTrainer (the pretrainer its ``make_pretrainer`` builds, under fold_X/pretraining), or a
    SACLPretrainer."""
    trainer = make_trainer(trainer, **kwargs)
    return trainer.make_pretrainer() if isinstance(trainer, SACLTrainer) else trainer


def stop_loaders(trainer) -> None:
    """Stops the trainer's data loader workers, as nnU-Net's on_train_end does (without its checkpoint)."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    trainer.dataloader_train = trainer.dataloader_val = None


def first_batch(trainer):
    """One batch from the trainer's own training dataloader, whose workers are then stopped (stock trainers too)."""
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    stop_loaders(trainer)
    return batch


# ---------------------------------------------------------------- training runs and their logs

def train_env(nnunet_env):
    # single-process augmentation: fast on 2 cores, and a SIGKILL leaves no orphaned workers
    return dict(nnunet_env, nnUNet_n_proc_DA="0")


def with_test_trainers(env):
    """env whose nnUNet_extTrainer also names the tests' own trainers (tests/trainers)."""
    folders = env["nnUNet_extTrainer"].split(os.pathsep)
    return dict(env, nnUNet_extTrainer=os.pathsep.join(folders + [str(TEST_TRAINERS)] * (str(TEST_TRAINERS) not in folders)))


NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")


@contextmanager
def nnunet_folders(env):
    """env's nnU-Net folders and trainers folder in this process's environment for the block, as a subprocess with
    env would see them (one that env lacks is unset); nnU-Net reads its paths from os.environ when it uses them."""
    saved = {key: os.environ.get(key) for key in NNUNET_FOLDERS}

    def put(values):
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    put({key: env.get(key) for key in NNUNET_FOLDERS})
    try:
        yield
    finally:
        put(saved)


def in_process(args, env) -> str:
    """``nnunet-sacl ARGS`` in this process with env's nnU-Net folders (what a second call that starts no nnU-Net
    command needs); what it printed. Fails with the output if it does not exit with 0."""
    from nnunet_sacl.cli import main
    out = StringIO()
    with nnunet_folders(env), redirect_stdout(out):
        code = main(args)
    assert code == 0, f"nnunet-sacl {' '.join(args)} exited with {code}:\n{out.getvalue()[-4000:]}"
    return out.getvalue()


def fold_folder(env, trainer, fold, plans="nnUNetPlans", configuration="3d_fullres"):
    return join(env["nnUNet_results"], DATASET_NAME, f"{trainer}__{plans}__{configuration}", f"fold_{fold}")


def training_log(folder) -> str:
    return "\n".join(open(f).read() for f in sorted(glob.glob(join(folder, "training_log_*.txt"))))


def pretraining_folder(folder, must_exist=True) -> str:
    """SACLTrainer's phase-1 fold folder for the fold folder ``folder``: an nnU-Net training whose results root is
    fold_X/pretraining (fold_X/pretraining/DATASET/PRETRAINER__PLANS__CONFIGURATION/fold_X); before phase 1 has
    started, with ``must_exist=False``, a path where no file is."""
    found = glob.glob(join(folder, "pretraining", "*", "*__*", os.path.basename(folder)))
    if not found and not must_exist:
        return join(folder, "pretraining", "not yet")
    assert len(found) == 1, f"phase 1 of {folder}: {found}"
    return found[0]


def pretraining_log(folder) -> str:
    """The log of SACLTrainer's phase 1 (``pretraining_folder``)."""
    return training_log(pretraining_folder(folder))


def has_epoch_line(log: str, epoch: int) -> bool:
    """nnU-Net's 'Epoch N' line (print_to_log_file ends each argument with a space)."""
    return re.search(rf": Epoch {epoch} ?$", log, re.M) is not None


def pretraining_losses(log: str):
    return {int(e): float(v) for e, v in re.findall(r"SACL pretraining epoch (\d+): contrastive loss (\S+),", log)}


def kill_when(cmd, env, ready, timeout=300) -> None:
    """Start cmd and SIGKILL it as soon as ready() holds (or it ended, or timeout seconds passed)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# ---------------------------------------------------------------- prepare-finetune's printed lines, encoder weights

def printed_line(stdout: str, command="nnUNetv2_train") -> str:
    return next(line.strip() for line in stdout.splitlines() if line.strip().startswith(f"{command} "))


def pretrained_weights(line: str) -> str:
    words = shlex.split(line)
    return words[words.index("-pretrained_weights") + 1]


def printed_train_line(stdout: str) -> list:
    words = shlex.split(printed_line(stdout))
    words[words.index("-tr") + 1] = "nnUNetTrainer_smoke"
    assert words[-2:] == ["-device", "cpu"]         # printed so without a CUDA device, as here
    return [nnunet_bin("nnUNetv2_train"), *words[1:]]


def encoder_keys(weights: dict) -> list:
    return [k for k in weights if k.startswith(("encoder.", "decoder.encoder."))]


def correlation(a, b) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


# ---------------------------------------------------------------- independent references for the method's formulas

def reference_supcon(z, labels, t):
    z = z.double()
    n = len(labels)
    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        per_anchor.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denominator) for p in positives)
                          / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def reference_intensity_weighted(z, labels, intensities, intensity_range, t):
    """Loops: negatives' logits in the denominator scaled by w = clamp(1 - mean_c |m_i - m_a| / R_c, 0, 1)."""
    z = z.double()
    n = len(labels)

    def w(i, a):
        d = sum(abs(float(intensities[i][c]) - float(intensities[a][c])) / intensity_range[c]
                for c in range(len(intensity_range))) / len(intensity_range)
        return min(1.0, max(0.0, 1.0 - d))

    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp((1.0 if labels[a] == labels[i] else w(i, a)) * float(z[i] @ z[a]) / t)
                          for a in range(n) if a != i)
        per_anchor.append(-sum(float(z[i] @ z[p]) / t - math.log(denominator) for p in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def reference_mask_pool(features, seg, num_classes, ignore_label=None, min_voxels=1):
    """Upsample features to the label grid ('nearest-exact'), then average under each organ's mask, by loops."""
    up = F.interpolate(features.double(), size=seg.shape[2:], mode="nearest-exact")
    rows, labels, samples = [], [], []
    for b in range(features.shape[0]):
        for k in range(1, num_classes):
            if k == ignore_label:
                continue
            mask = seg[b, 0] == k
            if mask.sum() >= max(min_voxels, 1):
                rows.append(up[b][:, mask].mean(1))
                labels.append(k)
                samples.append(b)
    if not rows:
        return torch.zeros(0, features.shape[1], dtype=torch.float64), torch.zeros(0), torch.zeros(0)
    return torch.stack(rows), torch.tensor(labels), torch.tensor(samples)


# ---------------------------------------------------------------- torchrun launches

TEST_TRAINERS = Path(__file__).parent / "trainers"
RUN_TIMEOUT = 300


def torchrun_env(nnunet_env, results, **extra):
    """The session's preprocessed data, a results folder of the test's own, and the test trainers."""
    env = with_test_trainers(dict(nnunet_env, nnUNet_results=str(results), nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1"))
    env.pop("RANK", None)
    env.update(extra)
    return env


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def train_args(trainer, fold, *more):
    return [D, "3d_fullres", str(fold), "-tr", trainer, "-device", "cpu", *more]


def start(cmd, env, **kwargs):
    """A new process group, so that a failing test can kill torchrun and all its workers."""
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def finish(proc, timeout=RUN_TIMEOUT) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish within {timeout} s:\n{out[-4000:]}")
    return out


# ---------------------------------------------------------------- challenge folder layouts (converters)

SHAPE_ZYX = (8, 16, 16)
SPACING_XYZ = (0.78, 0.78, 3.0)
ORIGIN_XYZ = (-180.5, -201.25, 412.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def write_image(array: np.ndarray, path: Path, spacing=SPACING_XYZ, origin=ORIGIN_XYZ) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def organ_boxes(num_organs: int, seed: int) -> np.ndarray:
    """Every organ label as a small box at a seeded spot (boxes may overlap; later labels win)."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(SHAPE_ZYX, np.uint8)
    for label in range(1, num_organs + 1):
        z, y, x = rng.integers(0, 6), rng.integers(0, 13), rng.integers(0, 13)
        seg[z:z + 2, y:y + 3, x:x + 3] = label
    return seg


def ct(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 200, SHAPE_ZYX).astype(np.int16)


def make_btcv_tree(root: Path, train=(1, 2, 3), test=(61,)) -> Path:
    """``root/RawData`` as in the Synapse ``Abdomen/RawData.zip``."""
    src = root / "RawData"
    for i in train:
        write_image(ct(i), src / "Training" / "img" / f"img{i:04d}.nii.gz")
        write_image(organ_boxes(13, i), src / "Training" / "label" / f"label{i:04d}.nii.gz")
    for i in test:
        write_image(ct(100 + i), src / "Testing" / "img" / f"img{i:04d}.nii.gz")
    return src


def make_flare21_tree(root: Path, train=(0, 1, 2), test=(1,)) -> Path:
    """``root/FLARE21`` with TrainingImg, TrainingMask, ValidationImg as released."""
    src = root / "FLARE21"
    for i in train:
        write_image(ct(i), src / "TrainingImg" / f"train_{i:03d}_0000.nii.gz")
        write_image(organ_boxes(4, i), src / "TrainingMask" / f"train_{i:03d}.nii.gz")
    for i in test:
        write_image(ct(100 + i), src / "ValidationImg" / f"validation_{i:03d}_0000.nii.gz")
    return src


# ---------------------------------------------------------------- segmentations for the evaluator

def cube(shape, start, side):
    """Axis-aligned cube of ``side`` voxels whose first voxel is ``start``."""
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def write_seg(array, path, spacing_zyx=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(img, str(path))


def two_organ_seg(shape, liver_start, spleen_start, side=8):
    seg = np.zeros(shape, np.uint8)
    seg[cube(shape, liver_start, side)] = 1
    seg[cube(shape, spleen_start, side)] = 2
    return seg


# ------------------------------------------------------------------------- a command refused (prepare-finetune, ...)
def prepare_cli(env, *args) -> tuple:
    """``nnunet-sacl prepare-finetune ARGS`` in this process: (exit code, stdout, stderr)."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from nnunet_sacl.cli import main
    out, err = StringIO(), StringIO()
    with nnunet_folders(env), redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def nothing_written(env) -> bool:
    return not any(Path(env["nnUNet_preprocessed"]).glob("*")) if Path(env["nnUNet_preprocessed"]).exists() else True


def refused(env, expected: str, *args, command="prepare-finetune"):
    code, out, err = prepare_cli(env, command, *args)
    assert code == 1 and out == "", out + err
    assert err.count("\n") == 1 and err.startswith(f"nnunet-sacl {command}: error: "), err
    assert re.search(expected, err), err
    assert nothing_written(env), list(Path(env["nnUNet_preprocessed"]).rglob("*"))
    return err
