"""A folder of unlabelled images + a trained nnU-Net model -> a new nnU-Net raw dataset whose labels are the model's
predictions (pseudo-labels), for SACL pretraining over a pool larger than the labelled set.

The predictions come from nnU-Net's own ``nnUNetPredictor`` with ``nnUNetv2_predict``'s defaults (step 0.5,
Gaussian weighting, mirroring), so each label is voxel-equal to ``nnUNetv2_predict`` of the same model and folds.
The dataset.json records where the labels came from (``sacl_pseudo_labels``: model folder, dataset, trainer, plans,
configuration, folds, checkpoint, threshold, date, product version); segmentation trainers refuse such a dataset
unless asked for (:mod:`nnunet_sacl.nnunet.partial_labels`).

With ``threshold``, a voxel whose highest softmax probability is below it gets the ignore label (one above the
highest organ, declared ``"ignore"`` in dataset.json as nnU-Net expects); SACL's pooling leaves those voxels out.

Resumable: a case whose label is in ``labelsTr`` is skipped; a label reaches ``labelsTr`` only complete (predicted
into a work folder, then renamed), so an interrupted run never leaves a partial label. A second run with another
model, folds or threshold is refused.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

from nnunet_sacl.dataset_conversion.converters import geometry, resolve_raw_folder
from nnunet_sacl.nnunet.partial_labels import PSEUDO_KEY

IMAGE_SUFFIX = "_0000.nii.gz"
WORK = ".pseudo-label-work"


class PseudoLabelError(ValueError):
    """A pseudo-labelling run that cannot go ahead (no model, no images, a clash with an earlier run)."""


def _model_folder(dataset, trainer: str, plans: str, configuration: str) -> Path:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise PseudoLabelError(" ".join(str(e).split())) from None
    folder = Path(get_output_folder(name, trainer, plans, configuration))
    if not (folder / "plans.json").is_file():
        raise PseudoLabelError(f"no trained model in {folder} (nnUNetv2_train {dataset} {configuration} FOLD "
                               f"-tr {trainer} -p {plans} writes it)")
    return folder


def _images(input_folder: Path) -> List[Path]:
    if not input_folder.is_dir():
        raise PseudoLabelError(f"image folder {input_folder} does not exist")
    names = sorted(p for p in input_folder.iterdir() if not p.name.startswith("."))
    bad = [p for p in names if not p.name.endswith(IMAGE_SUFFIX)]
    if bad:
        raise PseudoLabelError(f"{bad[0]} is not a single-channel nnU-Net image (CASE{IMAGE_SUFFIX})")
    if not names:
        raise PseudoLabelError(f"{input_folder} holds no *{IMAGE_SUFFIX} images")
    for p in names:
        geometry(p)   # readable, or an error naming the file
    return names


def pseudo_label(input_folder, dataset, configuration: str, trainer: str, folds: Sequence, to_id: int,
                 plans: str = "nnUNetPlans", name: str = "PseudoLabelled", threshold: Optional[float] = None,
                 checkpoint: str = "checkpoint_final.pth", device: str = "cpu", raw_folder=None,
                 progress=print) -> Path:
    """Writes (or completes) ``DatasetXXX_NAME`` in nnUNet_raw; returns it."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    from nnunet_sacl import __version__

    if threshold is not None and not 0 < threshold < 1:
        raise PseudoLabelError(f"threshold {threshold}: a softmax probability strictly between 0 and 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise PseudoLabelError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    folds = [f if f == "all" else int(f) for f in folds]
    model = _model_folder(dataset, trainer, plans, configuration)
    for f in folds:
        if not (model / f"fold_{f}" / checkpoint).is_file():
            raise PseudoLabelError(f"{model / f'fold_{f}' / checkpoint} is missing (fold {f} not trained?)")
    images = _images(Path(input_folder))
    source_json = json.loads((model / "dataset.json").read_text())
    labels = dict(source_json["labels"])
    if "ignore" in labels:
        raise PseudoLabelError(f"{model}/dataset.json has an ignore label; pseudo-label a model without one")
    if threshold is not None:
        labels["ignore"] = max(int(v) for v in labels.values()) + 1
    record = {"model": str(model), "dataset": source_json.get("name", str(dataset)), "trainer": trainer,
              "plans": plans, "configuration": configuration, "folds": folds, "checkpoint": checkpoint,
              "threshold": threshold}

    raw = resolve_raw_folder(raw_folder)
    target = raw / f"Dataset{int(to_id):03d}_{name}"
    taken = [p for p in raw.glob(f"Dataset{int(to_id):03d}_*") if p != target] if raw.is_dir() else []
    if taken:
        raise FileExistsError(f"dataset id {to_id} is taken in {raw} by {taken[0].name}")
    if target.exists():
        earlier = json.loads((target / "dataset.json").read_text()).get(PSEUDO_KEY) \
            if (target / "dataset.json").is_file() else None
        same = earlier and {k: earlier.get(k) for k in record} == record
        if not same:
            raise FileExistsError(f"{target} exists and is not a pseudo-labelling of {model} folds {folds} "
                                  f"threshold {threshold}; remove it or choose another id")
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    if not (target / "dataset.json").is_file():    # the record first, so that an interrupted run can resume
        generate_dataset_json(str(target), source_json["channel_names"], labels, len(images), ".nii.gz",
                              dataset_name=target.name,
                              description=f"pseudo-labels of {len(images)} images from {model.name} folds {folds}",
                              converted_by=f"nnunet-sacl pseudo-label from {input_folder}",
                              **{PSEUDO_KEY: dict(record, date=datetime.datetime.now(datetime.timezone.utc)
                                                  .isoformat(timespec="seconds"), version=__version__,
                                                  images=str(Path(input_folder).resolve()))})
    cases = [p.name[:-len(IMAGE_SUFFIX)] for p in images]
    todo = [(c, p) for c, p in zip(cases, images) if not (target / "labelsTr" / f"{c}.nii.gz").is_file()]
    progress(f"{len(cases) - len(todo)} of {len(cases)} cases labelled already; {len(todo)} to predict")
    if todo:
        work = target / WORK
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=device != "cpu", device=torch.device(device),
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model), tuple(folds), checkpoint)
        chunk = 16   # labels reach labelsTr chunk by chunk, so an interrupted run keeps what it finished
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            predictor.predict_from_files([[str(p)] for _, p in part], [str(work / c) for c, _ in part],
                                         save_probabilities=threshold is not None, overwrite=True,
                                         num_processes_preprocessing=1, num_processes_segmentation_export=1)
            for case, image in part:
                seg_file = work / f"{case}.nii.gz"
                if threshold is not None:
                    seg = sitk.ReadImage(str(seg_file))
                    array = sitk.GetArrayFromImage(seg)
                    probabilities = np.load(work / f"{case}.npz")["probabilities"]
                    array[probabilities.max(0) < threshold] = labels["ignore"]
                    out = sitk.GetImageFromArray(array)
                    out.CopyInformation(seg)
                    sitk.WriteImage(out, str(seg_file), True)
                if not (target / "imagesTr" / image.name).is_file():
                    shutil.copyfile(image, target / "imagesTr" / f".{image.name}")
                    os.replace(target / "imagesTr" / f".{image.name}", target / "imagesTr" / image.name)
                os.replace(seg_file, target / "labelsTr" / f"{case}.nii.gz")
            progress(f"{min(start + chunk, len(todo))} of {len(todo)} predicted")
        shutil.rmtree(work, ignore_errors=True)
    return target
