"""Any nnU-Net trainer as a torchrun worker: device ``cuda:LOCAL_RANK`` (or the CPU), DDP without ``device_ids`` on
the CPU, only global rank 0 writes, a checkpoint every epoch when torchrun may restart the group.

nnU-Net's own ``nnUNetTrainer`` assumes ``mp.spawn`` on one node: it picks ``cuda:<global rank>`` and wraps the
network in ``DDP(device_ids=[global rank])``, which fails on a second node (no such GPU) and on the CPU (DDP takes
no ``device_ids`` for CPU modules). ``TorchrunMixin`` fixes both by subclassing; ``with_torchrun(cls)`` puts it in
front of any trainer class under the trainer's own name, so checkpoints record that name and
``nnUNetv2_predict -tr NAME`` loads the real class afterwards.
"""
import os
import tempfile
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def local_device(requested: torch.device) -> torch.device:
    """The device of this worker: ``cuda:LOCAL_RANK`` when CUDA was asked for, else the requested device."""
    if requested.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return requested


def restarts_allowed() -> int:
    """torchrun's ``--max-restarts`` as it tells its workers (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0) or 0)


def batch_split_problem(global_batch_size: int, world_size: int, where: str) -> Optional[str]:
    """Why the plan's batch cannot be split over the ranks, or None. nnU-Net splits the batch (and its foreground
    oversampling with it; for every global batch >= world size the split keeps the global number of oversampled
    samples exactly); fewer samples than ranks cannot be split."""
    if global_batch_size >= world_size:
        return None
    return (f"{where}: the plan's batch size {global_batch_size} is smaller than the world size {world_size}: "
            f"nnU-Net splits the batch over the ranks, so every rank needs at least one sample. Use at most "
            f"{global_batch_size} rank(s) (--nproc_per_node x --nnodes), or plan a larger batch size.")


class TorchrunMixin:
    """Put in front of an nnU-Net trainer (``with_torchrun``) to run it under torchrun; inert without a process
    group. ``local_rank`` keeps nnU-Net's meaning (the global rank: rank 0 writes the results folder)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._ddp_deferred = False
        if not self.is_ddp:
            return
        # nnU-Net samples patches with numpy's global generator: fresh OS entropy and the rank, so that ranks never
        # draw the same patches (even after a user seeded numpy alike in every process)
        np.random.seed(np.random.SeedSequence(spawn_key=(dist.get_rank(),)).generate_state(1)[0])
        self.device = local_device(device)   # nnU-Net chose cuda:<global rank>
        if self.device.type != "cuda":
            self.grad_scaler = None
        if restarts_allowed() > 0:           # a restart repeats at most the epoch it interrupted
            self.save_every = 1

    @contextmanager
    def _as_ddp(self):
        """nnU-Net's own split of batch and oversampling and its DDP loss settings, while initialize() runs with
        is_ddp off."""
        deferred, self.is_ddp = self.is_ddp, self.is_ddp or self._ddp_deferred
        try:
            yield
        finally:
            self.is_ddp = deferred

    def initialize(self):
        if self.was_initialized or not self.is_ddp:
            return super().initialize()
        problem = batch_split_problem(self.configuration_manager.batch_size, dist.get_world_size(),
                                      f"{self.__class__.__name__} ({self.plans_manager.plans_name}, "
                                      f"{self.configuration_name})")
        if problem:
            raise RuntimeError(problem)
        # nnU-Net's initialize wraps the network in DDP(device_ids=[global rank]); with is_ddp off it does not, and
        # the network is wrapped below for this worker's device
        self.is_ddp, self._ddp_deferred = False, True
        try:
            super().initialize()
        finally:
            self.is_ddp, self._ddp_deferred = True, False
        self.network = DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network),
                           device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _set_batch_size_and_oversample(self):
        with self._as_ddp():
            super()._set_batch_size_and_oversample()

    def _build_loss(self):
        with self._as_ddp():
            return super()._build_loss()

    def on_train_start(self):
        if self.local_rank == 0 or not self.is_ddp:
            return super().on_train_start()
        # nnU-Net's on_train_start copies plans.json, dataset.json and the fingerprint into the results folder from
        # every rank; the other ranks' copies go to a folder that is deleted right away
        folders = self.output_folder_base, self.output_folder
        with tempfile.TemporaryDirectory(prefix="nnunet_sacl_rank") as scratch:
            self.output_folder_base = self.output_folder = scratch
            try:
                super().on_train_start()
            finally:
                self.output_folder_base, self.output_folder = folders


def with_torchrun(trainer_class: type) -> type:
    """``trainer_class`` with ``TorchrunMixin`` in front, under the same name and module (see the module doc)."""
    if issubclass(trainer_class, TorchrunMixin):
        return trainer_class
    return type(trainer_class.__name__, (TorchrunMixin, trainer_class),
                {"__module__": trainer_class.__module__, "__qualname__": trainer_class.__qualname__,
                 "__doc__": trainer_class.__doc__})
