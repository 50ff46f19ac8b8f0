"""Repeatable runs (nnunet_sacl.nnunet.seeding): a seeded trainer, trained twice in process with nnU-Net's
augmentation workers, ends with bit-identical weights; another seed ($SACL_SEED) ends elsewhere. Stock nnU-Net
through the mixin, and SACLTrainer's two phases."""
import numpy as np
import pytest
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

from nnunet_sacl.nnunet.network import unwrap
from nnunet_sacl.nnunet.seeding import SEED_VARIABLE, derived_seed, run_seed
from nnunet_sacl.nnunet.short_runs import SACLTrainer_smoke
from tests.trainers.torchrun_test_trainers import nnUNetTrainer_smoke
from nnunet_sacl.nnunet.variants import nnUNetTrainer_seeded
from tests.helpers import make_trainer


class _Stock(nnUNetTrainer_smoke):
    """Stock nnU-Net with SeededMixin (seed 0): 2 epochs of 2 iterations."""
    run_epochs, run_iterations, run_val_iterations = 2, 2, 1


class _Unseeded(_Stock):
    """_Stock without a seed: nnU-Net's own data loaders."""
    seed = None


class _SACL(SACLTrainer_smoke):
    """SACLTrainer (seed 0): 1 pretraining + 1 segmentation epoch of 2 iterations."""
    pretrain_epochs = 1
    run_epochs, run_iterations, run_val_iterations = 1, 2, 1


def train(trainer_class, results, monkeypatch, seed=None):
    """One in-process run with two augmentation workers in its own results folder: its final weights, and the
    weights phase 1 handed over (SACL), as numpy arrays."""
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    if seed is None:
        monkeypatch.delenv(SEED_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(SEED_VARIABLE, str(seed))
    trainer = make_trainer(trainer_class)
    trainer.run_training()
    assert isinstance(trainer.dataloader_train, MultiThreadedAugmenter)   # the ordered augmenter, with workers
    weights = {k: v.detach().cpu().numpy().copy() for k, v in unwrap(trainer.network).state_dict().items()}
    encoder_file = getattr(trainer, "encoder_file_name", None)
    handed = None
    if encoder_file:
        handed = torch.load(f"{trainer.output_folder}/{encoder_file}", weights_only=True)["network_weights"]
        handed = {k: v.numpy() for k, v in handed.items()}
    return weights, handed


def differing(a, b):
    return sorted(k for k in a if not np.array_equal(a[k], b[k]))


@pytest.mark.parametrize("trainer_class", [_Stock, _SACL], ids=["stock", "sacl"])
def test_same_seed_same_weights_other_seed_other_weights(trainer_class, in_process_env, tmp_path, monkeypatch):
    first, first_handed = train(trainer_class, tmp_path / "a", monkeypatch)
    again, again_handed = train(trainer_class, tmp_path / "b", monkeypatch)
    other, other_handed = train(trainer_class, tmp_path / "c", monkeypatch, seed=1)
    assert differing(first, again) == []
    assert len(differing(first, other)) > len(first) // 2          # most tensors differ under another seed
    if first_handed is not None:                                   # SACL: phase 1 repeats too
        assert differing(first_handed, again_handed) == []
        assert differing(first_handed, other_handed)


def test_seed_from_environment_or_class(monkeypatch):
    trainer = nnUNetTrainer_seeded.__new__(nnUNetTrainer_seeded)
    monkeypatch.delenv(SEED_VARIABLE, raising=False)
    assert run_seed(trainer) == 0
    monkeypatch.setenv(SEED_VARIABLE, "17")
    assert run_seed(trainer) == 17
    for bad in ("x", "-1", "1.5", str(2 ** 32)):
        monkeypatch.setenv(SEED_VARIABLE, bad)
        with pytest.raises(RuntimeError, match=f"{SEED_VARIABLE}='{bad}'"):
            run_seed(trainer)
    assert derived_seed(0, 1) != derived_seed(1, 0) and derived_seed(3, 4) == derived_seed(3, 4)


def test_seeded_augmenters_keep_nnunets_worker_counts(in_process_env, monkeypatch):
    """The ordered augmenters copy nnU-Net's worker counts (training: all, validation: half of nnUNet_n_proc_DA):
    guarded against the installed nnU-Net's own get_dataloaders."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    monkeypatch.delenv(SEED_VARIABLE, raising=False)
    counts = {}
    for name, cls in (("stock", _Unseeded), ("seeded", _Stock)):
        trainer = make_trainer(cls)
        trainer.initialize()
        loaders = trainer.get_dataloaders()
        counts[name] = [loader.num_processes for loader in loaders]
        for loader in loaders:
            loader._finish()
    assert counts["seeded"] == counts["stock"] == [2, 1]
