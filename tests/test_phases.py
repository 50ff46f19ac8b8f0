"""The two phases of a SACLTrainer variant are run by the variant's own class (no class is built for phase 1): its
phase-1 instance trains with phase 1's length, optimizer and schedule whatever segmentation schedules the variant
has, and those act in phase 2 only; every shipped trainer's MRO names each class once."""
import pytest
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_sacl.nnunet import short_runs, variants
from nnunet_sacl.nnunet.lr_schedules import PretrainedConventionMixin
from nnunet_sacl.nnunet.network import encoder_of
from nnunet_sacl.nnunet.phases import PRETRAINING, SEGMENTATION, only_in, phase_of
from nnunet_sacl.nnunet.short_runs import _ShortRun
from nnunet_sacl.nnunet.torchrun import with_torchrun
from tests.helpers import make_trainer


@pytest.mark.parametrize("module", [variants, short_runs])
def test_every_shipped_trainer_names_each_class_once(module):
    for name in module.__all__:
        cls = getattr(module, name)
        names = [c.__name__ for c in cls.__mro__]
        assert len(names) == len(set(names)), f"{name}: {names}"
        assert phase_of(cls) == (PRETRAINING if "Pretrainer" in name else SEGMENTATION), name
        # under torchrun the launcher puts TorchrunMixin in front under the trainer's own name (nnU-Net names the
        # results folder, the checkpoint's trainer_name and the predictor's trainer from the class name): the one
        # repeated name is that wrapper's, over the class itself
        wrapped = [c.__name__ for c in with_torchrun(cls).__mro__]
        assert wrapped[0] == wrapped[2] == name and len(set(wrapped)) == len(wrapped) - 1, wrapped


def test_only_in_hands_over_to_the_next_class_in_the_other_phase():
    class Base:
        def step(self, x):
            return ["base", x]

    class Pretraining(Base):
        @only_in(PRETRAINING)
        def step(self, x):
            return ["pretraining"] + super().step(x)

    class Segmentation(Base):
        @only_in(SEGMENTATION)
        def step(self, x):
            return ["segmentation"] + super().step(x)

    class Both(Segmentation, Pretraining):
        phase = SEGMENTATION

    both = Both()
    assert both.step(1) == ["segmentation", "base", 1]
    both.phase = PRETRAINING
    assert both.step(2) == ["pretraining", "base", 2]
    assert Segmentation().step(3) == ["segmentation", "base", 3]     # no phase attribute: segmentation
    with pytest.raises(ValueError, match="phase 'finetuning'"):
        only_in("finetuning")


class _EverySchedule(_ShortRun, PretrainedConventionMixin, variants.SACLTrainer_splitlr):
    """Every segmentation schedule there is: nnU-Net's convention LR, split encoder/decoder LRs, a frozen encoder and
    a warm-up."""
    pretrain_epochs, run_epochs = 3, 4
    finetune_frozen_encoder_epochs, finetune_warmup_epochs = 2, 2


def test_phase_one_is_the_variants_own_class_and_its_segmentation_schedules_stand_aside(in_process_env):
    trainer = make_trainer(_EverySchedule)
    pretrainer = trainer.make_pretrainer()
    assert type(pretrainer) is _EverySchedule
    assert (trainer.phase, pretrainer.phase) == (SEGMENTATION, PRETRAINING)
    assert (trainer.num_epochs, pretrainer.num_epochs) == (4, 3)
    pretrainer.num_epochs = 40          # what a run-length variant's __init__ sets, whenever it runs
    assert pretrainer.num_epochs == 3 and pretrainer.seed_phase == 1 and trainer.seed_phase == 0
    pretrainer.initialize()
    # phase 1's optimizer and schedule: one group (encoder + head) at pretrain_initial_lr, poly over pretrain_epochs
    (group,) = pretrainer.optimizer.param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in pretrainer.pretraining_parameters()}
    assert group["lr"] == pytest.approx(pretrainer.pretrain_initial_lr)
    assert type(pretrainer.lr_scheduler) is PolyLRScheduler and pretrainer.lr_scheduler.max_steps == 3
    for epoch in range(3):
        pretrainer.current_epoch = epoch
        pretrainer.on_train_epoch_start()
        assert all(p.requires_grad for p in encoder_of(pretrainer.network).parameters()), epoch   # never frozen
        assert group["lr"] == pytest.approx(pretrainer.pretrain_initial_lr * (1 - epoch / 3) ** 0.9)
    assert "Learning rates:" not in open(pretrainer.log_file).read()
    # phase 2 of the same class: the schedules act
    trainer.initialize()
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["encoder", "decoder"]
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    assert not any(p.requires_grad for p in encoder_of(trainer.network).parameters())
    assert trainer.initial_lr == pytest.approx(1e-3)
    assert "Learning rates:" in open(trainer.log_file).read()
