"""Fine-tuning schedules (warm-up, frozen encoder) and non-finite losses, on real nnU-Net trainers and data."""
import pytest
import torch

from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.variants import SACLTrainer_smoke, nnUNetTrainer_frozen50
from nnunet_sacl.schedules import warmup_poly_lr
from tests.test_trainer import first_batch, make_trainer


def test_warmup_poly_curve():
    lrs = [warmup_poly_lr(e, 1e-2, 10, 4) for e in range(10)]
    assert lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert lrs[4:] == pytest.approx([1e-2 * (1 - k / 6) ** 0.9 for k in range(6)])
    # without warm-up it is nnU-Net's poly schedule
    assert [warmup_poly_lr(e, 1e-2, 10) for e in range(10)] == pytest.approx([1e-2 * (1 - e / 10) ** 0.9
                                                                              for e in range(10)])
    with pytest.raises(ValueError, match="warmup epochs"):
        warmup_poly_lr(0, 1e-2, 10, 10)


class _Schedules(SACLTrainer_smoke):
    pretrain_epochs = 0
    finetune_warmup_epochs = 2
    finetune_frozen_encoder_epochs = 2
    run_epochs = 4


class _FrozenStock(nnUNetTrainer_frozen50):
    finetune_frozen_encoder_epochs = 2


@pytest.mark.parametrize("trainer_class", [_Schedules, _FrozenStock])
def test_frozen_encoder_then_unfrozen_with_warmup(in_process_env, trainer_class):
    trainer = make_trainer("SACLTrainer_smoke")
    trainer.__class__ = trainer_class   # the same plans and folders, the test's schedule
    trainer.num_epochs, trainer.phase = 4, "segmentation"
    trainer.initialize()
    batch = first_batch(trainer)
    net = unwrap(trainer.network)
    encoder = encoder_of(net)
    expected_lr = [warmup_poly_lr(e, trainer.initial_lr, 4, 2) for e in range(4)] if trainer_class is _Schedules \
        else [trainer.initial_lr * (1 - e / 4) ** 0.9 for e in range(4)]
    for epoch in range(4):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr[epoch])
        frozen = epoch < 2
        assert all(p.requires_grad != frozen for p in encoder.parameters())
        enc_before = [p.detach().clone() for p in encoder.parameters()]
        dec_before = [p.detach().clone() for n, p in net.named_parameters() if n.startswith("decoder.seg_layers")]
        trainer.train_step(batch)
        enc_changed = any(not torch.equal(p, q) for p, q in zip(encoder.parameters(), enc_before))
        assert enc_changed != frozen, f"epoch {epoch}: encoder changed={enc_changed}, frozen={frozen}"
        assert any(not torch.equal(p, q) for p, q in
                   zip([p for n, p in net.named_parameters() if n.startswith("decoder.seg_layers")], dec_before))


class _NaNLoss(torch.nn.Module):
    def forward(self, *args):
        return torch.tensor(float("nan"), requires_grad=True)


def test_nonfinite_losses_are_skipped_counted_and_stop_the_run(in_process_env):
    trainer = make_trainer("SACLTrainer_smoke")
    trainer.initialize()
    batch = first_batch(trainer)
    params = [p.detach().clone() for p in trainer.pretraining_parameters()]
    real_loss = trainer.contrastive_loss
    trainer.contrastive_loss = _NaNLoss()
    outputs = [trainer.pretrain_step(batch) for _ in range(2)]
    assert all(o["skipped"] for o in outputs)
    assert all(torch.equal(p, q) for p, q in zip(trainer.pretraining_parameters(), params))  # no step taken
    trainer.contrastive_loss = real_loss
    assert torch.isfinite(trainer.pretrain_step(batch)["loss"])      # the run goes on; the streak resets
    assert trainer.nonfinite.take_epoch_count() == 2
    trainer.contrastive_loss = _NaNLoss()
    for _ in range(trainer.max_nonfinite_in_a_row - 1):
        trainer.pretrain_step(batch)
    with pytest.raises(RuntimeError, match=r"5 non-finite losses in a row \(pretraining epoch 0\)"):
        trainer.pretrain_step(batch)
    # phase 2 uses the same guard
    trainer.phase, trainer.loss = "segmentation", _NaNLoss()
    trainer.nonfinite.in_a_row = 0
    assert trainer.train_step(batch)["loss"] != trainer.train_step(batch)["loss"]  # NaN, skipped
