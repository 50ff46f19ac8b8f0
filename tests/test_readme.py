"""README's "Using it on your dataset" runs as written on a CPU machine: the bash block is read from README.md (so the
document and the test cannot drift apart) and run by bash in an empty folder, with one substitution: the CPU smoke
trainer for SACLTrainer (3 + 2 short epochs instead of 100 + 1000)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using it on your dataset"
SUBSTITUTIONS = [("-tr SACLTrainer ", "-tr SACLTrainer_smoke "), ("-tr SACLTrainer\n", "-tr SACLTrainer_smoke\n")]


def readme_block() -> str:
    """The first ```bash block of the section."""
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_block_is_the_cpu_recipe():
    block = readme_block()
    assert block.startswith("source .venv/bin/activate\n")
    for needed in ("nnUNet_raw=", "nnUNet_preprocessed=", "nnUNet_results=", "nnUNet_extTrainer=", "-device cpu",
                   "-f 0", "nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict", "nnunet-sacl env"):
        assert needed in block, needed
    smoke = block
    for old, new in SUBSTITUTIONS:
        smoke = smoke.replace(old, new)
    assert smoke.count("SACLTrainer_smoke") == block.count("SACLTrainer") == 2


@pytest.mark.slow
def test_readme_section_runs_as_written(tmp_path):
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.is_file():
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix} has no bin/activate)")
    script = readme_block()
    for old, new in SUBSTITUTIONS:
        script = script.replace(old, new)
    (tmp_path / ".venv").symlink_to(sys.prefix)          # "the environment of the first command"
    # a clean shell as a new user has it (no nnUNet_* set); 2 processes as the rest of the suite uses
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k != "VIRTUAL_ENV"}
    env.update(nnUNet_def_n_proc="2", nnUNet_n_proc_DA="1", nnUNet_compile="f")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.prefix, "bin").resolve())
    r = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, f"README block failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "nnUNet_extTrainer is set up for SACL" in r.stdout
    images = sorted((tmp_path / "nnUNet_raw" / "Dataset991_SACLSynthetic" / "imagesTs").glob("*_0000.nii.gz"))
    predictions = sorted((tmp_path / "pred").glob("*.nii.gz"))
    assert len(images) == 2 and [p.name for p in predictions] == [i.name.replace("_0000", "") for i in images]
    for image, prediction in zip(images, predictions):
        img, pred = sitk.ReadImage(str(image)), sitk.ReadImage(str(prediction))
        assert pred.GetSize() == img.GetSize() and np.allclose(pred.GetSpacing(), img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
    fold = (tmp_path / "nnUNet_results" / "Dataset991_SACLSynthetic" / "SACLTrainer_smoke__nnUNetPlans__3d_fullres"
            / "fold_0")
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "checkpoint_sacl_encoder.pth").is_file()
