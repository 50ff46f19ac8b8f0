"""Shared fixtures: one generated dataset, planned and preprocessed by nnU-Net's own commands, per test session."""
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_sacl import trainers_folder
from nnunet_sacl.environment import planning_env
from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset

DATASET_ID = 991
DATASET_NAME = f"Dataset{DATASET_ID:03d}_SACLSynthetic"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains with nnU-Net's own commands or torchrun; the fast tier "
                                       "(pytest -m 'not slow') leaves these out")


def nnunet_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def make_nnunet_env(root: Path) -> dict:
    """Environment for nnU-Net subprocesses: fresh nnUNet_* folders under root, our trainers folder. Without
    nnUNet_n_proc_DA (``planning_env``); training sets it itself."""
    return planning_env(dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                             nnUNet_results=str(root / "results"), nnUNet_extTrainer=str(trainers_folder()),
                             nnUNet_def_n_proc="2", nnUNet_compile="f", PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory):
    """The session's nnU-Net environment (dataset 991 lives there)."""
    return make_nnunet_env(tmp_path_factory.mktemp("nnunet"))


def run(cmd, env, timeout=600, **kwargs):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def preprocessed(nnunet_env):
    """The synthetic dataset planned with nnUNetPlans (3d_fullres, 2d) and nnUNetResEncUNetMPlans (3d_fullres)."""
    raw = make_synthetic_dataset(nnunet_env["nnUNet_raw"], DATASET_ID)
    d = str(DATASET_ID)
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", d, "-c", "3d_fullres", "2d", "-np", "2",
         "--verify_dataset_integrity"], nnunet_env)
    run([nnunet_bin("nnUNetv2_plan_experiment"), "-d", d, "-pl", "nnUNetPlannerResEncM"], nnunet_env)
    run([nnunet_bin("nnUNetv2_preprocess"), "-d", d, "-plans_name", "nnUNetResEncUNetMPlans", "-c", "3d_fullres",
         "-np", "2"], nnunet_env)
    return raw


@pytest.fixture
def in_process_env(nnunet_env, preprocessed, monkeypatch):
    """nnU-Net's paths read os.environ when used, so in-process trainers see the session's folders."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(key, nnunet_env[key])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return nnunet_env


@pytest.fixture(scope="session")
def sdist():
    """The TotalSegmentator 2.18.0 sdist the real-CT demo dataset is built from (downloaded once, then cached)."""
    from nnunet_sacl.dataset_conversion.demo_data import DemoDataUnavailable, fetch_totalsegmentator_sdist
    try:
        return fetch_totalsegmentator_sdist()
    except DemoDataUnavailable as err:
        pytest.skip(f"the TotalSegmentator 2.18.0 sdist could not be downloaded (offline?): {err}")


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
    baseline's Dice of one organ, or their means over the organs both define (`organ` = "mean")."""
    value = {(r["trainer"], r["case"], r["organ"]): float(r["dice"]) for r in rows}
    a, b = [], []
    for case in sorted({r["case"] for r in rows}):
        pairs = [(value[(trainer, case, o)], value[(baseline, case, o)])
                 for o in (organs if organ == "mean" else [organ])]
        pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
        if pairs:
            a.append(np.mean([x for x, _ in pairs]))
            b.append(np.mean([y for _, y in pairs]))
    return np.array(a), np.array(b)
