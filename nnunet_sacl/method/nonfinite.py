"""Skipping steps whose loss is NaN/inf, and stopping a run that keeps producing them: the same decision on every
rank."""
import torch
from torch import distributed as dist

from nnunet_sacl.method.distributed import is_distributed


class NonFiniteLossGuard:
    """Counts non-finite losses (whose steps are skipped) and stops the run after ``limit`` in a row.

    Under torch.distributed every rank takes the same decision: each rank's finite flag is all-reduced before
    backward (one flag per rank, so that the log can name the ranks that saw the NaN/inf; "skip" is the MIN of the
    finite flags). A rank that skipped its backward while the others ran theirs would pair different steps in
    DDP's gradient all-reduce: a hang until the collective timeout, or mixed gradients."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped_this_epoch = limit, 0, 0
        self.ranks_this_epoch = set()

    def nonfinite_ranks(self, loss: torch.Tensor) -> list:
        """The ranks whose loss is NaN/inf (``[0]`` or ``[]`` in one process); a collective under DDP."""
        bad = ~torch.isfinite(loss.detach()).all()
        if not is_distributed():
            return [0] if bool(bad) else []
        flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=loss.device)
        flags[dist.get_rank()] = bad.to(torch.int32)
        dist.all_reduce(flags)
        return [r for r, f in enumerate(flags.tolist()) if f]

    def is_finite(self, loss: torch.Tensor, where: str) -> bool:
        ranks = self.nonfinite_ranks(loss)
        if not ranks:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped_this_epoch += 1
        self.ranks_this_epoch.update(ranks)
        if self.in_a_row >= self.limit:
            raise RuntimeError(f"{self.in_a_row} non-finite losses in a row ({where}{_on_ranks(ranks)}): "
                               f"stopping. Lower the learning rate, check the data for NaN/inf, or raise "
                               f"max_nonfinite_in_a_row.")
        return False

    def take_epoch_count(self) -> int:
        n, self.skipped_this_epoch = self.skipped_this_epoch, 0
        return n

    def take_epoch_report(self) -> str:
        """'' when no step was skipped this epoch, else how many and on which ranks; resets the epoch's count."""
        n, ranks = self.take_epoch_count(), sorted(self.ranks_this_epoch)
        self.ranks_this_epoch = set()
        return f"Skipped {n} step(s) with a non-finite loss this epoch{_on_ranks(ranks)}" if n else ""


def _on_ranks(ranks) -> str:
    """'' in one process, else '; seen on rank(s) ...' (the ranks whose own loss was not finite)."""
    if not is_distributed():
        return ""
    return f"; seen on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
