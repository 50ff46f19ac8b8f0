"""What a user sees when something is wrong or when asking for help: one-line errors that say what is wrong, help
text for every option, examples that keep their lines, and a start-up that does not load torch, scipy or numpy."""
import argparse
import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import cli_parsers, nnunet_bin


def test_every_option_has_help_text():
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, parser in cli_parsers().items() for action in parser._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert not missing, f"options without help: {missing}"


def test_examples_keep_their_lines_in_help():
    """argparse re-wraps an epilog unless the parser keeps raw text; then an example breaks mid-argument."""
    for name, parser in cli_parsers().items():
        assert parser.epilog, f"{name} has no example"
        os.environ["COLUMNS"] = "80"
        try:
            shown = parser.format_help().splitlines()
        finally:
            del os.environ["COLUMNS"]
        for line in parser.epilog.splitlines():
            assert len(line) <= 80, f"{name}: example line longer than 80 characters: {line!r}"
            assert line in shown, f"{name}: example line re-wrapped in --help: {line!r}"


def test_start_up_loads_no_heavy_module():
    """``nnunet-sacl --help`` and ``env`` must not import torch, scipy, SimpleITK or numpy (together seconds)."""
    code = ("import sys\n"
            "from nnunet_sacl.cli import main\n"
            "for argv in (['--help'], ['env']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = ('torch', 'scipy.stats', 'scipy.ndimage', 'SimpleITK.SimpleITK', 'numpy._core', 'nnunetv2',\n"
            "         'matplotlib', 'monai')\n"
            "print('LOADED', [m for m in heavy if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "LOADED []" in r.stdout, r.stdout + r.stderr


def test_evaluate_names_a_missing_prediction_folder(tmp_path, capsys):
    from nnunet_sacl.cli import main
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "case_0.nii.gz").write_bytes(b"")
    missing = tmp_path / "pred_missing"
    assert main(["evaluate", "-p", str(missing), "-r", str(tmp_path / "ref"), "-d", "liver=1"]) == 1
    err = capsys.readouterr().err
    assert f"prediction folder {missing} does not exist" in err and "no prediction for case" not in err


@pytest.mark.parametrize("dataset, expected", [
    ("12345", "nnunet-sacl embeddings: error: dataset 12345: Could not find a dataset with the ID 12345"),
    ("123", "nnunet-sacl embeddings: error: no trained model {res}/Dataset123_Planned/SACLTrainer__nnUNetPlans__3d_fullres "
            "(trainer SACLTrainer, plans nnUNetPlans, configuration 3d_fullres); check -tr, -p and -c")])
def test_embeddings_without_dataset_or_model_is_one_line(tmp_path, dataset, expected):
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    for key in ("raw", "pre", "res"):
        (tmp_path / key).mkdir()
    (tmp_path / "pre" / "Dataset123_Planned").mkdir()
    r = subprocess.run([nnunet_bin("nnunet-sacl"), "embeddings", "-d", dataset], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(res=tmp_path / "res")), r.stderr


def test_check_weights_says_a_text_file_is_not_a_checkpoint(tmp_path, capsys):
    from nnunet_sacl.cli import main
    text = tmp_path / "weights.pth"
    text.write_text("not weights\n")
    assert main(["check-weights", str(text), "-d", "1", "-c", "3d_fullres"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sacl check-weights: error: ") and err.count("\n") == 1, err
    assert f"{text}: it is not a torch file" in err and "killed" not in err


def damaged_checkpoint(folder, kind: str) -> str:
    """A checkpoint file that cannot be loaded: missing, truncated (a zip cut short), text, or a whole zip archive
    that torch.save did not write (torch's own error)."""
    import torch
    path = folder / "checkpoint_latest.pth"
    if kind == "truncated":
        torch.save({"network_weights": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "text":
        path.write_text("epoch 3: loss 0.5\n")
    elif kind == "foreign zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "not a checkpoint")
    return str(path)


@pytest.mark.parametrize("kind, says", [
    ("missing", "does not exist"), ("truncated", ": it is truncated (2000 bytes, a zip archive without its end"),
    ("text", ": it is not a torch file (torch.save writes a zip archive"),
    ("foreign zip", "file in archive is not in a subdirectory")])
def test_a_checkpoint_that_cannot_be_read_says_why(tmp_path, kind, says):
    from nnunet_sacl.nnunet.checkpoints import read_checkpoint
    path = damaged_checkpoint(tmp_path, kind)
    with pytest.raises((FileNotFoundError, RuntimeError)) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert path in message and says in message, message
    others = {"missing": "does not exist", "truncated": "truncated", "text": "not a torch file"}
    assert not [o for k, o in others.items() if k != kind and o in message], message
    assert isinstance(error.value, FileNotFoundError) == (kind == "missing")


def test_embeddings_without_the_encoder_file_says_it_does_not_exist(tmp_path):
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    (tmp_path / "pre" / "Dataset123_Planned").mkdir(parents=True)
    fold = tmp_path / "res" / "Dataset123_Planned" / "SACLTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    r = subprocess.run([nnunet_bin("nnunet-sacl"), "embeddings", "-d", "123"], env=env, capture_output=True,
                       text=True, timeout=300)
    expected = f"nnunet-sacl embeddings: error: Checkpoint {fold / 'checkpoint_sacl_encoder.pth'} does not exist"
    assert r.returncode == 1 and r.stderr.strip() == expected, r.stderr


def test_embeddings_of_a_run_that_did_not_pretrain_says_so(tmp_path, monkeypatch, capsys):
    """A finished joint-trainer run (checkpoint_final.pth, no encoder file): the refusal says that only SACL
    pretraining writes an encoder file, not merely that the file does not exist."""
    from nnunet_sacl.cli import main
    fold = tmp_path / "res" / "Dataset123_Planned" / "SACLTrainer_joint__nnUNetPlans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"")
    (tmp_path / "pre" / "Dataset123_Planned").mkdir(parents=True)
    for key, folder in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "pre"), ("nnUNet_results", "res")):
        (tmp_path / folder).mkdir(exist_ok=True)
        monkeypatch.setenv(key, str(tmp_path / folder))
    assert main(["embeddings", "-d", "123", "-tr", "SACLTrainer_joint"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SACLTrainer_joint fold 0 has no pretrained encoder" in err
    assert "only SACL pretraining writes one" in err and "--weights FILE" in err


def test_embeddings_without_nnunet_preprocessed_names_the_variable(tmp_path, monkeypatch, capsys):
    """The dataset and the model are found (nnUNet_raw, nnUNet_results), nnUNet_preprocessed is not set: one line
    that names it, no traceback from nnU-Net's paths."""
    from nnunet_sacl.cli import main
    fold = tmp_path / "res" / "Dataset123_Planned" / "SACLTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    (tmp_path / "raw").mkdir()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["embeddings", "-d", "123"]) == 1
    assert capsys.readouterr().err == ("nnunet-sacl embeddings: error: nnUNet_preprocessed is not set: export it "
                                       "(the folder nnUNetv2_plan_and_preprocess wrote the dataset to)\n")


def test_the_method_imports_nothing_from_nnunet():
    """nnunet_sacl.method is pure torch, for any training loop: importing all of it loads no nnU-Net module."""
    code = ("import sys, pkgutil, importlib, nnunet_sacl.method as m\n"
            "for info in pkgutil.iter_modules(m.__path__):\n"
            "    importlib.import_module('nnunet_sacl.method.' + info.name)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('nnunetv2', 'batchgeneratorsv2', "
            "'dynamic_network_architectures')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
