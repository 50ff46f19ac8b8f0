"""Fine-tuning schedules (warm-up, frozen encoder) and non-finite losses, on real nnU-Net trainers and data."""
import numpy as np
import pytest
import torch

from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.short_runs import SACLTrainer_smoke, ShortRun
from nnunet_sacl.nnunet.variants import nnUNetTrainer_frozen50
from nnunet_sacl.method.schedules import warmup_poly_lr
from tests.helpers import first_batch, make_pretrainer, make_trainer


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


class _FrozenStock(ShortRun, nnUNetTrainer_frozen50):
    finetune_frozen_encoder_epochs = 2
    run_epochs = 4


@pytest.mark.parametrize("trainer_class", [_Schedules, _FrozenStock])
def test_frozen_encoder_then_unfrozen_with_warmup(in_process_env, trainer_class):
    trainer = make_trainer(trainer_class)
    assert trainer.num_epochs == 4 and getattr(trainer, "phase", "segmentation") == "segmentation"
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
    """A loss that is NaN but depends on the network's output, so a step that is not skipped poisons the weights."""

    def forward(self, output, *args, with_statistics=False):
        first = output[0] if isinstance(output, (list, tuple)) else output
        loss = first.float().mean() * float("nan")
        # as SupConLoss (the contrastive term asks for the batch's statistics): every row an anchor
        return (loss, {"anchors": torch.tensor(first.shape[0]), "rows": torch.tensor(first.shape[0])}) \
            if with_statistics else loss


def test_nonfinite_pretraining_losses_are_skipped_counted_and_stop_the_run(in_process_env):
    trainer = make_pretrainer("SACLTrainer_smoke")
    trainer.initialize()
    batch = first_batch(trainer)
    params = [p.detach().clone() for p in trainer.pretraining_parameters()]
    real_loss = trainer.contrastive_loss
    trainer.contrastive_loss = _NaNLoss()
    outputs = [trainer.train_step(batch) for _ in range(2)]
    assert all(np.isnan(o["loss"]) for o in outputs)
    assert all(torch.equal(p, q) for p, q in zip(trainer.pretraining_parameters(), params))  # no step taken
    trainer.contrastive_loss = real_loss
    assert np.isfinite(trainer.train_step(batch)["loss"])      # the run goes on; the streak resets
    assert trainer.nonfinite.take_epoch_count() == 2
    trainer.contrastive_loss = _NaNLoss()
    for _ in range(trainer.max_nonfinite_in_a_row - 1):
        trainer.train_step(batch)
    with pytest.raises(RuntimeError, match=r"5 non-finite losses in a row \(pretraining epoch 0\)"):
        trainer.train_step(batch)


class _SegmentationOnly(SACLTrainer_smoke):
    """pretrain_epochs = 0: a SACLTrainer whose run is phase 2 alone; stops after 3 in a row."""
    pretrain_epochs = 0
    max_nonfinite_in_a_row = 3


def _optimizer_state(trainer):
    return {k: {n: t.clone() for n, t in v.items()} for k, v in trainer.optimizer.state_dict()["state"].items()}


def test_nonfinite_segmentation_losses_are_skipped_counted_and_stop_the_run(in_process_env):
    trainer = make_trainer(_SegmentationOnly)
    trainer.initialize()
    batch = first_batch(trainer)
    assert np.isfinite(trainer.train_step(batch)["loss"])   # a real step first: momentum buffers exist
    params = [p.detach().clone() for p in trainer.network.parameters()]
    state = _optimizer_state(trainer)
    assert state
    real_loss, limit = trainer.loss, trainer.max_nonfinite_in_a_row
    trainer.loss = _NaNLoss()
    outputs = [trainer.train_step(batch) for _ in range(limit - 1)]
    assert all(np.isnan(o["loss"]) for o in outputs)
    assert all(torch.equal(p, q) for p, q in zip(trainer.network.parameters(), params)), \
        "a step with a NaN loss changed the parameters"
    after = _optimizer_state(trainer)
    assert after.keys() == state.keys() and all(
        torch.equal(after[k][n], state[k][n]) for k in state for n in state[k])           # momentum untouched
    trainer.loss = real_loss
    outputs.append(trainer.train_step(batch))          # one finite step resets the streak ...
    assert np.isfinite(outputs[-1]["loss"])
    trainer.loss = _NaNLoss()
    outputs += [trainer.train_step(batch) for _ in range(limit - 1)]    # ... so limit - 1 more do not stop the run
    trainer.on_train_epoch_end(outputs)
    assert f"Skipped {2 * (limit - 1)} step(s) with a non-finite loss this epoch" in open(trainer.log_file).read()
    assert trainer.logger.get_checkpoint()["train_losses"][-1] == pytest.approx(float(outputs[limit - 1]["loss"]))
    trainer.nonfinite.in_a_row = 0
    for _ in range(limit - 1):
        trainer.train_step(batch)
    with pytest.raises(RuntimeError, match=rf"{limit} non-finite losses in a row \(segmentation epoch 0\)"):
        trainer.train_step(batch)
