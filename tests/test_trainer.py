"""SACL trainers in-process on real nnU-Net plans and data: what one step changes, checkpoints, refusals."""
import json
from os.path import join

import numpy as np
import pytest
import torch

from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.trainer import SACLTrainer
from nnunet_sacl.nnunet.short_runs import SACLPretrainer_smoke
from tests.helpers import DATASET_NAME, first_batch, make_pretrainer, make_trainer


def test_trainers_are_found_through_nnUNet_extTrainer(in_process_env):
    for name in ("SACLTrainer", "SACLPretrainer", "SACLTrainer_smoke", "nnUNetTrainer_smoke", "SACLTrainer_DCC"):
        assert recursive_find_trainer_class_by_name(name).__name__ == name


@pytest.mark.parametrize("configuration,plans", [
    ("3d_fullres", "nnUNetPlans"), pytest.param("2d", "nnUNetPlans", marks=pytest.mark.slow),
    pytest.param("3d_fullres", "nnUNetResEncUNetMPlans", marks=pytest.mark.slow)])   # their own preprocessing
def test_one_pretraining_step_changes_only_encoder_and_head(request, in_process_env, configuration, plans):
    request.getfixturevalue("resenc_plans" if plans != "nnUNetPlans" else
                            "preprocessed_2d" if configuration == "2d" else "preprocessed")
    trainer = make_pretrainer("SACLTrainer_smoke", configuration=configuration, plans=plans)
    trainer.initialize()
    net = unwrap(trainer.network)
    encoder_names = {f"encoder.{k}" for k, _ in encoder_of(net).named_parameters()}
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    head_before = [p.detach().clone() for p in trainer.head.parameters()]
    out = trainer.train_step(first_batch(trainer))
    assert np.isfinite(out["loss"]) and out["organs"] > 0
    changed = {k for k, v in net.named_parameters() if not torch.equal(v, before[k])}
    assert changed <= encoder_names, f"changed outside the encoder: {sorted(changed - encoder_names)[:5]}"
    # every convolution weight moves (biases before an InstanceNorm get no gradient, so they may not)
    conv_weights = {k for k in encoder_names if k.endswith("conv.weight") or k.endswith("0.weight")}
    assert conv_weights and conv_weights <= changed
    assert all(not torch.equal(p, q) for p, q in zip(trainer.head.parameters(), head_before))
    assert type(net).__name__ == ("ResidualEncoderUNet" if "ResEnc" in plans else "PlainConvUNet")


def test_patches_without_organs_or_positives_train_on_without_nan(in_process_env, tmp_path):
    trainer = make_pretrainer("SACLTrainer_smoke")
    trainer.initialize()
    batch = first_batch(trainer)
    target = batch["target"][0]
    no_organ = dict(batch, target=[torch.zeros_like(target)])
    one_organ = dict(batch, target=[torch.where(target == 2, target, torch.zeros_like(target))])
    one_organ["target"][0][1:] = 0      # organ 2 in the first patch only: no positive pair
    outputs = [trainer.train_step(b) for b in (no_organ, one_organ)]
    assert all(float(out["loss"]) == 0.0 and out["without_positive"] for out in outputs)
    assert all(torch.isfinite(p).all() for p in trainer.pretraining_parameters())
    outputs.append(trainer.train_step(batch))
    assert np.isfinite(outputs[-1]["loss"]) and not outputs[-1]["without_positive"]
    trainer.output_folder, trainer.log_file = str(tmp_path), str(tmp_path / "log.txt")   # not the session's model
    trainer.on_train_epoch_end(outputs)        # the epoch's count comes from the steps' own outputs
    assert "batches without a positive pair 2" in (tmp_path / "log.txt").read_text()
    assert trainer.logger.get_value("train_losses", step=-1) == pytest.approx(float(outputs[-1]["loss"]) / 3)


def test_pretraining_checkpoint_round_trip(in_process_env, tmp_path):
    trainer = make_pretrainer("SACLTrainer_smoke")
    trainer.initialize()
    trainer.train_step(first_batch(trainer))
    trainer.current_epoch = 2
    file = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(file)

    resumed = make_pretrainer("SACLTrainer_smoke")
    resumed.load_checkpoint(file)
    assert resumed.current_epoch == 3 and resumed.num_epochs == 3
    for p, q in zip(resumed.head.parameters(), trainer.head.parameters()):
        assert torch.equal(p, q)
    # the optimizer is the pretraining one (encoder + head) with its momentum restored
    assert len(resumed.optimizer.param_groups[0]["params"]) == len(resumed.pretraining_parameters())
    assert resumed.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


def test_pretrained_encoder_file_loads_into_stock_network(in_process_env, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    sacl = make_pretrainer("SACLTrainer_smoke")
    sacl.initialize()
    sacl.train_step(first_batch(sacl))
    file = sacl.encoder_file = str(tmp_path / "encoder.pth")
    sacl.save_pretrained_encoder()
    # self-describing, in plain values (weights_only): plans, configuration, dataset, settings, versions
    record = torch.load(file, weights_only=True)
    assert record["init_args"]["plans"] == sacl.plans_manager.plans
    assert record["init_args"]["configuration"] == "3d_fullres" and record["init_args"]["fold"] == 0
    assert record["init_args"]["dataset_json"] == sacl.dataset_json and record["trainer_name"] == "SACLTrainer_smoke"
    assert record["sacl"]["pretraining"]["pool_stages"] == list(sacl.pool_stages)
    assert record["sacl"]["pretraining"]["batch_size"] == sacl.configuration_manager.batch_size
    assert set(record["sacl"]["versions"]) == {"nnunet_sacl", "nnunetv2", "torch", "dynamic_network_architectures"}
    stock = make_trainer("nnUNetTrainer_smoke", fold=1)
    stock.initialize()
    load_pretrained_weights(stock.network, file, verbose=False)
    for (k, v), (k2, v2) in zip(unwrap(stock.network).encoder.state_dict().items(),
                                unwrap(sacl.network).encoder.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.parametrize("dataset_changes,message", [
    ({"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3]}, "regions_class_order": [1, 2]}, "region-based"),
    ({"labels": {"background": 0, "liver": 1}}, "at least two organs"),
], ids=["region-based labels", "single organ"])
def test_unsupported_label_configs_are_refused(in_process_env, dataset_changes, message):
    from nnunetv2.paths import nnUNet_preprocessed
    folder = join(str(nnUNet_preprocessed), DATASET_NAME)
    plans = json.load(open(join(folder, "nnUNetPlans.json")))
    plans["continue_training"] = False   # nnUNetTrainer.__init__ reads it from the plans (run_training sets it)
    dataset = dict(json.load(open(join(folder, "dataset.json"))), **dataset_changes)
    with pytest.raises(RuntimeError, match=message):
        SACLTrainer(plans, "3d_fullres", 0, dataset, torch.device("cpu"))


def test_pool_stage_outside_the_plan_is_refused(in_process_env):

    class TooDeep(SACLPretrainer_smoke):
        pool_stages = (9,)

    trainer = make_trainer(TooDeep)
    with pytest.raises(RuntimeError, match=r"pool_stages = \(9,\).*has 4 stages"):
        trainer.initialize()


def test_foreign_or_truncated_checkpoint_is_refused_with_its_name(in_process_env, tmp_path):
    trainer = make_trainer("SACLTrainer_smoke")
    truncated = tmp_path / "checkpoint_latest.pth"
    torch.save({"network_weights": {"a": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(RuntimeError, match="Cannot read checkpoint .*checkpoint_latest.pth"):
        trainer.load_checkpoint(str(truncated))
    foreign = tmp_path / "stock.pth"
    torch.save({"network_weights": {}}, foreign)
    with pytest.raises(RuntimeError, match="stock.pth was not written by a SACL trainer"):
        trainer.load_checkpoint(str(foreign))


def test_checkpoint_with_another_head_is_refused(in_process_env, tmp_path):

    class WiderHead(SACLPretrainer_smoke):
        head_out_channels = 64

    trainer = make_trainer("SACLPretrainer_smoke")
    trainer.initialize()
    file = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(file)
    other = make_trainer(WiderHead)
    with pytest.raises(RuntimeError, match=r"checkpoint_latest.pth does not match this WiderHead"):
        other.load_checkpoint(file)


def test_checkpoints_of_the_earlier_layout_resume_or_are_refused(in_process_env, tmp_path):
    """nnunet-sacl 0.1 kept phase 1 in fold_X itself, with the SACL state in every checkpoint: its segmentation
    checkpoints still resume; its pretraining checkpoints are refused with a message that says how to go on."""
    trainer = make_trainer("SACLTrainer_smoke")
    trainer.initialize()
    trainer.current_epoch = 1
    file = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(file)
    checkpoint = torch.load(file, weights_only=False)
    old_log = {"loss": [2.0, 1.8, 1.7], "lr": [0.01] * 3, "organs_per_batch": [5.0] * 3,
               "batches_without_positive": [0] * 3, "epoch_seconds": [1.0] * 3}
    torch.save(dict(checkpoint, sacl={"phase": "segmentation", "pretrain_epoch": 3, "pretrain_log": old_log,
                                      "head": None}), file)
    resumed = make_trainer("SACLTrainer_smoke")
    resumed.load_checkpoint(file)
    assert resumed.current_epoch == 2 and resumed.pretraining_done

    torch.save(dict(checkpoint, sacl={"phase": "pretrain", "pretrain_epoch": 2, "pretrain_log": old_log,
                                      "head": {}}), file)
    with pytest.raises(RuntimeError, match=r"checkpoint_latest.pth was written during SACL pretraining by an earlier "
                                           r"nnunet-sacl \(0.1\).*Delete .*checkpoint_latest.pth and start again "
                                           r"without --c"):
        make_trainer("SACLTrainer_smoke").load_checkpoint(file)


@pytest.mark.parametrize("error, says", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "Out of memory on cpu while resuming from {file} (free memory on it, e.g. other processes on this GPU): CUDA out "
     "of memory. Tried to allocate 2.00 GiB"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"),
     "CUDA error: an illegal memory access was encountered")], ids=["out-of-memory", "other-runtime-error"])
def test_errors_at_resume_that_are_no_mismatch_say_what_they_are(in_process_env, tmp_path, monkeypatch, error, says):
    """The optimizer's load_state_dict (it moves the momentum to the GPU) fails: out of memory is reported as one,
    another RuntimeError with its own text; neither says 'does not match'."""
    trainer = make_trainer("SACLPretrainer_smoke")
    trainer.initialize()
    file = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(file)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.optim.Optimizer, "load_state_dict", fail)
    with pytest.raises(type(error)) as raised:
        make_trainer("SACLPretrainer_smoke").load_checkpoint(file)
    assert str(raised.value) == says.format(file=file) and "does not match" not in str(raised.value)


def test_organ_x_phase_labels(in_process_env):
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunet_sacl.method.phases import PHASES_FILE

    class Phases(SACLPretrainer_smoke):
        use_phase_labels = True

    folder = join(str(nnUNet_preprocessed), DATASET_NAME)
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    data_folder = join(folder, "nnUNetPlans_3d_fullres")
    cases = sorted(infer_dataset_class(data_folder).get_identifiers(data_folder))
    phases_file = join(folder, PHASES_FILE)
    spec = {"phases": ["arterial", "venous"], "cases": {c: ["arterial", "venous"][i % 2] for i, c in enumerate(cases)}}
    try:
        json.dump(dict(spec, cases={c: p for c, p in list(spec["cases"].items())[1:]}), open(phases_file, "w"))
        trainer = make_trainer(Phases)
        with pytest.raises(ValueError, match=f"case {cases[0]} has no phase"):
            trainer.initialize()

        json.dump(spec, open(phases_file, "w"))
        trainer = make_trainer(Phases)
        trainer.initialize()
        batch = first_batch(trainer)
        z, organs, samples = trainer.embed(batch["data"], batch["target"][0])
        labels = trainer.contrastive_labels(organs, samples, batch["keys"])
        expected = [int(o) * 2 + cases.index(batch["keys"][int(s)]) % 2 for o, s in zip(organs, samples)]
        assert labels.tolist() == expected
        assert np.isfinite(trainer.train_step(batch)["loss"])
    finally:
        import os
        os.remove(phases_file)


def test_on_device_augmentation_crops_on_cpu_and_augments_the_batch(in_process_env):
    trainer = make_pretrainer("SACLTrainer_torchaug_smoke")
    trainer.initialize()
    batch = first_batch(trainer)
    patch = list(trainer.configuration_manager.patch_size)
    initial = list(trainer.augment_settings.initial_patch_size)
    assert list(batch["data"].shape[2:]) == initial and initial != patch       # CPU workers only cropped
    assert not isinstance(batch["target"], list)                              # no CPU transforms at all
    from nnunet_sacl.method.augment import augment_batch
    data, seg = augment_batch(batch["data"], batch["target"], trainer.augment_settings, trainer.augment_generator)
    assert list(data.shape[2:]) == patch and set(seg.unique().tolist()) <= {0, 1, 2, 3}
    assert np.isfinite(trainer.train_step(batch)["loss"])


@pytest.mark.parametrize("name", ["nnUNetTrainer_torchaug", "SACLTrainer_torchaug"])
def test_segmentation_step_with_on_device_augmentation(in_process_env, name):
    trainer = make_trainer(name)
    trainer.initialize()
    batch = first_batch(trainer)
    assert list(batch["data"].shape[2:]) == list(trainer.augment_settings.initial_patch_size)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(batch)["loss"]
    assert np.isfinite(loss)
    assert any(not torch.equal(p, q) for p, q in zip(trainer.network.parameters(), before))


class DCC(SACLPretrainer_smoke):
    intensity_weighted_negatives = True


def test_intensity_weighted_negatives(in_process_env):
    """SACLTrainer_DCC: the range comes from the CT plans, and a step's loss equals the loop reference computed from
    the batch's organ intensities (found here by boolean masks, independently of the trainer)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunet_sacl.method.losses import IntensityWeightedSupConLoss
    from tests.helpers import reference_intensity_weighted, reference_supcon

    plans = json.load(open(join(str(nnUNet_preprocessed), DATASET_NAME, "nnUNetPlans.json")))
    p = plans["foreground_intensity_properties_per_channel"]["0"]
    expected_range = (p["percentile_99_5"] - p["percentile_00_5"]) / p["std"]
    trainer = make_trainer(DCC)
    trainer.initialize()
    assert isinstance(trainer.contrastive_loss, IntensityWeightedSupConLoss)
    assert trainer.contrastive_loss.intensity_range.tolist() == pytest.approx([expected_range], rel=1e-6)
    batch = first_batch(trainer)
    data, seg = batch["data"], batch["target"][0]
    with torch.no_grad():
        z, organs, samples = trainer.embed(data, seg)
    intensities = [[float(data[s, 0][seg[s, 0] == o].double().mean())] for o, s in zip(organs, samples)]
    reference = reference_intensity_weighted(z, organs.tolist(), intensities, [expected_range], trainer.temperature)
    assert abs(reference - reference_supcon(z, organs.tolist(), trainer.temperature)) > 1e-3  # the weights matter
    out = trainer.train_step(batch)
    assert abs(float(out["loss"]) - reference) < 1e-4


def test_intensity_weighted_negatives_refuse_a_dataset_without_fixed_range(in_process_env):
    trainer = make_trainer(DCC)
    trainer.configuration_manager.configuration["normalization_schemes"] = ["ZScoreNormalization"]
    with pytest.raises(RuntimeError, match=r"DCC \(nnUNetPlans, 3d_fullres\): .*channel 0 is normalized with "
                                           r"ZScoreNormalization.*intensity_range"):
        trainer.initialize()

    class DCCWithRange(DCC):
        intensity_range = (6.0,)

    trainer = make_trainer(DCCWithRange)
    trainer.configuration_manager.configuration["normalization_schemes"] = ["ZScoreNormalization"]
    trainer.initialize()
    assert trainer.contrastive_loss.intensity_range.tolist() == [6.0]
