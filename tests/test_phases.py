"""The two phases of a SACLTrainer variant: phase 1 is a SACLPretrainer (the one the variant names) that the trainer
builds and hands its settings as a value; each phase trains with its own length, optimizer and schedule, whatever
set them (class attributes or ``__init__``, nnU-Net's way); every shipped trainer's MRO names each class once."""
import math
import re

import pytest
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunet_sacl.nnunet import short_runs, variants
from nnunet_sacl.nnunet.lr_schedules import PretrainedConventionMixin
from nnunet_sacl.nnunet.network import encoder_of
from nnunet_sacl.nnunet.pretrainer import SACLPretrainer
from nnunet_sacl.nnunet.short_runs import ShortRun
from nnunet_sacl.nnunet.torchrun import TorchrunMixin, with_torchrun
from nnunet_sacl.nnunet.trainer import SACLTrainer
from tests.helpers import (D, fold_folder, make_trainer, nnunet_bin, pretraining_folder, pretraining_log, run,
                           train_env, training_log)

# what a SACLTrainer hands its pretrainer, written out here (not read from the code): the pretrainer's attribute, and
# the trainer's attribute it comes from
HANDED = {"num_epochs": "pretrain_epochs", "initial_lr": "pretrain_initial_lr", "weight_decay": "pretrain_weight_decay",
          "pretrain_augmentation": "pretrain_augmentation", "num_iterations_per_epoch": "num_iterations_per_epoch",
          "num_val_iterations_per_epoch": "num_val_iterations_per_epoch", "save_every": "save_every",
          "disable_checkpointing": "disable_checkpointing", "seed": "seed",
          "max_nonfinite_in_a_row": "max_nonfinite_in_a_row", "temperature": "temperature",
          "head_hidden_channels": "head_hidden_channels", "head_out_channels": "head_out_channels",
          "pool_stages": "pool_stages", "min_organ_voxels": "min_organ_voxels", "embedding": "embedding",
          "use_phase_labels": "use_phase_labels", "intensity_weighted_negatives": "intensity_weighted_negatives",
          "intensity_range": "intensity_range"}


@pytest.mark.parametrize("module", [variants, short_runs])
def test_every_shipped_trainer_names_each_class_once(module):
    for name in module.__all__:
        cls = getattr(module, name)
        names = [c.__name__ for c in cls.__mro__]
        assert len(names) == len(set(names)), f"{name}: {names}"
        # segmentation trainers and pretrainers are apart: SACLTrainer has no phase-1 step of its own
        assert issubclass(cls, SACLPretrainer) == ("Pretrainer" in name), name
        if issubclass(cls, SACLTrainer):
            assert issubclass(cls.pretrainer_class, SACLPretrainer), name
        # under torchrun the launcher puts TorchrunMixin in front under the trainer's own name (nnU-Net names the
        # results folder, the checkpoint's trainer_name and the predictor's trainer from the class name): the one
        # repeated name is that wrapper's, over the class itself
        wrapped = [c.__name__ for c in with_torchrun(cls).__mro__]
        assert wrapped[0] == wrapped[2] == name and len(set(wrapped)) == len(wrapped) - 1, wrapped


class _EverySchedule(ShortRun, PretrainedConventionMixin, variants.SACLTrainer_splitlr):
    """Every segmentation schedule there is: nnU-Net's convention LR, split encoder/decoder LRs, a frozen encoder and
    a warm-up."""
    pretrain_epochs, run_epochs = 3, 4
    finetune_frozen_encoder_epochs, finetune_warmup_epochs = 2, 2


def test_phase_one_is_a_pretrainer_with_its_own_schedule_and_the_segmentation_schedules_act_in_phase_two(
        in_process_env):
    trainer = make_trainer(_EverySchedule)
    pretrainer = trainer.make_pretrainer()
    assert type(pretrainer) is SACLPretrainer and not isinstance(pretrainer, SACLTrainer)
    assert pretrainer.output_folder == trainer.pretraining_folder      # nnU-Net's folder, where the trainer looks
    assert pretrainer.output_folder.startswith(trainer.pretraining_root)
    assert (trainer.num_epochs, pretrainer.num_epochs) == (4, 3)
    assert pretrainer.seed_phase == 1 and trainer.seed_phase == 0
    assert pretrainer.initial_lr == trainer.pretrain_initial_lr and trainer.initial_lr == pytest.approx(1e-3)
    pretrainer.initialize()
    # phase 1's optimizer and schedule: one group (encoder + head) at pretrain_initial_lr, poly over pretrain_epochs
    (group,) = pretrainer.optimizer.param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in pretrainer.pretraining_parameters()}
    assert group["lr"] == pytest.approx(trainer.pretrain_initial_lr)
    assert type(pretrainer.lr_scheduler) is PolyLRScheduler and pretrainer.lr_scheduler.max_steps == 3
    for epoch in range(3):
        pretrainer.current_epoch = epoch
        pretrainer.on_train_epoch_start()
        assert all(p.requires_grad for p in encoder_of(pretrainer.network).parameters()), epoch   # never frozen
        assert group["lr"] == pytest.approx(trainer.pretrain_initial_lr * (1 - epoch / 3) ** 0.9)
    assert "Learning rates:" not in open(pretrainer.log_file).read()
    # nnU-Net's log of phase 1 is where nnU-Net wrote it: in phase 1's folder, from its first line (the citation)
    assert pretrainer.log_file.startswith(pretrainer.output_folder)
    assert open(pretrainer.log_file).read().lstrip().startswith("#####")
    # phase 2: the schedules act
    trainer.initialize()
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["encoder", "decoder"]
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    assert not any(p.requires_grad for p in encoder_of(trainer.network).parameters())
    assert "Learning rates:" in open(trainer.log_file).read()


class _EverySettingChanged(SACLTrainer):
    """Every setting the pretrainer takes, set to a value of its own in __init__ (nnU-Net's way)."""

    def __init__(self, plans, configuration, fold, dataset_json, device):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pretrain_epochs, self.pretrain_initial_lr, self.pretrain_weight_decay = 7, 3e-3, 1e-4
        self.pretrain_augmentation, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = "torch", 6, 3
        self.save_every, self.disable_checkpointing, self.seed, self.max_nonfinite_in_a_row = 2, True, 11, 9
        self.temperature, self.head_hidden_channels, self.head_out_channels = 0.3, 64, 16
        self.pool_stages, self.min_organ_voxels, self.embedding = (-2, -1), 4, "paper_style"
        self.use_phase_labels, self.intensity_weighted_negatives, self.intensity_range = True, True, ((0.0, 1.0),)
        self.num_epochs, self.initial_lr = 5, 2e-2       # phase 2's


def test_every_setting_is_handed_to_the_pretrainer(in_process_env):
    trainer = make_trainer(_EverySettingChanged)
    pretrainer = trainer.make_pretrainer()
    for pretrainer_name, trainer_name in HANDED.items():
        expected = getattr(trainer, trainer_name)
        assert getattr(pretrainer, pretrainer_name) == expected, (pretrainer_name, expected)
        # each value differs from what the pretrainer would have had on its own
        assert getattr(SACLPretrainer, trainer_name, None) != expected or trainer_name in (
            "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every", "disable_checkpointing"), \
            trainer_name
    assert pretrainer.nonfinite.limit == 9
    assert pretrainer.encoder_file == f"{trainer.output_folder}/checkpoint_sacl_encoder.pth"
    assert (trainer.num_epochs, trainer.initial_lr) == (5, 2e-2)     # phase 2 keeps its own


class _NoMirroringVariant(ShortRun, nnUNetTrainerNoMirroring, SACLTrainer):
    """A variant whose augmentation (no mirroring) and batch size differ from the plans'."""
    pretrain_epochs = 1

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = 3


def test_the_variants_augmentation_and_batch_size_hold_in_phase_one(in_process_env):
    from nnunet_sacl.nnunet.augment_settings import augmentation_of
    trainer = make_trainer(_NoMirroringVariant)
    pretrainer = trainer.make_pretrainer()
    spatial, transforms = augmentation_of(pretrainer)
    assert spatial[3] is None and transforms is pretrainer.handed.transforms
    assert type(transforms).__name__ == "ComposeTransforms"
    assert "MirrorTransform" not in repr(transforms)
    stock = make_trainer(SACLTrainer).make_pretrainer()
    assert augmentation_of(stock)[0][3] is not None and "MirrorTransform" in repr(augmentation_of(stock)[1])
    pretrainer.initialize()
    assert pretrainer.batch_size == 3 != pretrainer.configuration_manager.batch_size


class _PretrainerInitStyle(SACLPretrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.initial_lr, self.temperature = 5, 4e-3, 0.2


def test_a_pretrainer_takes_its_own_settings_the_nnunet_way(in_process_env):
    pretrainer = make_trainer(_PretrainerInitStyle)
    assert (pretrainer.num_epochs, pretrainer.initial_lr, pretrainer.temperature) == (5, 4e-3, 0.2)
    pretrainer.initialize()
    assert pretrainer.lr_scheduler.max_steps == 5 and pretrainer.optimizer.param_groups[0]["lr"] == 4e-3
    assert make_trainer(SACLPretrainer).num_epochs == 100       # the default length: pretrain_epochs


def test_a_variant_under_torchrun_hands_over_to_a_torchrun_pretrainer(in_process_env):
    trainer = make_trainer(with_torchrun(variants.SACLTrainer))
    pretrainer = trainer.make_pretrainer()
    assert isinstance(pretrainer, TorchrunMixin) and type(pretrainer).__name__ == "SACLPretrainer"


@pytest.mark.slow
def test_a_variant_written_the_nnunet_way_runs_both_phases_at_its_lengths(nnunet_env, preprocessed):
    """``nnUNetv2_train -tr SACLTrainer_initstyle`` (tests/trainers: its settings set in __init__, nnU-Net's way):
    phase 1 runs 2 epochs of 3 iterations at lr 5e-3, phase 2 runs 1 epoch at lr 2e-3."""
    env = train_env(nnunet_env)
    run([nnunet_bin("nnUNetv2_train"), D, "3d_fullres", "3", "-tr", "SACLTrainer_initstyle", "-device", "cpu"], env)
    folder = fold_folder(nnunet_env, "SACLTrainer_initstyle", 3)
    phase_one, phase_two = pretraining_log(folder), training_log(folder)
    assert sorted(int(e) for e in re.findall(r"SACL pretraining epoch (\d+):", phase_one)) == [0, 1]
    assert "SACL pretraining: epochs 0..1, 3 iterations each" in phase_one
    assert re.findall(r"lr (\S+), organ", phase_one)[0].rstrip(",") == "0.00500"
    assert re.findall(r": Epoch (\d+) ?$", phase_two, re.M) == ["0"]
    assert math.isclose(float(re.findall(r"Current learning rate: (\S+)", phase_two)[0]), 2e-3, rel_tol=1e-3)
    assert pretraining_folder(folder).endswith("SACLPretrainer__nnUNetPlans__3d_fullres/fold_3")
