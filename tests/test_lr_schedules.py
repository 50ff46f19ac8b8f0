"""Fine-tuning schedules for pretrained weights: nnU-Net's convention (LR 1e-3, 5% linear warm-up, poly) and
separate encoder/decoder LRs as parameter groups; pure curves, then in-process trainers built as nnUNetv2_train
builds them (the LR of every group at every epoch, and what one step changes)."""
import pytest
import torch

from nnunet_sacl.method.schedules import (GroupWarmupPolyLRScheduler, convention_warmup_epochs, group_lrs,
                                          warmup_poly_lr)
from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.short_runs import ShortRun
from nnunet_sacl.nnunet.variants import (SACLTrainer_ftconvention, SACLTrainer_splitlr, nnUNetTrainer_ftconvention,
                                         nnUNetTrainer_splitlr)
from tests.helpers import first_batch, make_trainer

EPOCHS = 20        # 5% of 20 = 1 warm-up epoch


def test_convention_warmup_is_five_percent_of_the_epochs():
    assert convention_warmup_epochs(1000) == 50 and convention_warmup_epochs(100) == 5
    assert [convention_warmup_epochs(n) for n in (1, 2, 16, 40)] == [0, 1, 1, 2]


def test_group_curves_and_scheduler():
    groups = [(1e-3, 4), (1e-2, 0)]
    lrs = [group_lrs(e, groups, 10) for e in range(10)]
    assert [lr[0] for lr in lrs[:4]] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert [lr[0] for lr in lrs[4:]] == pytest.approx([1e-3 * (1 - k / 6) ** 0.9 for k in range(6)])
    assert [lr[1] for lr in lrs] == pytest.approx([1e-2 * (1 - e / 10) ** 0.9 for e in range(10)])   # nnU-Net's poly
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]]}], lr=1.0)
    scheduler = GroupWarmupPolyLRScheduler(optimizer, groups, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(lrs[0])       # set when built
    for epoch in (3, 7, 0):                                                         # nnU-Net steps with the epoch
        scheduler.step(epoch)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(lrs[epoch])
    with pytest.raises(ValueError, match="2 parameter groups"):
        GroupWarmupPolyLRScheduler(optimizer, groups[:1], 10)


class _StockConvention(ShortRun, nnUNetTrainer_ftconvention):
    run_epochs = EPOCHS


class _SACLConvention(ShortRun, SACLTrainer_ftconvention):
    pretrain_epochs, run_epochs = 0, EPOCHS


class _StockSplit(ShortRun, nnUNetTrainer_splitlr):
    run_epochs = EPOCHS


class _SACLSplitFrozen(ShortRun, SACLTrainer_splitlr):
    """Split LRs composed with the frozen encoder of FineTuneScheduleMixin (first 2 epochs)."""
    pretrain_epochs, run_epochs, finetune_frozen_encoder_epochs = 0, EPOCHS, 2


def _decoder_params(net):
    return [p for n, p in net.named_parameters() if n.startswith("decoder.")]


def _step_changes(trainer, batch):
    net = unwrap(trainer.network)
    enc = [p.detach().clone() for p in encoder_of(net).parameters()]
    dec = [p.detach().clone() for p in _decoder_params(net)]
    trainer.train_step(batch)
    return (any(not torch.equal(p, q) for p, q in zip(encoder_of(net).parameters(), enc)),
            any(not torch.equal(p, q) for p, q in zip(_decoder_params(net), dec)))


@pytest.mark.parametrize("trainer_class", [_StockConvention, _SACLConvention])
def test_convention_lr_and_warmup_per_epoch(in_process_env, trainer_class):
    trainer = make_trainer(trainer_class)
    assert trainer.initial_lr == 1e-3 and trainer.num_epochs == EPOCHS
    trainer.initialize()
    batch = first_batch(trainer)
    expected = [warmup_poly_lr(e, 1e-3, EPOCHS, 1) for e in range(EPOCHS)]
    assert expected[0] == pytest.approx(1e-3) and expected[1] == pytest.approx(1e-3)
    for epoch in range(EPOCHS):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert [g["lr"] for g in trainer.optimizer.param_groups] == \
            pytest.approx([expected[epoch]] * len(trainer.optimizer.param_groups))
    assert _step_changes(trainer, batch) == (True, True)


@pytest.mark.parametrize("trainer_class", [_StockSplit, _SACLSplitFrozen])
def test_encoder_and_decoder_groups_follow_their_own_curves(in_process_env, trainer_class):
    trainer = make_trainer(trainer_class)
    trainer.initialize()
    batch = first_batch(trainer)
    net = unwrap(trainer.network)
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in encoder_of(net).parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.parameters()} - \
        {id(p) for p in encoder_of(net).parameters()}
    assert trainer.initial_lr == 1e-2
    expected = [group_lrs(e, [(1e-3, 1), (1e-2, 0)], EPOCHS) for e in range(EPOCHS)]
    frozen_epochs = getattr(trainer, "finetune_frozen_encoder_epochs", 0)
    for epoch in range(EPOCHS):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx(expected[epoch])
        if epoch in (0, frozen_epochs):
            encoder_changed, decoder_changed = _step_changes(trainer, batch)
            assert decoder_changed and encoder_changed == (epoch >= frozen_epochs), epoch
    log = open(trainer.log_file).read()
    assert f"Learning rates: encoder {expected[0][0]:.3g}, decoder {expected[0][1]:.3g}" in log
