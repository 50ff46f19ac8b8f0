"""Repeatable runs: ``SeededMixin`` gives any nnU-Net trainer a seed, so that the same command on the same machine
gives the same weights (on a CPU; what stays non-deterministic on CUDA is in docs/trainers.md, "Repeatable runs").

nnU-Net draws random numbers in three places, and the mixin seeds each:
- the network's initialisation (``initialize``): the same seed on every rank (DDP starts from rank 0's anyway);
- the main process after the data loaders are built (``on_train_start``): case sampling and augmentation when
  nnU-Net augments in the main process (``nnUNet_n_proc_DA=0``), and any other draw of the training loop;
- the augmentation workers (``get_dataloaders``): nnU-Net's ``NonDetMultiThreadedAugmenter`` hands batches over
  in whichever order its workers finish them, so seeding its workers is not enough. A seeded run uses
  batchgenerators' ordered ``MultiThreadedAugmenter`` instead (batches taken from the workers in turn), with one
  seed per worker, over the very loaders and transforms that nnU-Net's ``get_dataloaders`` built. That augmenter
  seeds numpy in each worker; nnU-Net's transforms (batchgeneratorsv2) also draw from torch, which the loader's
  transforms seed per worker here (``_TorchSeededPerWorker``).

Every seed is derived from the run's seed, the rank, the phase and the epoch the run starts at (``derived_seed``),
so ranks draw different batches, phase 1 and phase 2 of SACLTrainer different streams, and a run resumed with
``--c`` does not replay its first epochs' batches.
"""
import os
import random
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

SEED_VARIABLE = "SACL_SEED"   # a run's seed from the environment; overrides the trainer's ``seed`` attribute


def derived_seed(*entropy: int) -> int:
    """A 32-bit seed from integers (numpy's SeedSequence: well mixed, so nearby entropies give unrelated streams)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's (every device's) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_seed(trainer) -> Optional[int]:
    """The run's seed: $SACL_SEED when set, else the trainer's ``seed`` attribute (None: unseeded, nnU-Net's own
    behaviour)."""
    value = os.environ.get(SEED_VARIABLE, "").strip()
    if not value:
        return getattr(trainer, "seed", None)
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2 ** 32:
        raise RuntimeError(f"{SEED_VARIABLE}={value!r}: the seed must be a whole number from 0 to 2**32 - 1 "
                           f"(unset it for nnU-Net's unseeded training)")
    return seed


class _TorchSeededPerWorker:
    """A data loader's transforms that, on their first call in each process, seed torch from that process's numpy
    generator (which batchgenerators' MultiThreadedAugmenter seeds per worker before the first batch) and give torch
    one thread there, as nnU-Net's NonDetMultiThreadedAugmenter does in its workers (without it the workers' torch
    transforms compete for the cores: measured 12% slower epochs on 2 cores). Plain attributes only, so that it
    pickles where workers are spawned."""

    def __init__(self, transforms):
        self.transforms = transforms
        self.seeded_in = None

    def __call__(self, **batch):
        if self.seeded_in != os.getpid():
            self.seeded_in = os.getpid()
            torch.set_num_threads(1)
            torch.manual_seed(int(np.random.randint(2 ** 31)))
        return self.transforms(**batch)


@contextmanager
def _environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ordered_augmenters(trainer, train, val, processes: int, seed: int):
    """nnU-Net's data loaders (taken from its single-process augmenters ``train`` and ``val``) served by batchgenerators'
    ordered MultiThreadedAugmenter with nnU-Net's worker counts for ``processes`` (training: all, validation: half)
    and one seed per worker. nnU-Net's queues (max(6, n // 2) and max(3, n // 4) batches in all) become per-worker
    queues of at least 2 batches, since the ordered augmenter waits for each worker in turn."""
    augmenters = []
    for stream, single, workers, cached in ((0, train, processes, max(6, processes // 2)),
                                            (1, val, max(1, processes // 2), max(3, processes // 4))):
        loader = single.data_loader
        if loader.transforms is not None:
            loader.transforms = _TorchSeededPerWorker(loader.transforms)
        seeds = [derived_seed(seed, trainer.seed_phase, trainer.local_rank, trainer.current_epoch, 2 + stream, worker)
                 for worker in range(workers)]
        augmenter = MultiThreadedAugmenter(loader, single.transform, workers,
                                           num_cached_per_queue=max(2, -(-cached // workers)), seeds=seeds,
                                           pin_memory=trainer.device.type == 'cuda', wait_time=0.002)
        _ = next(augmenter)     # started now, as nnU-Net starts its own (and discards one batch)
        augmenters.append(augmenter)
    return tuple(augmenters)


class SeededMixin:
    """Put before ``nnUNetTrainer`` (SACL's trainers have it): with a seed (``seed`` class attribute, or $SACL_SEED),
    the same command on the same CPU machine gives the same weights, batches and Dice; without one (the default),
    nnU-Net's own unseeded training, unchanged. See the module's docstring for what is seeded where."""

    seed: Optional[int] = None
    seed_phase = 0      # SACL's phase 1 draws its own streams (SACLPretrainer sets 1)

    def initialize(self):
        seed = run_seed(self)
        if seed is not None and not self.was_initialized:
            seed_everything(derived_seed(seed, self.seed_phase))   # the network (and heads): equal on every rank
        super().initialize()

    def get_dataloaders(self):
        seed = run_seed(self)
        if seed is None:
            return super().get_dataloaders()
        # nnU-Net's own loaders and transforms, built in this process (nnUNet_n_proc_DA=0), then served in order by
        # as many workers as nnU-Net would start (0: its single-process augmenter, seeded in on_train_start)
        processes = get_allowed_n_proc_DA()
        with _environment(nnUNet_n_proc_DA="0"):
            train, val = super().get_dataloaders()
        return (train, val) if processes == 0 else ordered_augmenters(self, train, val, processes, seed)

    def on_train_start(self):
        super().on_train_start()        # initialize (when not yet), data loaders, ...
        seed = run_seed(self)
        if seed is not None:
            seed_everything(derived_seed(seed, self.seed_phase, self.local_rank, self.current_epoch, 1))
            self.print_to_log_file(f"Seeded run: seed {seed} (augmentation workers: {get_allowed_n_proc_DA()}, "
                                   f"served in order)")
