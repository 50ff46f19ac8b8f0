"""The ``nnssl_adaptation_plan`` our files carry, against what nnU-Net master's fine-tuning path for pretrained
checkpoints reads (like_nnssl.py, pretrainedTrainer.py, dynamicPretrainedTrainer.py at 0e495086) and what nnssl
writes (adaptation_plan.py at 70448644): field by field, with values checked against the plans and the network,
independently of the writer. nnU-Net master is not on PyPI, so these are the reads as this file copies them
(``master_reads``); the run against master itself is docs/results/nnunet-master-path.md. Then the round trip through
our reader, and the reverse path: a checkpoint as nnssl writes it, accepted by prepare-finetune and check-weights and
started from by SACLPretrainer; an architecture nnU-Net 2.8 cannot build refused in one message, nothing written.
All in the fast tier (planning of a tiny target, nothing trains)."""
import json
import re
from pathlib import Path

import pytest
import torch

from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
from tests.helpers import DATASET_NAME, make_nnunet_env, nnunet_folders, nothing_written, prepare_cli, refused


TARGET_ID = 986

# nnssl's dataclass fields (AdaptationPlan, ArchitecturePlans.serialize, Plan, ConfigurationPlan), copied here from
# nnssl's source rather than from nnunet_sacl.nnunet.nnssl_format, so that a misnamed field there fails here
NNSSL_PLAN = {"architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "recommended_downstream_patchsize",
              "key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe"}
NNSSL_ARCHITECTURE = {"arch_class_name", "arch_kwargs", "arch_kwargs_requiring_import"}
NNSSL_PRETRAIN_PLAN = {"dataset_name", "plans_name", "original_median_spacing_after_transp", "image_reader_writer",
                       "transpose_forward", "transpose_backward", "configurations", "experiment_planner_used"}
NNSSL_CONFIGURATION = {"data_identifier", "preprocessor_name", "spacing_style", "normalization_schemes",
                       "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_mask",
                       "resampling_fn_mask_kwargs", "spacing", "patch_size"}


def master_reads(checkpoint: dict) -> dict:
    """What nnU-Net master takes from a checkpoint, access by access as its code does it (KeyError where it would
    fail): plan_like_dynamic's pretrain_info, preprocess_like_nnssl's spacing and architecture,
    DynamicPretrainedTrainer's kernel sizes and depth and its split of the state dict into encoder and stem."""
    plan = checkpoint["nnssl_adaptation_plan"]
    config = list(plan["pretrain_plan"]["configurations"].keys())[0]
    info = {"key_to_encoder": plan["key_to_encoder"], "key_to_stem": plan["key_to_stem"],
            "keys_to_in_proj": plan["keys_to_in_proj"], "key_to_lpe": plan["key_to_lpe"],
            "pt_num_in_channels": plan["pretrain_num_input_channels"],
            "pt_used_patchsize": plan["pretrain_plan"]["configurations"][config]["patch_size"],
            "pt_recommended_downstream_patchsize": plan["recommended_downstream_patchsize"],
            "pt_architecture_kwargs": plan.get("architecture_kwargs", {})}
    spacing = list(plan["pretrain_plan"]["configurations"].values())[0]["spacing"]
    architecture = dict(plan["architecture_plans"])
    architecture["network_class_name"] = architecture.pop("arch_class_name")
    architecture["_kw_requires_import"] = architecture.pop("arch_kwargs_requiring_import")
    name = architecture["network_class_name"]
    buildable = name in ("PlainConvUNet", "ResidualEncoderUNet") or name.endswith(("PlainConvUNet",
                                                                                  "ResidualEncoderUNet"))
    kwargs = plan.get("architecture_kwargs", {})
    weights = checkpoint["network_weights"]
    encoder = {k for k in weights if k.startswith(plan["key_to_encoder"])}
    stem = {k for k in weights if k.startswith(plan["key_to_stem"])}
    return dict(info, spacing=spacing, architecture=architecture, buildable=buildable,
                kernel_sizes=kwargs.get("kernel_sizes", [[3, 3, 3]] * 6), n_stages=kwargs.get("n_stages", 6),
                encoder=encoder, stem=stem, stem_in_encoder=plan["key_to_stem"] in weights,
                in_proj=weights[tuple(plan["keys_to_in_proj"])[0] + ".weight"])


def network_and_plan(nnunet_env, plans_name: str):
    from nnunet_sacl.nnunet.network import build_nnunet_network
    from nnunet_sacl.nnunet.nnssl_format import adaptation_plan
    from nnunet_sacl.nnunet.weights import load_target_plans
    with nnunet_folders(nnunet_env):
        manager, config, dataset_json = load_target_plans(DATASET_NAME, "3d_fullres", plans_name)
        network = build_nnunet_network(manager, config, dataset_json, True)
    return manager, config, dataset_json, network, adaptation_plan(manager.plans, "3d_fullres", network)


@pytest.mark.parametrize("architecture", ["plain", "resenc"])
def test_the_written_plan_is_what_nnunet_master_and_nnssl_read(nnunet_env, preprocessed, resenc_plans, architecture,
                                                               tmp_path):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    plans_name = {"plain": "nnUNetPlans", "resenc": resenc_plans}[architecture]
    manager, config, dataset_json, network, plan = network_and_plan(nnunet_env, plans_name)
    file = tmp_path / "encoder.pth"
    torch.save({"network_weights": network.state_dict(), "nnssl_adaptation_plan": plan}, file)
    checkpoint = torch.load(file, weights_only=True)     # as master loads it
    written = checkpoint["nnssl_adaptation_plan"]
    # nnssl's fields, every one, and DynamicPretrainedTrainer's architecture_kwargs
    assert NNSSL_PLAN | {"architecture_kwargs"} == set(written)
    assert NNSSL_ARCHITECTURE == set(written["architecture_plans"])
    assert NNSSL_PRETRAIN_PLAN == set(written["pretrain_plan"])
    assert list(written["pretrain_plan"]["configurations"]) == ["3d_fullres"]
    assert NNSSL_CONFIGURATION == set(written["pretrain_plan"]["configurations"]["3d_fullres"])
    reads = master_reads(checkpoint)
    # their meaning, against the plans, the dataset and the network themselves
    assert reads["pt_num_in_channels"] == len(dataset_json["channel_names"]) == reads["in_proj"].shape[1] == 1
    assert reads["pt_used_patchsize"] == reads["pt_recommended_downstream_patchsize"] == list(config.patch_size)
    assert reads["spacing"] == list(config.spacing)
    assert reads["kernel_sizes"] == [list(k) for k in config.network_arch_init_kwargs["kernel_sizes"]]
    assert reads["n_stages"] == config.network_arch_init_kwargs["n_stages"] == len(network.encoder.stages)
    assert reads["key_to_lpe"] is None and reads["buildable"]
    encoder_keys = {k for k in network.state_dict() if k.startswith("encoder.")}
    assert reads["encoder"] | reads["stem"] == encoder_keys        # stem and stages: the whole encoder
    assert not reads["stem_in_encoder"]                            # master's test: no key is the stem's name
    if architecture == "resenc":
        assert reads["key_to_stem"] == "encoder.stem" and reads["stem"] and not reads["stem"] & reads["encoder"]
        # DynamicPretrainedTrainer adapts kernels of keys "<stage>.blocks.<block>.<rest>" below key_to_encoder
        stripped = [k[len(reads["key_to_encoder"]) + 1:] for k in reads["encoder"]]
        assert all(re.match(r"^\d+\.blocks\.\d+\.", k) for k in stripped), stripped[:3]
    else:      # the Plain U-Net's stem is its first stage (docs/transfer.md: what master cannot adapt there)
        assert reads["key_to_stem"] == "encoder.stages.0" and reads["stem"] <= reads["encoder"]
    for key in reads["keys_to_in_proj"]:
        assert torch.equal(checkpoint["network_weights"][key + ".weight"], reads["in_proj"])
    # preprocess_like_nnssl's architecture builds the file's network (what PretrainedTrainer does with it)
    a = reads["architecture"]
    rebuilt = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"], 1,
                                     manager.get_label_manager(dataset_json).num_segmentation_heads,
                                     deep_supervision=True)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in checkpoint["network_weights"].items()}


def test_the_plan_round_trips_through_our_reader(nnunet_env, preprocessed, resenc_plans, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_sacl.nnunet.encoder_file import recorded
    from nnunet_sacl.nnunet.network import build_nnunet_network
    from nnunet_sacl.nnunet.nnssl_format import nnunet_plans, read_adaptation_plan
    from nnunet_sacl.nnunet.weights import read_weights_file
    manager, config, dataset_json, network, plan = network_and_plan(nnunet_env, resenc_plans)
    file = tmp_path / "encoder.pth"
    torch.save({"network_weights": network.state_dict(), "nnssl_adaptation_plan": plan}, file)
    checkpoint = read_weights_file(str(file))
    adaptation = read_adaptation_plan(str(file), checkpoint)
    assert adaptation["class_name"] == config.network_arch_class_name
    assert adaptation["arch_kwargs"] == json.loads(json.dumps(dict(config.network_arch_init_kwargs)))
    assert adaptation["spacing"] == list(config.spacing) and adaptation["input_channels"] == 1
    again = PlansManager(nnunet_plans(str(file), adaptation))
    rebuilt = build_nnunet_network(again, again.get_configuration("3d_fullres"), dataset_json, True)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in network.state_dict().items()}
    assert any(re.match(r"nnssl adaptation plan: ResidualEncoderUNet, \d stages, 1 input channel\(s\), pretrained on "
                        rf"{DATASET_NAME} \(3d_fullres", line) for line in recorded(checkpoint)), recorded(checkpoint)


# ---------------------------------------------------------------------------------------- the reverse path
def as_nnssl_writes_it(network, plans: dict, config, arch_class_name="ResidualEncoderUNet") -> dict:
    """A checkpoint as nnssl's trainers save it (AbstractTrainer.save_checkpoint): its init_args (plan,
    configuration_name, fold, pretrain_json), its adaptation plan as AdaptationPlan.serialize() writes it (the class
    by its preset name, no architecture_kwargs, spacing style onemmiso, z-score normalisation)."""
    kwargs = dict(config.network_arch_init_kwargs)
    configuration = {"data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
                     "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"],
                     "use_mask_for_norm": False, "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                                   "force_separate_z": None},
                     "resampling_fn_mask": "resample_data_or_seg_to_shape",
                     "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
                     "spacing": list(config.spacing), "patch_size": list(config.patch_size)}
    plan = {"dataset_name": "Dataset802_OpenNeuro", "plans_name": "nnsslPlans",
            "original_median_spacing_after_transp": list(config.spacing), "image_reader_writer": "NibabelReaderWriter",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"onemmiso": configuration}, "experiment_planner_used": "ExperimentPlanner"}
    requiring_import = list(config.network_arch_init_kwargs_req_import)
    adaptation = {"architecture_plans": {"arch_class_name": arch_class_name, "arch_kwargs": kwargs,
                                         "arch_kwargs_requiring_import": requiring_import},
                  "pretrain_plan": plan, "pretrain_num_input_channels": 1,
                  "recommended_downstream_patchsize": list(config.patch_size), "key_to_encoder": "encoder.stages",
                  "key_to_stem": "encoder.stem",
                  "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
                  "key_to_lpe": None}
    return {"network_weights": network.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
            "logging": {}, "_best_ema": None, "current_epoch": 1000, "trainer_name": "BaseMAETrainer",
            "init_args": {"plan": plan, "configuration_name": "onemmiso", "fold": 0, "pretrain_json": {}},
            "nnssl_adaptation_plan": adaptation}


@pytest.fixture(scope="module")
def nnssl_file(nnunet_env, preprocessed, resenc_plans, tmp_path_factory):
    """A ResEnc checkpoint as nnssl writes it (the session dataset's ResEnc network, its weights randomised) and a
    target of two input channels in a raw folder of its own."""
    root = tmp_path_factory.mktemp("nnssl_reverse")
    env = make_nnunet_env(root)
    raw = make_synthetic_dataset(env["nnUNet_raw"], TARGET_ID, name="FromNnssl", num_training=5, num_test=0,
                                 shape=(16, 40, 40), seed=5)
    import SimpleITK as sitk
    for image in raw.glob("imagesTr/*_0000.nii.gz"):
        sitk.WriteImage(sitk.ReadImage(str(image)) * 2, str(image).replace("_0000.nii.gz", "_0001.nii.gz"))
    dataset = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps(dict(dataset, channel_names={"0": "CT", "1": "T1"}), indent=2))
    manager, config, _, network, _ = network_and_plan(nnunet_env, resenc_plans)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_()
    checkpoint = as_nnssl_writes_it(network, manager.plans, config)
    file = root / "checkpoint_final.pth"
    torch.save(checkpoint, file)
    return dict(env, file=str(file), weights=network.state_dict(), checkpoint=checkpoint, root=str(root))


@pytest.fixture(scope="module")
def prepared(nnssl_file) -> dict:
    """prepare-finetune of the nnssl checkpoint for the two-channel target: its output, plans and weights."""
    code, out, err = prepare_cli(nnssl_file, "prepare-finetune", nnssl_file["file"], "-d", str(TARGET_ID), "-c",
                                 "3d_fullres", "-np", "1")
    assert code == 0, out + err
    plans, weights_file = re.search(r"nnUNetv2_train .* -p (\S+) -pretrained_weights (\S+)", out).groups()
    return {"stdout": out, "plans": plans, "weights_file": weights_file}


def test_an_nnssl_checkpoint_is_prepared_and_loads_into_sacl_pretraining(nnssl_file, prepared):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunet_sacl.nnunet.pretrainer import SACLPretrainer
    from nnunet_sacl.nnunet.prepare_finetune import stem_for_channels
    from nnunetv2.run.run_training import get_trainer_from_args
    env, a, out = nnssl_file, nnssl_file["weights"], prepared["stdout"]
    assert "nnssl adaptation plan: ResidualEncoderUNet" in out and "YES: the weights fit" in out, out
    plans, weights_file = prepared["plans"], prepared["weights_file"]
    prepared = torch.load(weights_file, weights_only=True)
    # what SACL starts from: nnU-Net's own -pretrained_weights loader into SACLPretrainer's network
    with nnunet_folders(env):
        trainer = get_trainer_from_args(str(TARGET_ID), "3d_fullres", 0, "SACLPretrainer", plans,
                                        device=torch.device("cpu"))
        assert isinstance(trainer, SACLPretrainer)
        trainer.initialize()
        load_pretrained_weights(trainer.network, weights_file)
        loaded = trainer.network.state_dict()
    stem = "encoder.stem.convs.0.conv.weight"
    stem_alias = "encoder.stem.convs.0.all_modules.0.weight"
    encoder = [k for k in a if k.startswith("encoder.") and k not in (stem, stem_alias)]
    assert encoder and all(torch.equal(loaded[k], a[k]) for k in encoder)
    assert all(torch.equal(loaded["decoder." + k], a[k]) for k in encoder)      # the decoder's references to it
    assert torch.allclose(loaded[stem], stem_for_channels(a[stem], 2)) and loaded[stem].shape[1] == 2
    decoder = [k for k in a if k.startswith("decoder.") and not k.startswith(("decoder.encoder.", "decoder.seg"))
               and a[k].dtype.is_floating_point and a[k].numel() > 1]
    assert decoder and not any(torch.equal(prepared["network_weights"][k], a[k]) for k in decoder)  # starts anew
    # the written file carries its own plan, for the target's network: two input channels
    assert prepared["nnssl_adaptation_plan"]["pretrain_num_input_channels"] == 2
    assert master_reads(prepared)["in_proj"].shape[1] == 2


@pytest.mark.slow
def test_sacl_pretraining_runs_from_an_nnssl_checkpoint(nnssl_file, prepared):
    """nnU-Net's own command: SACLPretrainer_smoke from the prepared weights (-pretrained_weights), to its end."""
    from tests.helpers import nnunet_bin, run, train_env
    trained = run([nnunet_bin("nnUNetv2_train"), str(TARGET_ID), "3d_fullres", "0", "-tr", "SACLPretrainer_smoke",
                   "-p", prepared["plans"], "-pretrained_weights", prepared["weights_file"], "-device", "cpu"],
                  train_env({k: v for k, v in nnssl_file.items() if isinstance(v, str)}), timeout=1800)
    assert f"Loading pretrained weights from file  {prepared['weights_file']}" in trained.stdout, trained.stdout[-3000:]
    folder = Path(nnssl_file["nnUNet_results"]) / f"Dataset{TARGET_ID}_FromNnssl" / \
        f"SACLPretrainer_smoke__{prepared['plans']}__3d_fullres" / "fold_0"
    encoder = torch.load(folder / "checkpoint_sacl_encoder.pth", weights_only=True)
    start = torch.load(prepared["weights_file"], weights_only=True)["network_weights"]
    convs = [k for k in start if k.startswith("encoder.stages.") and k.endswith("conv.weight")]
    # pretraining moved the encoder from where it started, and started there (far closer to it than to chance)
    assert any(not torch.equal(encoder["network_weights"][k], start[k]) for k in convs)
    assert all(torch.corrcoef(torch.stack([encoder["network_weights"][k].flatten(), start[k].flatten()]))[0, 1] > 0.9
               for k in convs)
    assert encoder["nnssl_adaptation_plan"]["pretrain_num_input_channels"] == 2


@pytest.mark.parametrize("name, expected", [
    ("PrimusM", r"holds a PrimusM \(a Primus vision transformer, nnssl's PrimusM preset\), which nnU-Net 2.8's U-Net "
                r"plans cannot describe.*nnUNetv2_preprocess_like_nnssl"),
    ("NoSkipResEncL", r"holds a NoSkipResEncL without its settings \(arch_kwargs\), which nnunet-sacl cannot build"),
])
def test_an_architecture_nnunet_cannot_build_is_refused_in_one_message(nnssl_file, tmp_path, name, expected):
    checkpoint = dict(nnssl_file["checkpoint"])
    checkpoint["nnssl_adaptation_plan"] = dict(checkpoint["nnssl_adaptation_plan"], architecture_plans={
        "arch_class_name": name, "arch_kwargs": None, "arch_kwargs_requiring_import": None})
    file = tmp_path / f"{name}.pth"
    torch.save(checkpoint, file)
    env = dict(nnssl_file, nnUNet_preprocessed=str(tmp_path / "preprocessed"))
    for command in ("prepare-finetune", "check-weights"):
        refused(env, expected, str(file), "-d", str(TARGET_ID), "-c", "3d_fullres", command=command)
    assert nothing_written(env)
