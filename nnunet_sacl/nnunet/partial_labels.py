"""Partial labels: a merged dataset (``nnunet-sacl merge-datasets``) whose cases do not all annotate every organ
says so in its dataset.json (``sacl_partial_labels``), which nnU-Net copies into nnUNet_preprocessed with the
plans. An organ that a case does not annotate is background there, so segmentation training on it would learn to
call that organ background; contrastive pretraining is safe (background never gives an embedding)."""

import sys

PARTIAL_KEY = "sacl_partial_labels"


def refuse_partial_labels(dataset_json: dict, dataset_name: str, trainer_name: str, announce: bool = False) -> None:
    """Raises for segmentation training on a dataset with partial labels, saying what to run instead. ``announce``
    (a trainer being built, e.g. by nnUNetv2_train): the refusal is also printed on its own line first, since the
    exception reaches the user as the last line of a long traceback."""
    if dataset_json.get(PARTIAL_KEY):
        message = (
            f"{trainer_name}: {dataset_name} has partial labels ({PARTIAL_KEY} in its dataset.json: it merges "
            f"datasets that annotate different organs, and an organ a case does not annotate is background in that "
            f"case), so segmentation training on it would learn to miss organs. Pretrain on it with "
            f"-tr SACLPretrainer, then fine-tune on a fully labelled dataset with nnUNetv2_train ... "
            f"-pretrained_weights FOLD_FOLDER/checkpoint_sacl_encoder.pth (docs/pretraining.md).")
        if announce:
            print(f"error: {message}", file=sys.stderr, flush=True)
        raise RuntimeError(message)
