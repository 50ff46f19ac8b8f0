"""nnunet-sacl: Semantic-Aware Contrastive Learning (SACL) for nnU-Net v2.

One folder per role: ``method`` (the math in pure torch, nothing from nnU-Net), ``nnunet`` (the thin nnU-Net glue:
trainers), ``dataset_conversion`` (data in and out of nnU-Net's formats), ``analysis`` (evaluation, embeddings,
studies); the command line at the top level. ``trainers/`` in the repository is the folder that
``nnUNet_extTrainer`` points at.
"""
from pathlib import Path

__version__ = "0.1.0"


def trainers_folder() -> Path:
    """The folder of trainer modules to put in ``nnUNet_extTrainer``.

    In a source checkout (``pip install -e .``) that is ``<repo>/trainers``; a regular install ships the same
    modules as ``nnunet_sacl/ext_trainers``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "trainers", here / "ext_trainers"):
        if (candidate / "sacl_trainers.py").is_file():
            return candidate
    raise FileNotFoundError(f"nnunet-sacl's trainer folder was not found next to {here}; reinstall the package")
