"""Every rank takes the same decisions: 2 gloo ranks under torchrun (``nnunet_sacl.train``), a NaN loss on rank 1
alone (both ranks skip that step, the run finishes, the ranks end with equal weights), and a frozen-encoder
schedule whose switch re-wraps DDP (the encoder stays put while frozen, the ranks stay equal)."""
import re

import pytest
import torch

from tests.helpers import fold_folder, training_log
from tests.helpers import finish, start, torchrun, torchrun_env, train_args

pytestmark = pytest.mark.slow   # nnU-Net subprocesses or whole trainings: not in the fast tier


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("trainer, epochs", [("SACLTrainer_nan_frozen", 2), ("SACLTrainer_joint_nan", 1)])
def test_a_nan_on_one_rank_is_skipped_by_every_rank(nnunet_env, preprocessed, tmp_path, trainer, epochs):
    records = tmp_path / "records"
    records.mkdir()
    env = torchrun_env(nnunet_env, tmp_path / "results", SACL_TEST_RECORDS=str(records))
    # a rank that stepped alone would leave the other waiting in DDP's all-reduce: the collective timeout makes
    # that a failure within a minute instead of a hang
    proc = start(torchrun("--standalone", "--nproc_per_node", "2", "-m", "nnunet_sacl.cli", "train",
                          *train_args(trainer, 0), "--collective-timeout", "60"), env)
    out = finish(proc)
    assert proc.returncode == 0, out[-6000:]
    log = training_log(fold_folder(env, trainer, 0))
    assert "Training done." in log
    assert "Skipped 1 step(s) with a non-finite loss this epoch; seen on rank 1" in log, log[-3000:]
    ranks = [torch.load(records / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    # rank 0's loss was finite: it skipped the step because rank 1's was not
    assert [r["nan_steps"] for r in ranks] == [[1] + [0] * (epochs - 1), [1] + [0] * (epochs - 1)]
    assert equal_states(ranks[0]["network"], ranks[1]["network"]), "the ranks' weights differ after the run"
    assert all(torch.isfinite(v.float()).all() for v in ranks[0]["network"].values())
    if trainer == "SACLTrainer_nan_frozen":
        for r in ranks:   # frozen in segmentation epoch 0, trained in epoch 1, equal across ranks at every switch
            assert equal_states(r["encoder"][0], r["encoder_at_start"]), "the frozen encoder moved"
            assert not equal_states(r["encoder"][1], r["encoder"][0]), "the encoder did not train after the switch"
        assert equal_states(ranks[0]["encoder"][1], ranks[1]["encoder"][1])
        assert re.search(r"Encoder frozen from epoch 0.*Encoder trainable from epoch 1", log, re.S)
