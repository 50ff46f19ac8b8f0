"""Labels that segmentation training must not take as ground truth, said so in a dataset's dataset.json (which
nnU-Net copies into nnUNet_preprocessed with the plans):

- partial labels: a merged dataset (``nnunet-sacl merge-datasets``) whose cases do not all annotate every organ
  (``sacl_partial_labels``). An organ that a case does not annotate is background there, so segmentation training
  on it would learn to call that organ background;
- pseudo-labels: a dataset written by ``nnunet-sacl pseudo-label`` (``sacl_pseudo_labels``), whose labels are a
  model's predictions. Segmentation training on it is self-training, a choice to make on purpose: set
  ``SACL_ALLOW_PSEUDO_LABELS=1``.

Contrastive pretraining is safe on both (background never gives an embedding; a pseudo-label only chooses which
voxels are pooled)."""

import os
import sys

PARTIAL_KEY = "sacl_partial_labels"
PSEUDO_KEY = "sacl_pseudo_labels"
ALLOW_PSEUDO_ENV = "SACL_ALLOW_PSEUDO_LABELS"


def _pseudo_labels_allowed() -> bool:
    return os.environ.get(ALLOW_PSEUDO_ENV, "").strip().lower() in ("1", "true", "yes")


def refuse_partial_labels(dataset_json: dict, dataset_name: str, trainer_name: str, announce: bool = False) -> None:
    """Raises for segmentation training on a dataset with partial labels, or with pseudo-labels unless
    ``SACL_ALLOW_PSEUDO_LABELS=1``, saying what to run instead. ``announce`` (a trainer being built, e.g. by
    nnUNetv2_train): the refusal is also printed on its own line first, since the exception reaches the user as the
    last line of a long traceback."""
    message = None
    if dataset_json.get(PARTIAL_KEY):
        message = (
            f"{trainer_name}: {dataset_name} has partial labels ({PARTIAL_KEY} in its dataset.json: it merges "
            f"datasets that annotate different organs, and an organ a case does not annotate is background in that "
            f"case), so segmentation training on it would learn to miss organs. Pretrain on it with "
            f"-tr SACLPretrainer, then fine-tune on a fully labelled dataset with nnUNetv2_train ... "
            f"-pretrained_weights FOLD_FOLDER/checkpoint_sacl_encoder.pth (docs/pretraining.md).")
    elif dataset_json.get(PSEUDO_KEY) and not _pseudo_labels_allowed():
        source = dataset_json[PSEUDO_KEY]
        model = source.get("model", "a model") if isinstance(source, dict) else "a model"
        message = (
            f"{trainer_name}: {dataset_name} has pseudo-labels ({PSEUDO_KEY} in its dataset.json: its labels are "
            f"predictions of {model}), so segmentation training on it would learn that model's mistakes. Pretrain "
            f"on it with -tr SACLPretrainer and fine-tune on the labelled scans (docs/flare22.md); to self-train on "
            f"it on purpose, set {ALLOW_PSEUDO_ENV}=1.")
    if message:
        if announce:
            print(f"error: {message}", file=sys.stderr, flush=True)
        raise RuntimeError(message)
