"""Study regimes and arms that go through nnU-Net's own files, so that ``nnUNetv2_train`` (and ``--c``, the printed
and sbatch lines) reproduce them without this package:

- **Fewer training cases (``--train-cases K``)**: nnU-Net reads one ``splits_final.json`` per dataset, so each K
  gets a derived dataset in ``nnUNet_preprocessed``: the original's dataset.json, fingerprint and plans (with the
  derived ``dataset_name``), its data folders and ``gt_segmentations`` as symbolic links (nothing copied, nothing
  preprocessed again), and its own ``splits_final.json``: every fold keeps its validation cases and trains on K of
  its training cases. The K cases are the first K of a seeded permutation of the fold's training cases, which
  depends on the seed and the fold only, so the subsets are nested (K=1 within K=2 ...) and, being one file of one
  dataset, the same for every trainer. The derived dataset gets a free three-digit id (from 999 down, one whose
  ``DatasetXXX`` prefix no folder in nnUNet_raw, nnUNet_preprocessed or nnUNet_results uses, because nnU-Net finds
  a dataset by that prefix) and is found again by its ``sacl_subset.json`` (source, K, seed).
- **Arms that start from a weights file (``-tr TRAINER@LABEL --weights LABEL=FILE``)**: trained with
  ``nnUNetv2_train -pretrained_weights FILE``. nnU-Net names the output folder ``TRAINER__PLANS__CONFIG``, so the arm
  gets its own plans identifier ``PLANS_weights_LABEL``: a copy of the plans with that ``plans_name`` and the same
  ``data_identifier`` (the same preprocessed data), so two arms of one trainer never share a folder.
- **Seeds (``--seeds S ...``)**: every arm x fold runs once per seed, with ``$SACL_SEED`` = S; each seed's runs get
  the plans identifier ``PLANS_seedS`` (after the arm's own: ``PLANS_weights_LABEL_seedS``), again a copy of the
  plans with the same data, so that each seed's models have their own folders and ``nnUNetv2_predict -p`` finds them.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

SUBSET_MARKER = "sacl_subset.json"
LABEL = re.compile(r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$")


class RegimeError(Exception):
    """A bad regime or arm, named (the study turns it into its own refusal)."""


@dataclass(frozen=True)
class Arm:
    name: str              # as given to -tr: TRAINER or TRAINER@LABEL
    trainer: str           # nnU-Net trainer class
    label: str = None      # weights label
    weights: str = None    # weights file; may hold {fold}

    def plans(self, base: str) -> str:
        return base if self.label is None else weights_plans_identifier(base, self.label)

    def weights_file(self, fold: int):
        return None if self.weights is None else self.weights.format(fold=fold)


def weights_plans_identifier(plans: str, label: str) -> str:
    return f"{plans}_weights_{label}"


def parse_weights(items) -> dict:
    weights = {}
    for item in items or []:
        label, sep, file = item.partition("=")
        if not sep or not file or not LABEL.match(label):
            raise RegimeError(f"--weights {item}: give LABEL=FILE (LABEL: letters and digits, single - or _ "
                              f"between them)")
        if label in weights:
            raise RegimeError(f"--weights {label}: given twice")
        weights[label] = file
    return weights


def parse_arms(names, weights: dict) -> list:
    arms = []
    for name in names:
        trainer, sep, label = name.partition("@")
        if not sep:
            arms.append(Arm(name, name))
            continue
        if label not in weights:
            raise RegimeError(f"-tr {name}: no --weights {label}=FILE")
        arms.append(Arm(name, trainer, label, weights[label]))
    unused = set(weights) - {a.label for a in arms}
    if unused:
        raise RegimeError(f"--weights {', '.join(sorted(unused))}: no -tr TRAINER@LABEL uses it")
    return arms


def check_weights_files(arms, folds) -> None:
    for arm in arms:
        for fold in folds:
            if arm.weights is not None and not Path(arm.weights_file(fold)).is_file():
                raise RegimeError(f"-tr {arm.name}: weights file {arm.weights_file(fold)} (fold {fold}) does not exist")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def write_weights_plans(preprocessed: Path, base_plans: str, arms) -> None:
    """The arm's plans file: the base plans under the arm's plans identifier (same data)."""
    plans = json.loads((preprocessed / f"{base_plans}.json").read_text())
    for label in sorted({a.label for a in arms if a.label is not None}):
        identifier = weights_plans_identifier(base_plans, label)
        _write_if_changed(preprocessed / f"{identifier}.json", json.dumps(dict(plans, plans_name=identifier), indent=4))


def parse_seeds(values):
    """``--seeds`` values: whole numbers from 0 to 2**32 - 1, each once; None (no --seeds) stays None."""
    if values is None:
        return None
    seeds = []
    for v in values:
        try:
            seed = int(v)
        except (TypeError, ValueError):
            seed = -1
        if not 0 <= seed < 2 ** 32 or str(v).strip() != str(seed):
            raise RegimeError(f"--seeds {v}: give whole numbers from 0 to 2**32 - 1")
        if seed in seeds:
            raise RegimeError(f"--seeds {v}: given twice")
        seeds.append(seed)
    if not seeds:
        raise RegimeError("--seeds: give at least one seed")
    return seeds


def seed_plans_identifier(plans: str, seed) -> str:
    return plans if seed is None else f"{plans}_seed{seed}"


def write_seed_plans(preprocessed: Path, base_plans: str, arms, seeds) -> None:
    """Each seed's plans file: the arm's plans (the base or its weights copy) under ``..._seedS`` (same data)."""
    plans = json.loads((preprocessed / f"{base_plans}.json").read_text())
    for arm_plans in sorted({a.plans(base_plans) for a in arms} | {base_plans}):
        for seed in seeds or []:
            identifier = seed_plans_identifier(arm_plans, seed)
            _write_if_changed(preprocessed / f"{identifier}.json",
                              json.dumps(dict(plans, plans_name=identifier), indent=4))


# ---------------------------------------------------------------- fewer training cases

def parse_train_cases(values) -> list:
    """``--train-cases`` values: positive integers and 'all', each once, in the given order."""
    ks = []
    for v in values:
        if v == "all":
            k = "all"
        else:
            try:
                k = int(v)
            except ValueError:
                raise RegimeError(f"--train-cases {v}: give positive integers or 'all'") from None
            if k < 1:
                raise RegimeError(f"--train-cases {v}: give positive integers or 'all'")
        if k in ks:
            raise RegimeError(f"--train-cases {v}: given twice")
        ks.append(k)
    return ks


def source_splits(preprocessed: Path, plans: str, configuration: str) -> list:
    """The dataset's splits_final.json, or the split nnU-Net's trainer would create (its seed, 5 folds)."""
    splits = preprocessed / "splits_final.json"
    if splits.is_file():
        return json.loads(splits.read_text())
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    data = preprocessed / PlansManager(str(preprocessed / f"{plans}.json")).get_configuration(configuration).data_identifier
    keys = sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))
    return generate_crossval_split(keys, seed=12345, n_splits=5)


def subset_order(train_cases, fold: int, seed: int) -> list:
    """The fold's training cases in a seeded order that depends on (seed, fold) only: K cases = the first K."""
    import numpy as np
    cases = sorted(train_cases)
    return [cases[i] for i in np.random.default_rng([seed, fold]).permutation(len(cases))]


def subset_splits(splits: list, k: int, seed: int) -> list:
    return [{"train": sorted(subset_order(s["train"], fold, seed)[:k]), "val": list(s["val"])}
            for fold, s in enumerate(splits)]


def _dataset_folders() -> list:
    import os
    folders = []
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        root = os.environ.get(var)
        if root and Path(root).is_dir():
            folders += [p.name for p in Path(root).iterdir()]
    return folders


def _free_dataset_id() -> int:
    names = _dataset_folders()
    for i in range(999, 0, -1):
        if not any(n.startswith("Dataset%03d" % i) for n in names):
            return i
    raise RegimeError("no free three-digit dataset id for a --train-cases dataset")


def find_subset_dataset(root: Path, marker: dict):
    for folder in sorted(root.iterdir()):
        file = folder / SUBSET_MARKER
        if file.is_file():
            found = json.loads(file.read_text())
            if {k: found.get(k) for k in marker} == marker:
                return folder
    return None


def subset_dataset(preprocessed: Path, dataset: str, plans: str, configuration: str, folds, k: int,
                   seed: int) -> Path:
    """The derived dataset of K training cases per fold (made or brought up to date); its preprocessed folder."""
    splits = source_splits(preprocessed, plans, configuration)
    short = [f for f in folds if len(splits[f]["train"]) < k]
    if short:
        raise RegimeError(f"--train-cases {k}: fold {short[0]} of {dataset} has only "
                          f"{len(splits[short[0]]['train'])} training cases")
    subset = subset_splits(splits, k, seed)
    root = preprocessed.parent
    marker = {"source": dataset, "train_cases": k, "seed": seed}
    folder = find_subset_dataset(root, marker)
    if folder is None:
        rest = dataset.split("_", 1)[1] if "_" in dataset else dataset
        folder = root / f"Dataset{_free_dataset_id():03d}_{rest}_{dataset.split('_')[0][7:]}K{k}"
        folder.mkdir()
    derived_splits = folder / "splits_final.json"
    if derived_splits.is_file() and json.loads(derived_splits.read_text()) != subset:
        raise RegimeError(f"{derived_splits} differs from the {k}-case subset of {preprocessed / 'splits_final.json'} "
                          f"(were the source's splits changed?); remove {folder} and its results to derive it again")
    for item in preprocessed.iterdir():
        target = folder / item.name
        if item.is_dir():
            if not target.exists():
                target.symlink_to(item.resolve(), target_is_directory=True)
        elif item.name in ("dataset.json", "dataset_fingerprint.json"):
            _write_if_changed(target, item.read_text())
        elif item.suffix == ".json" and item.name not in ("splits_final.json", SUBSET_MARKER):
            try:
                content = json.loads(item.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(content, dict) and "plans_name" in content and "dataset_name" in content:
                _write_if_changed(target, json.dumps(dict(content, dataset_name=folder.name), indent=4))
    _write_if_changed(derived_splits, json.dumps(subset, indent=4))
    _write_if_changed(folder / SUBSET_MARKER, json.dumps(dict(marker, splits_of=str(preprocessed / "splits_final.json")),
                                                         indent=4))
    return folder
