"""README's "Using it on your dataset" runs as written on a CPU machine: the bash block is read from README.md (so the
document and the test cannot drift apart) and run by bash in an empty folder, with two substitutions: the CPU smoke
trainer for SACLTrainer (3 + 2 short epochs instead of 100 + 1000), and 2 processes for nnU-Net's planning (its
default starts 8 interpreters twice on a 2-core machine)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.helpers import README_PLANNING, README_SUBSTITUTIONS as SUBSTITUTIONS, readme_block, readme_model

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier


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
    assert smoke.count(README_PLANNING) == 1          # the planning line, and only it


@pytest.mark.slow
def test_readme_section_runs_as_written(readme_run):
    if not readme_run["activated"]:
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix} has no bin/activate)")
    fold = Path(readme_model(readme_run))               # the block ran to the end
    folder, r = readme_run["folder"], readme_run["result"]
    assert "nnUNet_extTrainer is set up for SACL" in r.stdout
    images = sorted((folder / "nnUNet_raw" / "Dataset991_SACLSynthetic" / "imagesTs").glob("*_0000.nii.gz"))
    predictions = sorted((folder / "pred").glob("*.nii.gz"))
    assert len(images) == 2 and [p.name for p in predictions] == [i.name.replace("_0000", "") for i in images]
    for image, prediction in zip(images, predictions):
        img, pred = sitk.ReadImage(str(image)), sitk.ReadImage(str(prediction))
        assert pred.GetSize() == img.GetSize() and np.allclose(pred.GetSpacing(), img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "checkpoint_sacl_encoder.pth").is_file()
