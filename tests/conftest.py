"""Shared fixtures: one generated dataset, planned and preprocessed by nnU-Net's own commands, per test session. The
helpers the test modules share are in helpers.py."""
import json
import os
import shutil
from pathlib import Path

import pytest

from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
from tests.helpers import DATASET_ID, DATASET_NAME, NNUNET_PROCESSES as P, make_nnunet_env, nnunet_bin, run, \
    run_readme_block

# a folder where the generated dataset, planned and preprocessed once, is kept for later pytest sessions (e.g.
# tests/mutants.py, which runs pytest once per mutant); unset, every session makes its own
DATA_CACHE = "SACL_TEST_DATA"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains with nnU-Net's own commands or torchrun; the fast tier "
                                       "(pytest -m 'not slow') leaves these out")


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory):
    """The session's nnU-Net environment (dataset 991 lives there). With $SACL_TEST_DATA set, its raw and
    preprocessed folders are there (kept for later sessions); nnUNet_results is always the session's own."""
    env = make_nnunet_env(tmp_path_factory.mktemp("nnunet"))
    cache = os.environ.get(DATA_CACHE)
    if cache:
        env.update(nnUNet_raw=str(Path(cache) / "raw"), nnUNet_preprocessed=str(Path(cache) / "preprocessed"))
    return env


@pytest.fixture(scope="session")
def preprocessed(nnunet_env):
    """The synthetic dataset planned with nnUNetPlans (3d_fullres and 2d; 3d_fullres preprocessed). 2d's data:
    ``preprocessed_2d``; nnUNetResEncUNetMPlans: ``resenc_plans`` (each when a test asks)."""
    complete = Path(nnunet_env["nnUNet_preprocessed"]) / DATASET_NAME / ".sacl_tests_complete"
    if complete.is_file():          # made by an earlier session in $SACL_TEST_DATA
        return Path(nnunet_env["nnUNet_raw"]) / DATASET_NAME
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):      # what an interrupted session left there
        shutil.rmtree(Path(nnunet_env[key]) / DATASET_NAME, ignore_errors=True)
    raw = make_synthetic_dataset(nnunet_env["nnUNet_raw"], DATASET_ID)
    d = str(DATASET_ID)
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", d, "-c", "3d_fullres", "-np", P, "-npfp", P,
         "--verify_dataset_integrity"], nnunet_env)
    complete.write_text("")
    return raw


@pytest.fixture(scope="session")
def preprocessed_2d(nnunet_env, preprocessed):
    """nnUNetPlans' 2d configuration of the synthetic dataset, preprocessed when a test asks."""
    complete = Path(nnunet_env["nnUNet_preprocessed"]) / DATASET_NAME / ".sacl_tests_2d_complete"
    if not complete.is_file():
        run([nnunet_bin("nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", P], nnunet_env)
        complete.write_text("")
    return "2d"


@pytest.fixture(scope="session")
def resenc_plans(nnunet_env, preprocessed):
    """nnUNetResEncUNetMPlans (3d_fullres) of the synthetic dataset, planned (from ``preprocessed``'s fingerprint)
    when a test asks. nnU-Net's ResEnc presets keep nnUNetPlans' data (the same data_identifier, where
    ``preprocessed`` put it); preprocessed anew only if that ever changes."""
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / DATASET_NAME
    complete = folder / ".sacl_tests_resenc_complete"
    if not complete.is_file():
        d = str(DATASET_ID)
        run([nnunet_bin("nnUNetv2_plan_experiment"), "-d", d, "-pl", "nnUNetPlannerResEncM"], nnunet_env)
        plans = json.loads((folder / "nnUNetResEncUNetMPlans.json").read_text())
        if plans["configurations"]["3d_fullres"]["data_identifier"] != "nnUNetPlans_3d_fullres":
            run([nnunet_bin("nnUNetv2_preprocess"), "-d", d, "-plans_name", "nnUNetResEncUNetMPlans", "-c",
                 "3d_fullres", "-np", P], nnunet_env)
        complete.write_text("")
    return "nnUNetResEncUNetMPlans"


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




@pytest.fixture(scope="session")
def readme_run(tmp_path_factory):
    """README's "Using it on your dataset" block, run once as a new user runs it (test_readme.py checks it). Its
    trained SACLTrainer_smoke (fold 0 of the generated dataset 991) and its predictions are also what the end-to-end
    and study tests examine: one training, not three."""
    return run_readme_block(tmp_path_factory.mktemp("readme"))
