"""Skipping steps whose loss is NaN/inf, and stopping a run that keeps producing them."""
import torch


class NonFiniteLossGuard:
    """Counts non-finite losses (whose steps are skipped) and stops the run after ``limit`` in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped_this_epoch = limit, 0, 0

    def is_finite(self, loss: torch.Tensor, where: str) -> bool:
        if bool(torch.isfinite(loss)):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped_this_epoch += 1
        if self.in_a_row >= self.limit:
            raise RuntimeError(f"{self.in_a_row} non-finite losses in a row ({where}): stopping. Lower the "
                               f"learning rate, check the data for NaN/inf, or raise max_nonfinite_in_a_row.")
        return False

    def take_epoch_count(self) -> int:
        n, self.skipped_this_epoch = self.skipped_this_epoch, 0
        return n
