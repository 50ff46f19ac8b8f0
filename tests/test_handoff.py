"""The product's promise, in process on nnU-Net-planned data: phase 1 is an nnU-Net training of its own in
fold_X/pretraining, phase 2 starts from its network (pretrained encoder, decoder as initialised) with a fresh
optimizer and poly schedule, pretrain_epochs = 0 skips phase 1, and SACLTrainer's copies
of nnU-Net's train_step / save_checkpoint still do what the installed nnU-Net's do."""
import glob
import os
from os.path import isfile, join

import numpy as np
import torch

from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.short_runs import SACLTrainer_smoke
from tests.trainers.torchrun_test_trainers import nnUNetTrainer_smoke
from tests.helpers import first_batch, make_trainer, stop_loaders


class _HandOff(SACLTrainer_smoke):
    """One pretraining epoch of two steps (settings as a user's variant sets them: class attributes, __init__)."""
    pretrain_epochs = 1
    run_iterations = 2


class _NoPretraining(SACLTrainer_smoke):
    """pretrain_epochs = 0 with one short segmentation epoch."""
    pretrain_epochs = 0
    run_epochs, run_iterations, run_val_iterations = 1, 1, 1


def split_keys(state_dict):
    """Encoder and decoder entries of a PlainConvUNet state dict (the decoder also lists the encoder it holds as
    'decoder.encoder.*'; those belong to the encoder)."""
    encoder = {k for k in state_dict if k.startswith("encoder.")}
    decoder = {k for k in state_dict if k.startswith("decoder.") and not k.startswith("decoder.encoder.")}
    assert encoder and decoder and not encoder & decoder
    return encoder, decoder


def snapshot(trainer):
    return {k: v.detach().clone() for k, v in unwrap(trainer.network).state_dict().items()}


def changed(before, after, keys):
    return {k for k in keys if not torch.equal(before[k], after[k])}


def test_hand_off_keeps_the_pretrained_encoder_and_starts_a_fresh_optimizer(in_process_env):
    trainer = make_trainer(_HandOff)
    assert (trainer.pretrain_epochs, trainer.num_iterations_per_epoch, trainer.pretraining_done) == (1, 2, False)
    try:
        trainer.run_pretraining()   # phase 1: nnU-Net's loop under fold_X/pretraining, the encoder file, the hand-off
        folder = trainer.pretraining_folder
        assert {"checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "debug.json"} <= set(os.listdir(folder))
        phase_one_log = open(glob.glob(join(folder, "training_log_*.txt"))[0]).read()
        assert "SACL pretraining epoch 0: contrastive loss" in phase_one_log and "Training done." in phase_one_log
        assert "do_dummy_2d_data_aug" in phase_one_log      # written from phase 1's first line on (initialize)
        phase_one = torch.load(join(folder, "checkpoint_final.pth"), weights_only=False)
        assert phase_one["sacl"]["phase"] == "pretraining" and phase_one["current_epoch"] == 1
        trained = phase_one["optimizer_state"]["state"]      # momentum for the encoder and the head only
        assert len(trained) == len(list(encoder_of(trainer.network).parameters())) + 4

        encoder_file = torch.load(join(trainer.output_folder, "checkpoint_sacl_encoder.pth"), weights_only=False)
        assert not changed(encoder_file["network_weights"], phase_one["network_weights"],
                           phase_one["network_weights"].keys())
        handed_off = snapshot(trainer)
        encoder_keys, decoder_keys = split_keys(handed_off)
        assert encoder_file["network_weights"].keys() == handed_off.keys()
        moved = sorted(changed(encoder_file["network_weights"], handed_off, handed_off.keys()))
        assert not moved, f"the hand-off changed {len(moved)} network tensors, e.g. {moved[:3]}"

        assert trainer.pretraining_done and trainer.current_epoch == 0 and not hasattr(trainer, "head")
        in_optimizer = [id(p) for group in trainer.optimizer.param_groups for p in group["params"]]
        network = [id(p) for p in trainer.network.parameters()]
        assert sorted(in_optimizer) == sorted(network), \
            f"the segmentation optimizer holds {len(in_optimizer)} tensors, not the network's {len(network)}"
        assert not trainer.optimizer.state, "the segmentation optimizer starts with momentum from pretraining"
        assert trainer.lr_scheduler.max_steps == trainer.num_epochs
        trainer.on_train_start()        # nnU-Net's: new data loaders for phase 2
        trainer.on_train_epoch_start()  # nnU-Net's: schedule stepped at current_epoch, LR logged
        assert trainer.optimizer.param_groups[0]["lr"] == trainer.initial_lr
        assert "Current learning rate: 0.01" in open(trainer.log_file).read().split("SACL pretraining done")[-1]

        batch = next(trainer.dataloader_train)
        assert np.isfinite(trainer.train_step(batch)["loss"])
        stepped = snapshot(trainer)
        assert changed(handed_off, stepped, encoder_keys) and changed(handed_off, stepped, decoder_keys)
        full_resolution_head = max(k for k in decoder_keys if k.startswith("decoder.seg_layers") and
                                   k.endswith(".weight"))
        assert changed(handed_off, stepped, {full_resolution_head}), "the segmentation head did not train"
    finally:
        stop_loaders(trainer)


def test_pretrain_epochs_zero_skips_pretraining(in_process_env):
    trainer = make_trainer(_NoPretraining)
    trainer.run_training()    # nnU-Net's loop: one epoch of one step, one validation step, checkpoint_final
    log = open(trainer.log_file).read()
    assert "SACL pretraining" not in log and "Training done." in log
    assert not os.path.exists(trainer.pretraining_root)
    assert not isfile(join(trainer.output_folder, trainer.encoder_file_name))
    in_optimizer = [id(p) for group in trainer.optimizer.param_groups for p in group["params"]]
    assert sorted(in_optimizer) == sorted(id(p) for p in trainer.network.parameters())
    final = torch.load(join(trainer.output_folder, "checkpoint_final.pth"), weights_only=False)
    assert final["sacl"] == {"phase": "segmentation", "pretrain_epochs": 0} and final["current_epoch"] == 1


def test_phase_two_step_and_checkpoint_equal_stock_nnunet(in_process_env, tmp_path):
    """SACLTrainer.train_step and save_checkpoint copy nnU-Net's bodies (to skip non-finite steps, to add the SACL
    entry and write atomically): with the same weights and batches they must give bit-identical parameters, losses
    and checkpoint entries. A new nnU-Net that changes its step or checkpoint fails here."""
    sacl, stock = make_trainer(_NoPretraining), make_trainer(nnUNetTrainer_smoke)
    sacl.initialize()
    stock.initialize()
    unwrap(stock.network).load_state_dict(unwrap(sacl.network).state_dict())
    batches = [first_batch(sacl)]
    first_batch(stock)        # nnU-Net's on_train_start also sets what a checkpoint records (mirroring axes)
    batches.append({k: (v.flip(-1) if torch.is_tensor(v) else [t.flip(-1) for t in v] if isinstance(v, list) else v)
                    for k, v in batches[0].items()})
    for batch in batches:     # two steps: the second one also uses the momentum of the first
        torch.manual_seed(0)
        loss_sacl = sacl.train_step(batch)["loss"]
        torch.manual_seed(0)
        loss_stock = stock.train_step(batch)["loss"]
        assert loss_sacl == loss_stock
    sacl_params, stock_params = dict(sacl.network.named_parameters()), dict(stock.network.named_parameters())
    assert sacl_params.keys() == stock_params.keys()
    different = [k for k in sacl_params if not torch.equal(sacl_params[k], stock_params[k])]
    assert not different, f"after the same steps, parameters differ from nnU-Net's: {different[:5]}"

    sacl.save_checkpoint(str(tmp_path / "sacl.pth"))
    stock.save_checkpoint(str(tmp_path / "stock.pth"))
    ours, theirs = (torch.load(tmp_path / f, weights_only=False) for f in ("sacl.pth", "stock.pth"))
    assert set(ours) - {"sacl"} == set(theirs), "nnU-Net's checkpoint entries changed: update save_checkpoint"
    for key in ("current_epoch", "_best_ema", "grad_scaler_state", "inference_allowed_mirroring_axes"):
        assert ours[key] == theirs[key], key
    assert ours["init_args"].keys() == theirs["init_args"].keys()
    assert ours["logging"].keys() >= theirs["logging"].keys()
    assert all(torch.equal(v, theirs["network_weights"][k]) for k, v in ours["network_weights"].items())
    assert ours["optimizer_state"]["param_groups"] == theirs["optimizer_state"]["param_groups"]
