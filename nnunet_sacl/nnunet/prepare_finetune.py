"""``nnunet-sacl prepare-finetune``: a weights file and a target dataset -> the target ready for
``nnUNetv2_train ... -p PLANS -pretrained_weights FILE``, with nothing but the file from the source.

What it does is nnU-Net's own way across datasets (``nnUNetv2_move_plans_between_datasets``, then
``nnUNetv2_preprocess``) with the plans read from the file instead of the source's ``nnUNet_preprocessed`` folder:
1. reads the file as a received file (``torch.load(weights_only=True)``: no code in it runs) and checks, before
   writing anything, that it holds plans with the configuration, that the target's images have the dimensionality
   of its network, and that its weights fit the network its plans build for the target;
2. copies the target's ``dataset.json`` to ``nnUNet_preprocessed`` and extracts its fingerprint (nnU-Net's
   extractor) when planning has not run;
3. writes the file's plans as plans of the target under their own name (data identifier and image reader as
   ``move_plans_between_datasets`` sets them; per-channel normalisation for the target's channels);
4. writes the weights nnU-Net will load: the file's weights, the stem adapted when the target has another number of
   input channels (``stem_for_channels``), as a new file of plain tensors beside the plans (the received file is
   never changed and never handed to nnU-Net's unsafe loader);
5. preprocesses the target with those plans (nnU-Net's ``preprocess_dataset``) and runs check-weights on the result.
A second call with the same arguments reuses each step that is done.
"""
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from os.path import basename, dirname, isfile, join
from typing import Optional

import torch

from nnunet_sacl.files import sha256_of
from nnunet_sacl.nnunet.nnssl_format import ENTRY, NotAdaptable, adaptation_plan, nnunet_plans, pretrained_keys, \
    read_adaptation_plan


class TransferRefused(ValueError):
    """The file or the target cannot be prepared; nothing has been written."""


# ------------------------------------------------------------------------------------------- the method, pure torch
def stem_for_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weight [out, in, *kernel] for ``channels`` input channels: the weights summed over the
    file's input channels, repeated over the new ones and divided by their number (with one input channel: repeated
    and divided, as nnssl adapts a stem). An image repeated over the new channels gives the first layer the response
    the file's network gives to it."""
    summed = weight.sum(dim=1, keepdim=True)
    return summed.repeat(1, channels, *([1] * (weight.ndim - 2))) / channels


def adapt_input_channels(weights: dict, target_shapes: dict) -> tuple:
    """(weights for the target, keys adapted): keys whose shape differs from the target's in the input channels of a
    convolution that takes the network's input (the stem and the aliases nnU-Net's state dict keeps of it) get
    ``stem_for_channels``; every other tensor is the file's own."""
    from nnunet_sacl.nnunet.weights import first_conv, without_wrappers
    first = first_conv(without_wrappers({k: tuple(v.shape) for k, v in weights.items()}))
    adapted, keys = dict(weights), []
    for key, shape in target_shapes.items():
        w = weights.get(key)
        if w is None or first is None or tuple(w.shape) == tuple(shape) or w.ndim < 4:
            continue
        if w.shape[1] == first[1] and w.shape[0] == shape[0] and tuple(w.shape[2:]) == tuple(shape[2:]):
            adapted[key] = stem_for_channels(w, shape[1])
            keys.append(key)
    return adapted, keys


# --------------------------------------------------------------------------------------------------- the plans
def plans_in_file(weights_file: str, checkpoint: dict) -> dict:
    """The plans the file was trained with: its ``init_args`` (nnU-Net's checkpoints and SACL encoder files), else
    the plans.json nnU-Net writes next to the fold folder; refused (naming what is missing) when neither is there."""
    plans = (checkpoint.get("init_args") or {}).get("plans")
    if checkpoint.get("sacl") is None and checkpoint.get(ENTRY) is not None:    # a checkpoint nnssl wrote
        try:
            return nnunet_plans(weights_file, read_adaptation_plan(weights_file, checkpoint))
        except NotAdaptable as e:
            raise TransferRefused(str(e)) from e
    if plans is None:
        plans_json = join(dirname(dirname(os.path.abspath(weights_file))), "plans.json")
        if isfile(plans_json):
            with open(plans_json) as f:
                plans = json.load(f)
    if not isinstance(plans, dict) or "configurations" not in plans:
        raise TransferRefused(
            f"{weights_file} holds no plans: it has no 'init_args' entry with 'plans' (its entries: "
            f"{', '.join(map(str, checkpoint)) or 'none'}) and there is no plans.json two folders up, where nnU-Net "
            f"keeps it (MODEL/plans.json, MODEL/fold_X/FILE). Ask for the plans it was trained with and put them "
            f"there as plans.json (or follow the manual steps of docs/transfer.md); encoder files of nnunet-sacl 0.1 "
            f"carry no plans, the results folder they were written to has them")
    return plans


def default_plans_name(plans: dict) -> str:
    """``<the file's plans name>_from<source dataset id>``, the name check-weights suggests for moved plans."""
    source = plans.get("dataset_name", "")
    source_id = re.sub(r"^Dataset0*(\d+)_.*", r"\1", source) if re.match(r"^Dataset\d+_", source) else "file"
    return f"{plans.get('plans_name', 'nnUNetPlans')}_from{source_id}"


def source_channel(channel: int, source_channels: int) -> int:
    """The file's channel whose normalisation (and CT statistics) a target channel reuses: its own index when the
    file has it, else the first."""
    return channel if channel < source_channels else 0


def plans_for_target(plans: dict, target_name: str, plans_name: str, target_channels: int,
                     reader_writer: str, own_statistics: Optional[dict] = None) -> dict:
    """The file's plans as plans of the target: what ``nnUNetv2_move_plans_between_datasets`` changes (dataset name,
    plans name, data identifiers, image reader), and per-channel normalisation and CT statistics for the target's
    channels (``source_channel``) when it has another number of channels. A channel the file lacks gets the
    target's own intensity properties (``own_statistics``, its fingerprint's), never another channel's."""
    plans = json.loads(json.dumps(plans))
    source_plans_name = plans.get("plans_name", "")
    source_channels = len(plans.get("foreground_intensity_properties_per_channel") or {"0": None})
    plans.update(dataset_name=target_name, plans_name=plans_name, image_reader_writer=reader_writer)
    for configuration in plans["configurations"].values():
        old = configuration.get("data_identifier")
        if old is not None:          # nnU-Net's rule (move_plans_between_datasets)
            configuration["data_identifier"] = plans_name + old[len(source_plans_name):] \
                if source_plans_name and old.startswith(source_plans_name) else f"{plans_name}_{old}"
        for key in ("normalization_schemes", "use_mask_for_norm"):
            if key in configuration:
                values = configuration[key]
                configuration[key] = [values[source_channel(c, len(values))] for c in range(target_channels)]
    statistics = plans.get("foreground_intensity_properties_per_channel")
    if statistics:
        plans["foreground_intensity_properties_per_channel"] = {
            str(c): statistics[str(c)] if c < source_channels else (own_statistics or {}).get(str(c))
            for c in range(target_channels)}
    elif own_statistics:     # a file without intensity properties (nnssl's, z-scored): the target's own, read by
        plans["foreground_intensity_properties_per_channel"] = {     # nnU-Net's preprocessor for every scheme
            str(c): own_statistics.get(str(c)) for c in range(target_channels)}
    return plans


def file_weights(weights_file: str, checkpoint: dict, manager, configuration: str, target_json: dict) -> dict:
    """The weights to transfer: a file of nnU-Net's (or ours) as it is; of an nnssl checkpoint only the encoder and
    stem (and the decoder's references to them), the rest of the network as nnU-Net initialises it (as nnU-Net's
    PretrainedTrainer loads such a file)."""
    weights = checkpoint["network_weights"]
    if checkpoint.get("sacl") is not None or checkpoint.get(ENTRY) is None:
        return weights
    from nnunet_sacl.nnunet.network import build_nnunet_network
    pretrained = set(pretrained_keys(read_adaptation_plan(weights_file, checkpoint), weights))
    fresh = build_nnunet_network(manager, manager.get_configuration(configuration), target_json, True).state_dict()

    def source(key):
        alias = key[len("decoder."):] if key.startswith("decoder.encoder.") else key
        return weights[alias] if alias in pretrained else fresh[key]
    return {k: source(k) for k in fresh}


# ------------------------------------------------------------------------------------------------------ the target
def target_raw(dataset) -> tuple:
    """(name, raw folder, dataset.json) of the target; refused when it is not in nnUNet_raw."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise TransferRefused(f"target dataset {dataset}: {e}") from e
    raw = join(str(nnUNet_raw), name)
    if not isfile(join(raw, "dataset.json")):
        raise TransferRefused(f"target dataset {name}: no {join(raw, 'dataset.json')} (prepare-finetune preprocesses "
                              f"the target from nnUNet_raw)")
    with open(join(raw, "dataset.json")) as f:
        return name, raw, json.load(f)


def first_image(raw: str, dataset_json: dict) -> str:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    cases = get_filenames_of_train_images_and_targets(raw, dataset_json)
    if not cases:
        raise TransferRefused(f"target {basename(raw)} has no training cases in {raw}")
    return next(iter(cases.values()))["images"][0]


def reader_writer(raw: str, dataset_json: dict):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    return determine_reader_writer_from_dataset_json(dataset_json, first_image(raw, dataset_json),
                                                     allow_nonmatching_filename=True, verbose=False)


def images_are_2d(raw: str, dataset_json: dict, rw) -> bool:
    """nnU-Net's readers give a 2D image one slice and a first spacing of 999 x the largest in-plane one."""
    data, properties = rw().read_images([first_image(raw, dataset_json)])
    spacing = properties["spacing"]
    return data.shape[1] == 1 and spacing[0] >= 999 * max(spacing[1:]) * 0.999


def channel_names(dataset_json: dict) -> dict:
    return dataset_json.get("channel_names") or dataset_json.get("modality") or {}


def preprocessed_complete(folder: str, data_identifier: str, raw: str, dataset_json: dict) -> bool:
    """Every training case preprocessed (its properties file, written last) and its reference copied."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    cases = get_filenames_of_train_images_and_targets(raw, dataset_json)
    ending = dataset_json["file_ending"]
    return all(isfile(join(folder, data_identifier, f"{k}.pkl")) and
               isfile(join(folder, "gt_segmentations", f"{k}{ending}")) for k in cases)


# ----------------------------------------------------------------------------------------------------- the result
@dataclass
class Preparation:
    weights_file: str
    target: str
    target_id: str
    configuration: str
    plans_name: str
    source: str                           # "<dataset>, plans <name>"
    new_weights: str
    fold: str
    steps: list = field(default_factory=list)         # (what, written or reused)
    recorded: list = field(default_factory=list)
    channels: str = ""
    changes: list = field(default_factory=list)
    report: object = None
    device: str = "cuda"                  # where the printed lines run: cpu when torch finds no CUDA device

    def commands(self) -> list:
        p, c = shlex.quote(self.plans_name), self.configuration
        device = "" if self.device == "cuda" else f" -device {self.device}"
        return [f"nnUNetv2_train {self.target_id} {c} {self.fold} -tr nnUNetTrainer -p {p} -pretrained_weights "
                f"{shlex.quote(self.new_weights)}{device}",
                f"nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {self.target_id} -c {c} -f {self.fold} "
                f"-tr nnUNetTrainer -p {p}{device}"]

    def __str__(self) -> str:
        lines = [f"Weights: {self.weights_file}", *(f"  recorded: {line}" for line in self.recorded),
                 f"Target: {self.target}, {self.configuration}, plans {self.plans_name} (the file's: {self.source})",
                 *(f"  {what}" for what in self.steps)]
        if self.channels:
            lines.append(f"Input channels: {self.channels}")
        lines.append(f"What the transfer changes for {self.target}:")
        lines += [f"  - {c}" for c in self.changes]
        lines += ["Check (as nnunet-sacl check-weights):", *(f"  {line}" for line in str(self.report).splitlines())]
        train, predict = self.commands()
        lines += ["Fine-tune (any nnU-Net or SACL trainer with -tr; keep -p in every command), then predict:",
                  f"  {train}", f"  {predict}",
                  "  (nnUNetTrainer runs nnU-Net's 1,000 epochs; for a first look use a short trainer of nnU-Net's "
                  "own in both lines, e.g. -tr nnUNetTrainer_5epochs)"]
        return "\n".join(lines)


def _spacing_text(spacing) -> str:
    return "x".join(f"{s:g}" for s in spacing) + " mm"


def statistics_differ(a: dict, b: dict) -> bool:
    """Intensity properties far apart: means more than half an sd apart, or sds more than 1.5x apart."""
    sd = max(a["std"], b["std"], 1e-8)
    return abs(a["mean"] - b["mean"]) > 0.5 * sd or max(a["std"], b["std"]) > 1.5 * max(min(a["std"], b["std"]), 1e-8)


def transfer_changes(source_config: dict, plans: dict, fingerprint: dict, target_json: dict,
                     source_json: Optional[dict]) -> list:
    """What the file's plans do to the target: spacing and patch size, intensity normalisation per channel."""
    import numpy as np
    spacing = source_config["spacing"]
    transpose = plans.get("transpose_forward", [0, 1, 2])     # the plans' spacing is in their transposed order
    own = np.median(np.array(fingerprint["spacings"]), 0)[transpose][-len(spacing):]
    changes = [f"resampled to the file's spacing {_spacing_text(spacing)} (the target's median: "
               f"{_spacing_text(own)}) and trained on the file's patch size {source_config['patch_size']}"]
    ratios = [max(a / b, b / a) for a, b in zip(spacing, own)]
    if max(ratios) > 2:
        changes.append(f"WARNING: the target's spacing is {max(ratios):.1f}x the file's on an axis: its images are "
                       f"resampled that much, and the encoder learned its features at the file's resolution; the "
                       f"transfer works best between similar spacings")
    source_names = channel_names(source_json or {})
    statistics = plans.get("foreground_intensity_properties_per_channel") or {}
    own_statistics = fingerprint.get("foreground_intensity_properties_per_channel") or {}
    schemes = source_config.get("normalization_schemes") or []
    for c, name in channel_names(target_json).items():
        c = int(c)
        s = source_channel(c, len(schemes)) if schemes else 0
        scheme = schemes[s] if schemes else "?"
        reused = f"the file's channel {s}" + (f" ({source_names.get(str(s))})" if source_names.get(str(s)) else "")
        line = f"channel {c} ({name}): {scheme} as {reused}"
        if scheme == "CTNormalization" and str(c) in statistics:
            st, mine = statistics[str(c)], own_statistics.get(str(c)) or {}
            whose = "the file's channel %d" % c if s == c else "the target's own (its fingerprint; the file has no " \
                "channel %d)" % c
            line += (f", with the CT statistics of {whose}: clipped to {st['percentile_00_5']:g}.."
                     f"{st['percentile_99_5']:g}, mean {st['mean']:g}, sd {st['std']:g}")
            if mine and s == c:
                line += (f" (the target's own: {mine['percentile_00_5']:g}..{mine['percentile_99_5']:g}, mean "
                         f"{mine['mean']:g}, sd {mine['std']:g})")
                if statistics_differ(st, mine):
                    line += "; WARNING: the target's statistics differ much from the file's for this channel"
        else:
            line += " (per image; no statistics carried over)"
        if source_names.get(str(s)) and source_names.get(str(s)) != name:
            line += f"; WARNING: another channel name than the file's ({source_names.get(str(s))}): the transfer " \
                    f"does not adapt to another modality"
        changes.append(line)
    changes.append(f"labels: the target's own ({', '.join(target_json.get('labels', {}))}); the output layer is "
                   f"trained from scratch")
    return changes


# ----------------------------------------------------------------------------------------------------- the command
def prepare_finetune(weights_file: str, dataset, configuration: str, plans_name: Optional[str] = None,
                     fold="0", num_processes: int = None) -> Preparation:
    """The target ready for ``nnUNetv2_train TARGET CONFIGURATION FOLD -p PLANS -pretrained_weights NEW``, from
    ``weights_file`` alone; TransferRefused (or FileNotFoundError / UnreadableCheckpoint for the file) before
    anything is written when it cannot be."""
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sacl.nnunet.weights import check_weights, checked_by_nnunet, mismatched_keys
    from nnunet_sacl.nnunet.checkpoints import read_checkpoint, save_atomically
    from nnunet_sacl.nnunet.encoder_file import plain, recorded
    from nnunet_sacl.nnunet.network import build_nnunet_network
    num_processes = num_processes or default_num_processes

    # ---- everything is checked before anything is written
    checkpoint = read_checkpoint(weights_file, received=True)
    plans = plans_in_file(weights_file, checkpoint)
    init_args = checkpoint.get("init_args") or {}
    if configuration not in plans["configurations"]:
        raise TransferRefused(f"configuration {configuration!r} is not in the plans of {weights_file} (they have "
                              f"{', '.join(plans['configurations'])}; it was trained as "
                              f"{init_args.get('configuration', '?')})")
    target, raw, target_json = target_raw(dataset)
    rw = reader_writer(raw, target_json)
    source_config = PlansManager(plans).get_configuration(configuration)
    if len(source_config.patch_size) == 3 and images_are_2d(raw, target_json, rw):
        raise TransferRefused(f"{target} has 2D images, the file's network is 3D ({configuration}, patch size "
                              f"{source_config.patch_size}): pretrain a 2d configuration for it")
    plans_name = plans_name or default_plans_name(plans)
    target_channels = len(channel_names(target_json))
    folder = join(str(nnUNet_preprocessed), target)
    fingerprint_file = join(folder, "dataset_fingerprint.json")

    def own_statistics():
        if not isfile(fingerprint_file):
            return None
        with open(fingerprint_file) as f:
            return json.load(f).get("foreground_intensity_properties_per_channel")
    new_plans = plans_for_target(plans, target, plans_name, target_channels, rw.__name__, own_statistics())
    manager = PlansManager(new_plans)
    with torch.device("meta"):
        network = build_nnunet_network(manager, manager.get_configuration(configuration), target_json, True)
    target_shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    weights, stem_keys = adapt_input_channels(file_weights(weights_file, checkpoint, manager, configuration,
                                                           target_json), target_shapes)
    bad = mismatched_keys({k: tuple(v.shape) for k, v in weights.items()}, target_shapes)
    if bad:
        first = bad[0]
        raise TransferRefused(
            f"the weights of {weights_file} do not fit the network its own plans build for {configuration} "
            f"({len(bad)} keys, e.g. {first.key}: file {first.file_shape}, network {first.target_shape}); it was "
            f"trained as {init_args.get('configuration', '?')}: prepare that configuration")
    plans_file = join(folder, f"{plans_name}.json")

    def refuse_other_plans():
        if isfile(plans_file):
            with open(plans_file) as f:
                there = json.load(f)
            ours = new_plans
            if not isfile(fingerprint_file):     # the new channels' statistics are not known yet: all but them
                def known(p):
                    p = dict(p)
                    stats = p.get("foreground_intensity_properties_per_channel")
                    if isinstance(stats, dict):
                        p["foreground_intensity_properties_per_channel"] = {
                            k: v for k, v in stats.items() if str(k).isdigit() and int(k) < len(
                                plans.get("foreground_intensity_properties_per_channel") or {"0": None})}
                    return p
                there, ours = known(there), known(ours)
            if there != ours:
                raise TransferRefused(f"{plans_file} exists and holds other plans than those of "
                                      f"{weights_file}: choose another name with -p")
    refuse_other_plans()

    # ---- writing, each step reused when done
    steps = []
    os.makedirs(folder, exist_ok=True)
    if not isfile(join(folder, "dataset.json")):
        shutil.copy(join(raw, "dataset.json"), join(folder, "dataset.json"))    # what nnU-Net's planning copies
        steps.append(f"dataset.json copied from {raw}")
    if not isfile(fingerprint_file):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
        extract_fingerprint_dataset(int(target[7:10]), num_processes=num_processes, clean=False, verbose=False,
                                    show_progress_bar=False)
        steps.append("dataset_fingerprint.json: the target's fingerprint (nnU-Net's extractor)")
    else:
        steps.append("dataset_fingerprint.json: there already")
    # a channel the file lacks is normalised with the target's own statistics, known from here on
    new_plans = plans_for_target(plans, target, plans_name, target_channels, rw.__name__, own_statistics())
    manager = PlansManager(new_plans)
    refuse_other_plans()
    new_plans_written = not isfile(plans_file)
    if new_plans_written:
        with open(plans_file, "w") as f:
            json.dump(new_plans, f, indent=4)
        steps.append(f"{plans_name}.json: the file's plans as plans of {target}")
    else:
        steps.append(f"{plans_name}.json: there already")
    source_hash = sha256_of(weights_file)
    new_weights = join(folder, f"{plans_name}__{configuration}__weights_{source_hash[:12]}.pth")
    if not isfile(new_weights):
        save_atomically({
            'network_weights': {k: v.detach().clone().contiguous() for k, v in weights.items()},
            'trainer_name': checkpoint.get('trainer_name'),
            # the record of the file it comes from (its plans, dataset, settings), and what was done to it
            'init_args': plain({**{k: v for k, v in init_args.items() if k != 'device'}, 'plans': plans}),
            # what nnU-Net's own path for pretrained checkpoints reads (nnssl_format), for the target's network
            ENTRY: adaptation_plan(new_plans, configuration, network),
            'sacl': plain({**(checkpoint.get('sacl') or {}), 'prepared_for': {
                'dataset': target, 'plans_name': plans_name, 'configuration': configuration,
                'from_file': os.path.abspath(weights_file), 'sha256': source_hash,
                'input_channels_adapted': stem_keys, 'input_channels': target_channels}}),
        }, new_weights)
        steps.append(f"weights for nnU-Net: {new_weights} (tensors and plain values only)")
    else:
        steps.append(f"weights for nnU-Net: {new_weights}, there already")
    data_identifier = manager.get_configuration(configuration).data_identifier
    if new_plans_written or not preprocessed_complete(folder, data_identifier, raw, target_json):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
        preprocess_dataset(int(target[7:10]), plans_name, (configuration,), [num_processes], verbose=False,
                           show_progress_bar=False)
        steps.append(f"{data_identifier}/: the target preprocessed with these plans (nnU-Net's preprocessor)")
    else:
        steps.append(f"{data_identifier}/: preprocessed already")

    source_channels = len(channel_names(init_args.get("dataset_json") or {})) or \
        len(plans.get("foreground_intensity_properties_per_channel") or {"0": None})
    channels = ""
    if stem_keys:
        channels = (f"the file's network takes {source_channels}, {target} has {target_channels}: the stem's weights "
                    f"({', '.join(k for k in stem_keys if checked_by_nnunet(k))}) are summed over the file's "
                    f"{source_channels} channels" + ("" if target_channels == 1 else
                    f", repeated over the {target_channels} channels and divided by {target_channels}") +
                    f" in the new weights file; every other weight is the file's own, and "
                    f"{basename(weights_file)} itself is unchanged")
    with open(fingerprint_file) as f:
        fingerprint = json.load(f)
    changes = transfer_changes({"spacing": source_config.spacing, "patch_size": source_config.patch_size,
                                "normalization_schemes": source_config.normalization_schemes}, new_plans, fingerprint,
                               target_json, init_args.get("dataset_json"))
    report = check_weights(new_weights, target, configuration, plans_name)
    if not report.fits:
        raise RuntimeError(f"the prepared weights do not fit (a bug):\n{report}")
    return Preparation(weights_file, target, str(int(target[7:10])), configuration, plans_name,
                       f"{plans.get('dataset_name', '?')}, plans {plans.get('plans_name', '?')}", new_weights,
                       str(fold), steps, recorded(checkpoint), channels, changes, report,
                       "cuda" if torch.cuda.is_available() else "cpu")
