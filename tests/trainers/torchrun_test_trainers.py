"""The tests' own trainers (short lengths, torchrun, ranks, a run killed and resumed), found through
nnUNet_extTrainer: the tests' nnU-Net environment names this folder beside the package's (helpers.make_nnunet_env);
in process the tests import them from here."""
import json
import os
import time
from collections import Counter
from contextlib import contextmanager

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.nnunet.joint import SACLTrainer_joint
from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.trainer import SACLTrainer
from nnunet_sacl.nnunet.short_runs import SACLPretrainer_smoke, SACLTrainer_demo, SACLTrainer_smoke, ShortRun, \
    nnUNetTrainer_demo


# ---------------------------------------------------------------- short lengths of the tests

class SACLPretrainer_torchaug_smoke(SACLPretrainer_smoke):
    """SACLPretrainer_smoke augmenting on the device: SACLTrainer_torchaug_smoke's phase 1."""
    pretrain_augmentation = "torch"


class SACLTrainer_torchaug_smoke(SACLTrainer_smoke):
    """CPU smoke test of phase 1 with nnunet_sacl.method.augment (the on-device path that CUDA runs use by default)."""
    pretrain_augmentation = "torch"
    pretrainer_class = SACLPretrainer_torchaug_smoke


class nnUNetTrainer_smoke(ShortRun, nnUNetTrainer):
    """Stock nnU-Net with SACLTrainer_smoke's segmentation length: the baseline (and -pretrained_weights target)."""


class SACLTrainer_joint_smoke(ShortRun, SACLTrainer_joint):
    """CPU smoke test of the joint trainer: 2 epochs of 4 iterations (2 validation iterations)."""


class SACLTrainer_demo_smoke(SACLTrainer_demo):
    """CPU test of the demo: 3 pretraining + 2 segmentation epochs of 4 iterations, batch 4."""
    pretrain_epochs, run_epochs, run_iterations, run_batch_size = 3, 2, 4, 4


class nnUNetTrainer_demo_smoke(nnUNetTrainer_demo):
    """CPU test of the demo's baseline: 5 epochs of 4 iterations, batch 4 (SACLTrainer_demo_smoke's total)."""
    run_epochs, run_iterations, run_batch_size = 5, 4, 4


# ---------------------------------------------------------------- torchrun, ranks, killed runs


class SACLPretrainer_fixedbatch(SACLPretrainer_smoke):
    """One pretraining step on a fixed, seeded global batch: rank r of W gets its slice of it (nnU-Net's split),
    one process gets all of it. Rank r seeds its initial weights with r: a 2-rank run ends equal to a 1-process run
    only when rank 0's network and projection head reach every rank."""
    run_epochs = 1
    run_iterations = 1

    def initialize(self):
        torch.manual_seed(torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)
        super().initialize()

    def get_dataloaders(self):
        world = torch.distributed.get_world_size() if self.is_ddp else 1
        rank = torch.distributed.get_rank() if self.is_ddp else 0
        total = self.configuration_manager.batch_size
        low = rank * (total // world) + min(rank, total % world)
        assert self.batch_size == total // world + (rank < total % world)
        g = torch.Generator().manual_seed(1)
        shape = (total, self.num_input_channels, *self.configuration_manager.patch_size)
        data = torch.randn(shape, generator=g)
        seg = torch.randint(0, len(self.label_manager.all_labels), (total, 1, *shape[2:]), generator=g).float()
        part = slice(low, low + self.batch_size)
        batch = {"data": data[part], "target": seg[part], "keys": [f"case{i}" for i in range(total)][part]}
        return _Repeat(batch), _Repeat(batch)

    def train_step(self, batch: dict) -> dict:
        if not self.is_ddp:
            return super().train_step(batch)
        with counted_collectives() as counts:
            outputs = super().train_step(batch)
        self.print_to_log_file("collective payload of one pretraining step on this rank (bytes): "
                               + ", ".join(f"{op} {n}" for op, n in sorted(counts.items())))
        return outputs


@contextmanager
def counted_collectives():
    """Bytes each collective call takes from this rank (all_gather: its input; all_reduce: the tensor)."""
    counts, dist = Counter(), torch.distributed
    originals = {op: getattr(dist, op) for op in ("all_gather", "all_reduce", "broadcast")}

    def counting(op):
        def call(*args, **kwargs):
            tensor = args[1] if op == "all_gather" else args[0]
            counts[op] += tensor.numel() * tensor.element_size()
            counts[op + " calls"] += 1
            counts[op + " largest call"] = max(counts[op + " largest call"], tensor.numel() * tensor.element_size())
            return originals[op](*args, **kwargs)
        return call

    for op in originals:
        setattr(dist, op, counting(op))
    try:
        yield counts
    finally:
        for op, original in originals.items():
            setattr(dist, op, original)


class _Repeat:
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch


class _NoFinalValidation:
    """Skips nnU-Net's final validation (README's run and SACLTrainer_smoke's torchrun run cover it)."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (test trainer)")


class SACLTrainer_tiny(_NoFinalValidation, SACLTrainer_smoke):
    """SACLTrainer_smoke, shorter: 3 pretraining epochs of 2 iterations, 1 segmentation epoch of 2 iterations, no
    final validation (SACLTrainer_smoke's run in test_torchrun.py covers it under torchrun)."""
    run_epochs, run_iterations, run_val_iterations = 1, 2, 1


class SACLTrainer_initstyle(_NoFinalValidation, SACLTrainer):
    """A variant written nnU-Net's way, its settings set in __init__: 2 pretraining epochs of 3 iterations at lr
    5e-3, then 1 segmentation epoch at lr 2e-3, 1 validation iteration per epoch."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pretrain_epochs, self.pretrain_initial_lr = 2, 5e-3
        self.num_epochs, self.initial_lr = 1, 2e-3
        self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 3, 1


class nnUNetTrainer_smoke_noval(_NoFinalValidation, nnUNetTrainer_smoke):
    """Stock nnUNetTrainer_smoke without the final validation (SACLTrainer_smoke's run in test_torchrun.py covers
    nnU-Net's final validation under torchrun)."""


class SACLTrainer_torchaug_smoke_noval(_NoFinalValidation, SACLTrainer_torchaug_smoke):
    """SACLTrainer_torchaug_smoke without the final validation, for a run that is killed and resumed (README's
    SACLTrainer_smoke run covers SACLTrainer's phase 2 with nnU-Net's final validation)."""


class nnUNetTrainer_tiny(nnUNetTrainer_smoke):
    """nnUNetTrainer_smoke with 1 training and 1 validation iteration in each of its 2 epochs, then nnU-Net's final
    validation: for runs whose outputs a test examines, not what they learnt (the study regimes' runs)."""
    run_iterations, run_val_iterations = 1, 1


class _RecordsRanks(_NoFinalValidation):
    """Rank 1's segmentation loss is NaN at its second training step (NaN times the output, so a step taken on it
    would poison the weights); every rank writes what it saw (NaN steps per epoch, encoder after each epoch, final
    network) to $SACL_TEST_RECORDS/rank<r>.pt, since only rank 0 writes the training log."""
    nan_on_rank, nan_at_step = 1, 1

    def initialize(self):
        super().initialize()
        self._rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self._step, self._records = 0, {"nan_steps": [], "encoder": []}
        loss = self.loss

        def loss_with_a_nan(output, target):
            value = loss(output, target)
            if self.network.training:
                if self._rank == self.nan_on_rank and self._step == self.nan_at_step:
                    value = value * float("nan")
                self._step += 1
            return value
        self.loss = loss_with_a_nan

    def on_train_start(self):
        super().on_train_start()
        self._records["encoder_at_start"] = _encoder_state(self)

    def on_train_epoch_end(self, train_outputs):
        self._records["nan_steps"].append(sum(not np.isfinite(float(o["loss"])) for o in train_outputs))
        super().on_train_epoch_end(train_outputs)

    def on_epoch_end(self):
        self._records["encoder"].append(_encoder_state(self))
        super().on_epoch_end()

    def on_train_end(self):
        self._records["network"] = {k: v.detach().cpu().clone() for k, v in unwrap(self.network).state_dict().items()}
        torch.save(self._records, os.path.join(os.environ["SACL_TEST_RECORDS"], f"rank{self._rank}.pt"))
        super().on_train_end()


def _encoder_state(trainer) -> dict:
    return {k: v.detach().cpu().clone() for k, v in encoder_of(trainer.network).state_dict().items()}


class SACLTrainer_nan_frozen(_RecordsRanks, SACLTrainer_smoke):
    """1 pretraining epoch, then 2 segmentation epochs of 2 iterations with the encoder frozen in the first; rank 1's
    second segmentation step has a NaN loss."""
    pretrain_epochs, run_epochs, run_iterations, run_val_iterations = 1, 2, 2, 1
    finetune_frozen_encoder_epochs = 1


class SACLTrainer_joint_nan(_RecordsRanks, SACLTrainer_joint_smoke):
    """The joint trainer, 1 epoch of 2 iterations; rank 1's second step has a NaN segmentation loss."""
    run_epochs, run_iterations, run_val_iterations = 1, 2, 1


class nnUNetTrainer_probe(nnUNetTrainer):
    """Trains nothing: where training would start (run_training) it writes the process's set-up to
    $PROBE_DIR/rank<R>.json, then fails as $PROBE_FAULT says: 'peer_gone' (rank 1 exits, rank 0's next
    collective finds it gone) or 'timeout_text' (an error that is no communication error but says "timed out")."""

    def run_training(self):
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_initialized() else 0
        state = {"cudnn.benchmark": torch.backends.cudnn.benchmark,
                 "cudnn.deterministic": torch.backends.cudnn.deterministic,
                 "num_threads": torch.get_num_threads(), "num_interop_threads": torch.get_num_interop_threads()}
        with open(os.path.join(os.environ["PROBE_DIR"], f"rank{rank}.json"), "w") as f:
            json.dump(state, f)
        fault = os.environ.get("PROBE_FAULT")
        if fault == "timeout_text":
            raise RuntimeError("DataLoader timed out after 60 seconds")
        if fault == "peer_gone":
            if rank == 1:
                os._exit(0)
            time.sleep(2)
            dist.all_reduce(torch.zeros(1))

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass


class nnUNetTrainer_tiny_twin(nnUNetTrainer_tiny):
    """nnUNetTrainer_tiny under another name: two arms of one trainer, which a seeded study must call level."""
