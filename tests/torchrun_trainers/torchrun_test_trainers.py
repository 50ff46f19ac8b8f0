"""Trainers for tests/test_torchrun.py, found through nnUNet_extTrainer (the test adds this folder to it)."""
import torch

from nnunet_sacl.nnunet.variants import SACLPretrainer_smoke, SACLTrainer_smoke


class SACLPretrainer_fixedbatch(SACLPretrainer_smoke):
    """One pretraining step on a fixed, seeded global batch: rank r of W gets its slice of it (nnU-Net's split),
    one process gets all of it; weights are seeded, so a 2-rank run and a 1-process run must end equal."""
    pretrain_epochs = 1
    run_iterations = 1

    def initialize(self):
        torch.manual_seed(0)   # same initial network and head in every process
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


class _Repeat:
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch


class SACLTrainer_tiny(SACLTrainer_smoke):
    """SACLTrainer_smoke, shorter: 3 pretraining epochs of 2 iterations, 1 segmentation epoch of 2 iterations."""
    run_epochs, run_iterations, run_val_iterations = 1, 2, 1
