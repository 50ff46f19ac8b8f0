"""A preprocessed dataset's plans, read and checked in one place for every command that starts from them
(``nnunet-sacl train``, ``study`` and ``check-weights``): the plans file exists and holds the configuration, else an
error that names the file and the choices."""
import json
import os
from os.path import basename, isfile, join

NOT_PLANS = ("dataset.json", "dataset_fingerprint.json", "splits_final.json")


def available_plans(folder) -> list:
    """Plans identifiers in a preprocessed dataset folder (its json files with 'configurations')."""
    names = []
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if f.endswith(".json") and f not in NOT_PLANS:
            try:
                with open(join(folder, f)) as fh:
                    if "configurations" in json.load(fh):
                        names.append(f[:-len(".json")])
            except (OSError, ValueError):
                pass
    return names


def read_plans(preprocessed_dataset_folder, plans_identifier: str, configuration: str) -> tuple:
    """(plans file, plans dict) of ``plans_identifier`` in a dataset's nnUNet_preprocessed folder, which must hold
    ``configuration``. FileNotFoundError: no such plans file (naming the dataset's plans); ValueError: no such
    configuration (naming the plans' configurations)."""
    folder = str(preprocessed_dataset_folder)
    dataset = basename(folder.rstrip(os.sep))
    plans_file = join(folder, f"{plans_identifier}.json")
    if not isfile(plans_file):
        raise FileNotFoundError(
            f"plans {plans_identifier!r} of {dataset}: no plans file {plans_file} (its plans: "
            f"{', '.join(available_plans(folder)) or 'none'}; plan with nnUNetv2_plan_and_preprocess -d {dataset}, "
            f"or copy another dataset's plans with nnUNetv2_move_plans_between_datasets)")
    with open(plans_file) as f:
        plans = json.load(f)
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise ValueError(f"configuration {configuration!r} is not in {plans_file} (it has "
                         f"{', '.join(configurations) or 'none'})")
    return plans_file, plans
