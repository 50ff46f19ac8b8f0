"""``nnunet-sacl check-weights``: will ``nnUNetv2_train ... -pretrained_weights FILE`` accept FILE for dataset B?

nnU-Net's loader (nnunetv2/run/load_pretrained_weights.py) only says so after the trainer has started, with an
assertion on the first bad key. This builds the network nnU-Net would build for B, applies the loader's own checks
to every key and says which ones fail and why (other plans, input channels, 2d vs 3d, architecture class).
"""
import os
import re
from dataclasses import dataclass, field
from os.path import basename, dirname, isfile, join
from typing import Optional

# nnU-Net's loader does not transfer (and does not check) keys containing these
SKIPPED_BY_NNUNET = ('.seg_layers.',)
FILE_PREFIXES = ('module.', '_orig_mod.')     # DDP / torch.compile wrappers, which nnU-Net's loader does not strip


@dataclass
class Mismatch:
    """One key that nnU-Net's loader would refuse: missing from the file (file_shape None) or of another shape."""
    key: str
    file_shape: Optional[tuple]
    target_shape: tuple


@dataclass
class Architecture:
    """What the state dict (and, when known, the plans) say about a network, as far as weight shapes go."""
    class_name: str
    dims: Optional[int]                       # 2 or 3 (conv weight rank - 2)
    input_channels: Optional[int]
    features_per_stage: list
    kernel_sizes: list
    plans: Optional[dict] = None              # the configuration's arch_kwargs, when the plans are known
    dataset_name: str = ""                    # where the plans come from, when known
    plans_name: str = ""
    configuration: str = ""

    @property
    def source(self) -> str:
        return f"{self.dataset_name}, plans {self.plans_name}, {self.configuration}" if self.dataset_name else ""

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)


@dataclass
class WeightsReport:
    weights_file: str
    target: Architecture
    file: Architecture
    checked_keys: int
    mismatches: list = field(default_factory=list)
    causes: list = field(default_factory=list)
    fix: str = ""
    recorded: list = field(default_factory=list)    # what the file records about itself (encoder_file.recorded)

    @property
    def fits(self) -> bool:
        return not self.mismatches

    def __str__(self) -> str:
        lines = [f"Weights: {self.weights_file}",
                 *(f"  recorded: {line}" for line in self.recorded),
                 f"  file:   {describe(self.file)}",
                 f"  target: {describe(self.target)}"]
        if self.fits:
            lines.append(f"YES: the weights fit. All {self.checked_keys} keys that nnU-Net's -pretrained_weights "
                         f"checks are in the file with the same shape (keys with '.seg_layers.' are skipped, as "
                         f"nnU-Net does).")
            return "\n".join(lines)
        lines.append(f"NO: the weights do not fit. {len(self.mismatches)} of the {self.checked_keys} keys that "
                     f"nnU-Net's -pretrained_weights checks are missing or of another shape (file -> target):")
        lines += [f"  {m.key}: {shape_text(m.file_shape)} -> {shape_text(m.target_shape)}" for m in self.mismatches]
        lines.append("Likely cause:")
        lines += [f"  - {c}" for c in self.causes]
        if self.fix:
            lines.append(f"Fix: {self.fix}")
        return "\n".join(lines)


def shape_text(shape: Optional[tuple]) -> str:
    return "missing" if shape is None else "(" + ", ".join(str(s) for s in shape) + ")"


def describe(arch: Architecture) -> str:
    dims = f"{arch.dims}d" if arch.dims else "?d"
    return (f"{arch.source + ': ' if arch.source else ''}{arch.class_name}, {dims}, {arch.input_channels} input "
            f"channel(s), {arch.n_stages} stages, features {arch.features_per_stage}")


# ------------------------------------------------------------------------------------------------ target network
def preprocessed_folder(dataset) -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    return join(str(nnUNet_preprocessed), maybe_convert_to_dataset_name(dataset))


def load_target_plans(dataset, configuration: str, plans_identifier: str):
    """PlansManager, ConfigurationManager and dataset.json of B, with errors that name the file and the choices
    (``nnunet.plans.read_plans``)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sacl.nnunet.plans import read_plans
    folder = preprocessed_folder(dataset)
    _, plans = read_plans(folder, plans_identifier, configuration)
    dataset_json_file = join(folder, "dataset.json")
    if not isfile(dataset_json_file):
        raise FileNotFoundError(f"No {dataset_json_file}: nnU-Net's planning copies it there; run "
                                f"nnUNetv2_plan_and_preprocess -d {basename(folder)} --no_pp")
    plans_manager = PlansManager(plans)
    return plans_manager, plans_manager.get_configuration(configuration), load_json(dataset_json_file)


def target_state_dict(dataset, configuration: str, plans_identifier: str) -> tuple:
    """Architecture and key shapes of the network nnU-Net builds for B (nnUNetTrainer.build_network_architecture).
    Built on the meta device: only shapes are needed, no memory or init time."""
    import torch
    from nnunet_sacl.nnunet.network import build_nnunet_network
    plans_manager, config, dataset_json = load_target_plans(dataset, configuration, plans_identifier)
    with torch.device("meta"):
        network = build_nnunet_network(plans_manager, config, dataset_json, deep_supervision=True)
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    return architecture(shapes, config.network_arch_class_name, dict(config.network_arch_init_kwargs),
                        (plans_manager.dataset_name, plans_manager.plans_name, configuration)), shapes


# ------------------------------------------------------------------------------------------------ the file's side
def read_weights_file(weights_file: str) -> dict:
    """The checkpoint, read as a received file (weights_only: no code in it runs); a file that is missing,
    truncated, not a torch file, no nnU-Net checkpoint or needs more than tensors and plain values is refused with
    the reason (read_checkpoint)."""
    from nnunet_sacl.nnunet.checkpoints import read_checkpoint
    return read_checkpoint(weights_file, received=True)


def file_plans(weights_file: str, checkpoint: dict) -> tuple:
    """(class name, arch_kwargs, (dataset, plans, configuration)) of the plans the file was trained with, or Nones
    when unknown: from the checkpoint's init_args (nnU-Net checkpoints), else from the plans.json that nnU-Net
    writes next to the fold folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    init_args = checkpoint.get("init_args") or {}
    meta = checkpoint.get("sacl") or {}
    plans, configuration = init_args.get("plans"), init_args.get("configuration") or meta.get("configuration")
    plans_json = join(dirname(dirname(os.path.abspath(weights_file))), "plans.json")
    if plans is None and isfile(plans_json):
        from batchgenerators.utilities.file_and_folder_operations import load_json
        plans = load_json(plans_json)
    if configuration is None:     # output folders are named TRAINER__PLANS__CONFIGURATION
        parts = basename(dirname(dirname(os.path.abspath(weights_file)))).split("__")
        configuration = parts[2] if len(parts) == 3 else None
    if plans is None or configuration not in plans.get("configurations", {}):
        return None, None, ("", "", "")
    config = PlansManager(plans).get_configuration(configuration)
    return (config.network_arch_class_name, dict(config.network_arch_init_kwargs),
            (plans.get("dataset_name", "?"), plans.get("plans_name", "?"), configuration))


# ------------------------------------------------------------------------------------------ shapes -> architecture
def is_conv_weight(key: str, shape: tuple) -> bool:
    return key.endswith(".weight") and len(shape) >= 4


def stage_convs(shapes: dict) -> dict:
    """First conv weight shape of every encoder stage: {stage index: shape}."""
    convs = {}
    for key, shape in shapes.items():
        m = re.match(r"encoder\.stages\.(\d+)\.", key)
        if m and is_conv_weight(key, shape):
            convs.setdefault(int(m.group(1)), shape)
    return dict(sorted(convs.items()))


def first_conv(shapes: dict) -> Optional[tuple]:
    """The network's first conv (stem of ResEnc, else stage 0): its in_channels are the input channels."""
    for key, shape in shapes.items():
        if key.startswith("encoder.") and is_conv_weight(key, shape):
            return shape
    return None


def class_from_keys(shapes: dict) -> str:
    if any(k.startswith("encoder.stem.") for k in shapes):
        return "ResidualEncoderUNet"
    if any(re.match(r"encoder\.stages\.\d+\.\d+\.convs\.", k) for k in shapes):
        return "PlainConvUNet"
    return "unknown architecture"


def without_wrappers(shapes: dict) -> dict:
    """Keys as the unwrapped network names them, to describe a DDP / torch.compile state dict by its content."""
    def strip(key):
        while key.startswith(FILE_PREFIXES):
            key = key.split(".", 1)[1]
        return key
    return {strip(k): v for k, v in shapes.items()}


def architecture(shapes: dict, class_name: Optional[str] = None, plans: Optional[dict] = None,
                 origin: tuple = ("", "", "")) -> Architecture:
    stages, first = stage_convs(shapes), first_conv(shapes)
    return Architecture(
        class_name=class_name.split(".")[-1] if class_name else class_from_keys(shapes),
        dims=len(first) - 2 if first else None, input_channels=first[1] if first else None,
        features_per_stage=[s[0] for s in stages.values()], kernel_sizes=[list(s[2:]) for s in stages.values()],
        plans=plans, dataset_name=origin[0], plans_name=origin[1], configuration=origin[2])


# ------------------------------------------------------------------------------------------------- the comparison
def checked_by_nnunet(key: str) -> bool:
    """Whether nnU-Net's load_pretrained_weights compares this key (it skips the segmentation heads)."""
    return all(s not in key for s in SKIPPED_BY_NNUNET)


def mismatched_keys(file_shapes: dict, target_shapes: dict) -> list:
    """nnU-Net's loader checks, on every key instead of the first: each target key but '.seg_layers.' must be in
    the file with the same shape."""
    return [Mismatch(key, file_shapes.get(key), shape) for key, shape in target_shapes.items()
            if checked_by_nnunet(key) and file_shapes.get(key) != shape]


def plan_differences(file: Architecture, target: Architecture) -> list:
    """The plan settings that shape the weights, where file and target differ (from plans when both are known)."""
    if file.plans is not None and target.plans is not None:
        names = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
                 "n_blocks_per_stage")
        values = {n: (file.plans.get(n), target.plans.get(n)) for n in names if n in target.plans or n in file.plans}
    else:
        values = {"stages (inferred from the shapes)": (file.n_stages, target.n_stages),
                  "features per stage (inferred)": (file.features_per_stage, target.features_per_stage),
                  "kernel sizes (inferred)": (file.kernel_sizes, target.kernel_sizes)}
    return [f"{n}: file {_listify(a)}, target {_listify(b)}" for n, (a, b) in values.items()
            if _listify(a) != _listify(b)]


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, (list, tuple)) else value


def likely_causes(file: Architecture, target: Architecture, file_shapes: dict) -> list:
    causes = []
    if any(k.startswith(FILE_PREFIXES) for k in file_shapes):
        causes.append("the file's keys carry a 'module.' (DDP) or '_orig_mod.' (torch.compile) prefix, which "
                      "nnU-Net's loader does not strip; save the unwrapped network's state_dict")
    if file.class_name != target.class_name:
        causes.append(f"other architecture class: the file is a {file.class_name}, the target a "
                      f"{target.class_name} (their key sets differ; e.g. nnUNetPlans vs nnUNetResEncUNet*Plans)")
    if file.dims and target.dims and file.dims != target.dims:
        causes.append(f"2d vs 3d: the file's conv weights are {file.dims}d (rank {file.dims + 2}), the target's "
                      f"{target.dims}d (rank {target.dims + 2}); pretrain with the configuration you fine-tune")
    if file.input_channels != target.input_channels:
        causes.append(f"other number of input channels: the file's first conv takes {file.input_channels}, the "
                      f"target's {target.input_channels} (dataset.json channel_names, or a cascade stage); nnunet-sacl prepare-finetune FILE -d TARGET -c "
                      f"CONFIGURATION writes weights with the stem adapted to the target's channels")
    if file.class_name == target.class_name and file.dims == target.dims:
        differences = plan_differences(file, target)
        if differences:
            causes.append("other plans (different stages, features, kernel sizes or strides):\n      "
                          + "\n      ".join(differences))
    return causes or ["the key sets or shapes differ in a way not recognised here; see the keys above"]


def suggested_fix(file: Architecture, target: Architecture) -> str:
    """nnU-Net's move-plans recipe, when the file's dataset and plans are known and the dimensionality agrees."""
    if not file.dataset_name or file.dims != target.dims or file.input_channels != target.input_channels:
        return ""
    source_id = re.sub(r"^Dataset0*(\d+)_.*", r"\1", file.dataset_name)
    new_plans = f"{file.plans_name}_from{source_id}"
    return (f"give {target.dataset_name} the file's plans: nnUNetv2_move_plans_between_datasets "
            f"-s {file.dataset_name} -t {target.dataset_name} -sp {file.plans_name} -tp {new_plans}; then "
            f"nnUNetv2_preprocess -d {target.dataset_name} -plans_name {new_plans} -c {target.configuration}; then "
            f"check-weights and nnUNetv2_train with -p {new_plans}")


def check_weights(weights_file: str, dataset, configuration: str,
                  plans_identifier: str = "nnUNetPlans") -> WeightsReport:
    """Would ``nnUNetv2_train DATASET CONFIGURATION F -p PLANS -pretrained_weights FILE`` load FILE? Answered
    before any training, with every failing key, both shapes and the likely cause."""
    from nnunet_sacl.nnunet.encoder_file import recorded
    checkpoint = read_weights_file(weights_file)
    nnssl = checkpoint.get("sacl") is None and checkpoint.get("nnssl_adaptation_plan") is not None
    if nnssl:      # refused here, in one message, when nnU-Net 2.8 cannot build its architecture
        from nnunet_sacl.nnunet.nnssl_format import read_adaptation_plan
        read_adaptation_plan(weights_file, checkpoint)
    file_shapes = {k: tuple(v.shape) for k, v in checkpoint["network_weights"].items()}
    target, target_shapes = target_state_dict(dataset, configuration, plans_identifier)
    file = architecture(without_wrappers(file_shapes), *file_plans(weights_file, checkpoint))
    report = WeightsReport(weights_file, target, file,
                           checked_keys=sum(map(checked_by_nnunet, target_shapes)),
                           mismatches=mismatched_keys(file_shapes, target_shapes),
                           recorded=recorded(checkpoint))
    if not report.fits:
        report.causes = likely_causes(file, target, file_shapes)
        report.fix = suggested_fix(file, target)
        if nnssl:
            report.fix = (f"an nnssl checkpoint: nnunet-sacl prepare-finetune {weights_file} -d "
                          f"{target.dataset_name} -c {configuration} writes plans and weights (its encoder and stem, "
                          f"the decoder new) that nnU-Net's -pretrained_weights takes")
    return report

