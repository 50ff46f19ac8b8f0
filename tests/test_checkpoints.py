"""save_atomically under SIGKILL: the file under the final name is always a whole checkpoint, and the .tmp a killed
save leaves behind does no harm to the next save."""
import os
import sys
import time
from os.path import isfile

import pytest
import torch

from nnunet_sacl.nnunet.checkpoints import read_checkpoint, save_atomically
from tests.helpers import kill_when

# A process that saves a large checkpoint (64 MB, many tensors) over and over: whenever it is killed, it is in the
# middle of writing one.
SAVE_FOREVER = """
import sys, torch
from pathlib import Path
from nnunet_sacl.nnunet.checkpoints import save_atomically
final, started = sys.argv[1], Path(sys.argv[2])
big = {"network_weights": {f"w{i}": torch.full((65536,), float(i)) for i in range(256)}}
while True:
    save_atomically(big, final)
    started.touch()
"""


def test_sigkill_during_save_leaves_a_whole_checkpoint_and_the_next_save_works(tmp_path):
    final, started = tmp_path / "checkpoint_latest.pth", tmp_path / "started"
    previous = {"network_weights": {"w0": torch.arange(10.0)}}
    save_atomically(previous, str(final))
    assert not isfile(f"{final}.tmp")

    # killed 0.3 s after its first complete save was seen, i.e. while writing a later one
    first_save_seen = []

    def ready():
        if not first_save_seen and isfile(started):
            first_save_seen.append(time.time())
        return bool(first_save_seen) and time.time() - first_save_seen[0] > 0.3

    kill_when([sys.executable, "-c", SAVE_FOREVER, str(final), str(started)], dict(os.environ), ready, timeout=120)
    assert isfile(started), "the saving process never finished a first save"

    weights = read_checkpoint(str(final))["network_weights"]    # a whole file: the previous one or a complete new one
    if len(weights) == 1:
        assert torch.equal(weights["w0"], previous["network_weights"]["w0"])
    else:
        assert sorted(weights) == sorted(f"w{i}" for i in range(256))
        assert all(torch.equal(weights[f"w{i}"], torch.full((65536,), float(i))) for i in range(256))
    leftovers = {p.name for p in tmp_path.iterdir()} - {final.name, started.name, f"{final.name}.tmp"}
    assert not leftovers, leftovers

    # a stale .tmp (from this kill, or written here when the kill fell between two saves) is overwritten, not read
    (tmp_path / f"{final.name}.tmp").write_bytes(b"half a checkpoint")
    save_atomically(previous, str(final))
    assert torch.equal(read_checkpoint(str(final))["network_weights"]["w0"], previous["network_weights"]["w0"])
    assert not isfile(f"{final}.tmp")


def test_failed_save_removes_its_tmp_and_keeps_the_old_file(tmp_path):
    final = tmp_path / "checkpoint_final.pth"
    save_atomically({"network_weights": {"w": torch.ones(3)}}, str(final))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle this"):
        save_atomically({"network_weights": {"w": torch.zeros(3)}, "bad": Unpicklable()}, str(final))
    assert torch.equal(read_checkpoint(str(final))["network_weights"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
