"""`nnunet-sacl env` says what to export when nnUNet_extTrainer is missing or wrong; every subcommand has help with an
example; a refused input is one line `nnunet-sacl COMMAND: error: MESSAGE` with exit code 1 (argparse's usage errors
keep code 2); a trainer name nnU-Net cannot find is refused before training, with the closest name; the defaults the
command line shows are the library's."""
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
    for sub in ("env", "synthetic-data", "demo", "convert-btcv", "convert-flare21", "merge-datasets", "demo-data",
                "export-submission", "evaluate", "compare", "embeddings", "check-weights", "study"):
        with pytest.raises(SystemExit) as exit_info:   # argparse exits after printing --help
            main([sub, "--help"])
        assert exit_info.value.code == 0 and "nnunet-sacl " + sub in capsys.readouterr().out, sub


def test_a_subcommands_help_says_what_it_does_and_its_defaults(capsys):
    from nnunet_sacl.cli import commands, main
    for command in commands():
        with pytest.raises(SystemExit):
            main([command.name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert " ".join((command.description or command.help).split()) in text, command.name
    with pytest.raises(SystemExit):
        main(["embeddings", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "configuration (default: 3d_fullres)" in text and "trainer that wrote the model (default: SACLTrainer)" in text


def test_a_refusal_is_one_line_naming_the_command_with_exit_code_1(monkeypatch, capsys):
    from nnunet_sacl.cli import error_line, main
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["synthetic-data", "-d", "991"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "nnunet-sacl synthetic-data: error: nnUNet_raw is not set: export it or pass --raw FOLDER\n"
    assert captured.out == ""
    # a library message of several lines (nnU-Net's, e.g.) is joined into one
    assert error_line("study", "dataset 7: not found. Folders:\nnnUNet_raw=/x\n\n  nnUNet_results=/y\n") == \
        "nnunet-sacl study: error: dataset 7: not found. Folders: nnUNet_raw=/x nnUNet_results=/y"


def test_a_usage_error_stays_argparse_with_exit_code_2(capsys):
    from nnunet_sacl.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "-p", "pred"])
    assert exit_info.value.code == 2
    assert "nnunet-sacl evaluate: error: the following arguments are required: -r, -d" in capsys.readouterr().err


def test_a_trainer_name_typo_is_refused_before_training_with_the_closest_name(tmp_path, monkeypatch, capsys):
    """In process, nothing trains: the lookup fails before nnU-Net's run_training is reached."""
    from nnunet_sacl.cli import main
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers_folder()))
    assert main(["train", "1", "3d_fullres", "0", "-tr", "SACLTrainr", "-device", "cpu"]) == 1
    assert capsys.readouterr().err == \
        "nnunet-sacl train: error: no trainer named 'SACLTrainr' (did you mean SACLTrainer?)\n"
    # the right name while nnU-Net cannot find the package's trainers: says why
    monkeypatch.delenv("nnUNet_extTrainer")
    assert main(["train", "1", "3d_fullres", "0", "-tr", "SACLTrainer", "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sacl train: error: trainer 'SACLTrainer' is nnunet-sacl's, but nnU-Net cannot "
                          "find it: nnUNet_extTrainer is not set") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_demo_trainer_typo_is_refused_with_the_closest_name(tmp_path, capsys):
    from nnunet_sacl.cli import main
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "-tr", "nnUNetTrainer_demo", "SACLTrainer_dmeo"]) == 1
    assert capsys.readouterr().err == \
        "nnunet-sacl demo: error: no trainer named 'SACLTrainer_dmeo' (did you mean SACLTrainer_demo?)\n"
    assert not work.exists()


def test_the_defaults_the_command_line_shows_are_the_librarys():
    """The cli modules import the defaults and choices they show from the library (nothing copied to keep in
    sync): what the command line parses by default is the library's."""
    from nnunet_sacl import demo, train
    from nnunet_sacl.analysis import evaluation, study
    from nnunet_sacl.cli import build_parser, commands
    from nnunet_sacl.dataset_conversion import converters, submission
    parse = build_parser().parse_args
    for argv in (["evaluate", "-p", "P", "-r", "R", "-d", "liver=1"], ["study", "-d", "1", "-c", "2d", "-tr", "A"]):
        args = parse(argv)
        assert (args.tolerance, args.nsd_method) == (evaluation.DEFAULT_TOLERANCE_MM, evaluation.NSD_METHODS[0])
        for method in evaluation.NSD_METHODS:
            assert parse([*argv, "--nsd-method", method]).nsd_method == method
    assert parse(["study", "-d", "1", "-c", "2d", "-tr", "A"]).f == list(range(study.DEFAULT_FOLDS))
    args = parse(["demo"])
    assert (tuple(args.tr), args.c) == (demo.DEFAULT_TRAINERS, demo.DEFAULT_CONFIGURATION)
    assert parse(["train", "1", "2d", "0"]).collective_timeout == train.DEFAULT_COLLECTIVE_TIMEOUT_S
    for challenge in submission.FORMATS:
        assert parse(["export-submission", "-i", "P", "-o", "O", "--challenge", challenge, "--images", "I"])
    assert parse(["convert-btcv", "SRC", "-d", "17"]).name == converters.BTCV.title
    assert parse(["convert-flare21", "SRC", "-d", "21"]).name == converters.FLARE21.title
    shown = {c.name: c for c in commands()}
    assert converters.BTCV.example_tree in shown["convert-btcv"].description
    assert converters.FLARE21.example_tree in shown["convert-flare21"].description
