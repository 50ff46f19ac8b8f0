"""The ``nnssl_adaptation_plan`` entry of a weights file: what nnssl (MIC-DKFZ/nnssl) writes into its pretrained
checkpoints, and what nnU-Net's own fine-tuning path for pretrained checkpoints reads (``nnUNetv2_plan_like_dynamic`` /
``nnUNetv2_preprocess_like_nnssl``, ``DynamicPretrainedTrainer`` / ``PretrainedTrainer``; nnU-Net's GitHub master, not
in the nnunetv2 releases on PyPI).

Written (``adaptation_plan``) into every encoder file and every file ``prepare-finetune`` writes, so that nnU-Net's
path takes it as it is; read (``read_adaptation_plan``) when such a file is given to ``check-weights`` or
``prepare-finetune``. The fields and their meanings are nnssl's ``AdaptationPlan.serialize()``
(src/nnssl/adaptation_planning/adaptation_plan.py), plus ``architecture_kwargs``, which nnU-Net's
DynamicPretrainedTrainer reads for the pretrained kernel sizes and depth (without it, it assumes 3x3x3 kernels).
Every value is plain (dicts, lists, strings, numbers, None): ``torch.load(weights_only=True)`` reads it.
"""
from typing import Optional

ENTRY = "nnssl_adaptation_plan"

# nnssl's dataclasses, field by field: AdaptationPlan, ArchitecturePlans.serialize(), Plan, ConfigurationPlan
PLAN_FIELDS = ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "recommended_downstream_patchsize",
               "key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe")
ARCHITECTURE_FIELDS = ("arch_class_name", "arch_kwargs", "arch_kwargs_requiring_import")
PRETRAIN_PLAN_FIELDS = ("dataset_name", "plans_name", "original_median_spacing_after_transp", "image_reader_writer",
                        "transpose_forward", "transpose_backward", "configurations", "experiment_planner_used")
CONFIGURATION_FIELDS = ("data_identifier", "preprocessor_name", "spacing_style", "normalization_schemes",
                        "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_mask",
                        "resampling_fn_mask_kwargs", "spacing", "patch_size")
# what nnU-Net's DynamicPretrainedTrainer reads beyond nnssl's fields
DYNAMIC_FIELDS = ("architecture_kwargs",)

# the architectures nnU-Net v2 plans describe (dynamic_network_architectures' U-Nets); nnssl's fixed presets
DYNAMIC_CLASSES = ("PlainConvUNet", "ResidualEncoderUNet")
# nnssl's ResEncL preset, as nnssl and nnU-Net master build it (get_network_from_name("ResEncL")): nnU-Net's own
# ResidualEncoderUNet with these settings; a plan with them builds it in nnU-Net 2.8 too
RESENC_L_PRESET = {
    "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1, 1, 1, 1, 1], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}
PRESETS = {"ResEncL": ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", RESENC_L_PRESET)}
TRANSFORMERS = ("PrimusS", "PrimusB", "PrimusM", "PrimusL")


class NotAdaptable(ValueError):
    """A file's nnssl_adaptation_plan names an architecture this nnU-Net cannot build (or is malformed)."""


def input_channels_of(network) -> int:
    """The input channels of the network's first convolution (its ``keys_to_in_proj``)."""
    shapes = {k: v.shape for k, v in network.state_dict().items()}
    return int(shapes[network.keys_to_in_proj[0] + ".weight"][1])


def adaptation_plan(plans: dict, configuration: str, network) -> dict:
    """The ``nnssl_adaptation_plan`` of ``network``, built by nnU-Net from ``plans`` (configuration
    ``configuration``): its architecture as the plans describe it, the plans as nnssl's pretraining plan (the one
    configuration, its spacing and patch size), its input channels, the patch size to fine-tune with (the plans'),
    and the state-dict keys of encoder, stem and input projection (the network's own, dynamic_network_architectures
    names them). ``architecture_kwargs`` holds the kernel sizes and depth nnU-Net's DynamicPretrainedTrainer reads."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_sacl.nnunet.encoder_file import plain
    config = PlansManager(plans).get_configuration(configuration)
    arch_kwargs = dict(config.network_arch_init_kwargs)
    raw = config.configuration
    pretrain_configuration = {
        "data_identifier": config.data_identifier, "preprocessor_name": config.preprocessor_name,
        "spacing_style": "median",     # nnU-Net's target spacing: the dataset's median (lowest axis resolution kept)
        "normalization_schemes": config.normalization_schemes, "use_mask_for_norm": config.use_mask_for_norm,
        "resampling_fn_data": raw.get("resampling_fn_data"),
        "resampling_fn_data_kwargs": raw.get("resampling_fn_data_kwargs"),
        "resampling_fn_mask": raw.get("resampling_fn_seg"),
        "resampling_fn_mask_kwargs": raw.get("resampling_fn_seg_kwargs"),
        "spacing": config.spacing, "patch_size": config.patch_size}
    pretrain_plan = {
        "dataset_name": plans.get("dataset_name"), "plans_name": plans.get("plans_name"),
        "original_median_spacing_after_transp": plans.get("original_median_spacing_after_transp"),
        "image_reader_writer": plans.get("image_reader_writer"),
        "transpose_forward": plans.get("transpose_forward"), "transpose_backward": plans.get("transpose_backward"),
        "configurations": {configuration: pretrain_configuration},
        "experiment_planner_used": plans.get("experiment_planner_used")}
    # where encoder, stem and input projection are in the state dict: the network's own names for them
    keys = {"key_to_encoder": network.key_to_encoder, "key_to_stem": network.key_to_stem,
            "keys_to_in_proj": list(network.keys_to_in_proj), "key_to_lpe": getattr(network, "key_to_lpe", None)}
    return plain({
        "architecture_plans": {"arch_class_name": config.network_arch_class_name, "arch_kwargs": arch_kwargs,
                               "arch_kwargs_requiring_import": list(config.network_arch_init_kwargs_req_import)},
        "pretrain_plan": pretrain_plan,
        "pretrain_num_input_channels": input_channels_of(network),
        "recommended_downstream_patchsize": config.patch_size,
        **keys, "architecture_kwargs": arch_kwargs})


def short_class_name(name: str) -> str:
    return str(name).split(".")[-1]


def read_adaptation_plan(weights_file: str, checkpoint: dict) -> Optional[dict]:
    """The file's ``nnssl_adaptation_plan`` with what nnU-Net 2.8 needs to build its network: ``class_name`` (as
    nnU-Net plans name it), ``arch_kwargs``, ``kw_requires_import``, ``configuration`` (the pretraining plan's one
    configuration) and ``spacing`` / ``patch_size``; None when the file has none. NotAdaptable, naming the file and
    the architecture, when nnU-Net 2.8 cannot build it (a Primus transformer, a preset without settings)."""
    plan = checkpoint.get(ENTRY)
    if plan is None:
        return None
    missing = [f for f in ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "key_to_encoder",
                           "key_to_stem", "keys_to_in_proj") if not isinstance(plan, dict) or f not in plan]
    if missing:
        raise NotAdaptable(f"{weights_file}: its {ENTRY} lacks {', '.join(missing)} (nnssl writes them all)")
    architecture = plan["architecture_plans"] or {}
    name = str(architecture.get("arch_class_name"))
    short = short_class_name(name)
    kwargs = architecture.get("arch_kwargs")
    if short in TRANSFORMERS:
        raise NotAdaptable(
            f"{weights_file} holds a {short} (a Primus vision transformer, nnssl's {short} preset), which nnU-Net "
            f"2.8's U-Net plans cannot describe: neither prepare-finetune, check-weights nor SACL can start from it. "
            f"Fine-tune it with nnU-Net's master branch (nnUNetv2_preprocess_like_nnssl, then "
            f"nnUNetv2_train_pretrained -tr PretrainedTrainer), or pretrain a ResEnc or Plain U-Net")
    if short in PRESETS and not kwargs:
        name, kwargs = PRESETS[short]
        requiring_import = ["conv_op", "norm_op", "dropout_op", "nonlin"]
    elif short in DYNAMIC_CLASSES and isinstance(kwargs, dict) and kwargs:
        requiring_import = list(architecture.get("arch_kwargs_requiring_import") or [])
        if "." not in name:
            name = f"dynamic_network_architectures.architectures.unet.{short}"
    else:
        known = ", ".join((*DYNAMIC_CLASSES, *PRESETS))
        raise NotAdaptable(
            f"{weights_file} holds a {name}" + ("" if kwargs else " without its settings (arch_kwargs)") +
            f", which nnunet-sacl cannot build as an nnU-Net network (it builds {known} with their settings): "
            f"fine-tune it with nnU-Net's master branch (nnUNetv2_preprocess_like_nnssl + PretrainedTrainer), or "
            f"ask for a checkpoint of a ResEnc or Plain U-Net with its arch_kwargs")
    configurations = (plan["pretrain_plan"] or {}).get("configurations") or {}
    if not configurations:
        raise NotAdaptable(f"{weights_file}: its {ENTRY}'s pretrain_plan has no configuration (nnssl writes the one "
                           f"it pretrained with, with its spacing and patch size)")
    configuration, settings = next(iter(configurations.items()))
    return {"class_name": name, "arch_kwargs": dict(kwargs), "kw_requires_import": requiring_import,
            "configuration": configuration, "spacing": settings.get("spacing"),
            "patch_size": settings.get("patch_size") or plan.get("recommended_downstream_patchsize"),
            "input_channels": plan["pretrain_num_input_channels"], "plan": plan}


def described(adaptation: dict) -> str:
    """One line for check-weights' and prepare-finetune's record of the file."""
    kwargs = adaptation["arch_kwargs"]
    return (f"nnssl adaptation plan: {short_class_name(adaptation['class_name'])}, {kwargs.get('n_stages')} stages, "
            f"{adaptation['input_channels']} input channel(s), pretrained on "
            f"{adaptation['plan']['pretrain_plan'].get('dataset_name')} ({adaptation['configuration']}, spacing "
            f"{adaptation['spacing']}, patch size {adaptation['patch_size']})")


def nnunet_plans(weights_file: str, adaptation: dict) -> dict:
    """nnU-Net plans (one configuration) that build the network of an nnssl-format file and preprocess like its
    pretraining: its architecture and settings, spacing, normalisation and resampling, the patch size it recommends
    for fine-tuning, batch size 2 (nnU-Net's PretrainedTrainer's). NotAdaptable when it has no fixed spacing."""
    pretrain_plan = adaptation["plan"]["pretrain_plan"]
    settings = pretrain_plan["configurations"][adaptation["configuration"]]
    if adaptation["spacing"] is None:
        raise NotAdaptable(f"{weights_file} was pretrained without a fixed spacing (spacing_style "
                           f"{settings.get('spacing_style')!r}): nnU-Net plans need one; fine-tune it with nnU-Net's "
                           f"master branch (nnUNetv2_plan_like_dynamic keeps the target's own spacing)")
    configuration = "3d_fullres" if len(adaptation["patch_size"]) == 3 else "2d"
    patch_size = list(adaptation["plan"].get("recommended_downstream_patchsize") or adaptation["patch_size"])
    resample = settings.get("resampling_fn_data") or "resample_data_or_seg_to_shape"
    data_kwargs = settings.get("resampling_fn_data_kwargs") or {"is_seg": False, "order": 3, "order_z": 0,
                                                                "force_separate_z": None}
    seg_kwargs = settings.get("resampling_fn_mask_kwargs") or {"is_seg": True, "order": 1, "order_z": 0,
                                                               "force_separate_z": None}
    schemes = list(settings.get("normalization_schemes") or ["ZScoreNormalization"])
    masks = settings.get("use_mask_for_norm")
    source = str(pretrain_plan.get("dataset_name") or "nnssl")
    return {
        "dataset_name": source, "plans_name": str(pretrain_plan.get("plans_name") or "nnsslPlans"),
        "original_median_spacing_after_transp": pretrain_plan.get("original_median_spacing_after_transp")
        or list(adaptation["spacing"]),
        "original_median_shape_after_transp": patch_size,
        "image_reader_writer": pretrain_plan.get("image_reader_writer") or "SimpleITKIO",
        "transpose_forward": pretrain_plan.get("transpose_forward") or [0, 1, 2],
        "transpose_backward": pretrain_plan.get("transpose_backward") or [0, 1, 2],
        "experiment_planner_used": pretrain_plan.get("experiment_planner_used") or "nnssl",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
        "configurations": {configuration: {
            "data_identifier": f"nnssl_{configuration}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": patch_size, "median_image_size_in_voxels": patch_size,
            "spacing": list(adaptation["spacing"]), "normalization_schemes": schemes,
            "use_mask_for_norm": masks if isinstance(masks, list) else [bool(masks)] * len(schemes),
            "resampling_fn_data": resample, "resampling_fn_seg": settings.get("resampling_fn_mask") or resample,
            "resampling_fn_data_kwargs": data_kwargs, "resampling_fn_seg_kwargs": seg_kwargs,
            "resampling_fn_probabilities": resample,
            "resampling_fn_probabilities_kwargs": dict(data_kwargs, is_seg=False),
            "architecture": {"network_class_name": adaptation["class_name"], "arch_kwargs": adaptation["arch_kwargs"],
                             "_kw_requires_import": adaptation["kw_requires_import"]},
            "batch_dice": False}}}


def pretrained_keys(adaptation: dict, keys) -> list:
    """The keys of an nnssl-format file's encoder and stem (what nnU-Net's PretrainedTrainer loads; its decoder is
    trained for the pretext task and starts anew)."""
    prefixes = (adaptation["plan"]["key_to_encoder"], adaptation["plan"]["key_to_stem"])
    return [k for k in keys if k.startswith(tuple(p + "." for p in prefixes))]
