"""`nnunet-sacl env` says what to export when nnUNet_extTrainer is missing or wrong."""
import os
import subprocess

import pytest

from nnunet_sacl import trainers_folder
from tests.helpers import nnunet_bin


def env_check(value):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    if value is not None:
        env["nnUNet_extTrainer"] = value
    return subprocess.run([nnunet_bin("nnunet-sacl"), "env"], env=env, capture_output=True, text=True)


def test_env_missing_variable_prints_the_export_line():
    r = env_check(None)
    assert r.returncode == 1
    assert "nnUNet_extTrainer is not set" in r.stderr
    assert f'export nnUNet_extTrainer="{trainers_folder()}"' in r.stderr


def test_env_wrong_path_is_named(tmp_path):
    r = env_check(str(tmp_path / "nowhere"))
    assert r.returncode == 1
    assert f"nnUNet_extTrainer names {tmp_path / 'nowhere'}, which is not a folder" in r.stderr


def test_env_right_path_among_others_is_accepted(tmp_path):
    r = env_check(os.pathsep.join([str(tmp_path), str(trainers_folder())]))
    assert r.returncode == 0 and "is set up for SACL" in r.stdout


def test_every_subcommand_has_help_with_an_example(capsys):
    from nnunet_sacl.cli import main
    for sub in ("env", "synthetic-data", "demo", "convert-btcv", "convert-flare21", "demo-data",
                "export-submission", "evaluate", "compare", "embeddings", "check-weights", "study"):
        with pytest.raises(SystemExit) as exit_info:   # argparse exits after printing --help
            main([sub, "--help"])
        assert exit_info.value.code == 0 and "nnunet-sacl " + sub in capsys.readouterr().out, sub
