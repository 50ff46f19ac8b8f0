"""Learning-rate and freezing schedules for fine-tuning a pretrained encoder (pure functions of the epoch)."""


def warmup_poly_lr(epoch: int, initial_lr: float, max_epochs: int, warmup_epochs: int = 0,
                   exponent: float = 0.9) -> float:
    """Linear warm-up, then nnU-Net's poly decay over the remaining epochs::

        lr(e) = initial_lr * (e + 1) / W                              for e < W
        lr(e) = initial_lr * (1 - (e - W) / (max_epochs - W)) ** 0.9  for e >= W

    With W = 0 this is exactly nnU-Net's PolyLRScheduler. The warm-up keeps the first large, noisy gradients of a
    fresh decoder from wrecking the pretrained encoder.
    """
    if not 0 <= warmup_epochs < max_epochs:
        raise ValueError(f"warmup epochs must be in 0..{max_epochs - 1}, got {warmup_epochs}")
    if epoch < warmup_epochs:
        return initial_lr * (epoch + 1) / warmup_epochs
    return initial_lr * (1 - (epoch - warmup_epochs) / (max_epochs - warmup_epochs)) ** exponent


def encoder_is_frozen(epoch: int, frozen_epochs: int) -> bool:
    """The encoder is frozen for the first ``frozen_epochs`` epochs (the decoder adapts to it first)."""
    return epoch < frozen_epochs


def convention_warmup_epochs(num_epochs: int, fraction: float = 0.05) -> int:
    """nnU-Net's convention for pretrained weights: a linear warm-up over the first 5% of the segmentation epochs
    (50 of 1000). At least one epoch and fewer than ``num_epochs`` (0 for a one-epoch run)."""
    if num_epochs < 2:
        return 0
    return min(max(1, round(fraction * num_epochs)), num_epochs - 1)


def group_lrs(epoch: int, groups, max_epochs: int, exponent: float = 0.9) -> list:
    """The learning rate of every parameter group at ``epoch``: each group is ``(initial_lr, warmup_epochs)`` and
    follows ``warmup_poly_lr`` with its own peak and warm-up, over the same ``max_epochs``."""
    return [warmup_poly_lr(epoch, lr, max_epochs, warmup, exponent) for lr, warmup in groups]


class GroupWarmupPolyLRScheduler:
    """Per-group warm-up + poly schedule, stepped by epoch as nnU-Net steps its PolyLRScheduler
    (``step(current_epoch)``). nnU-Net's own scheduler gives every group the same learning rate; this one sets each
    group's from ``group_lrs`` (the same ``(initial_lr, warmup_epochs)`` for every group: one warm-up + poly curve,
    as ``FineTuneScheduleMixin`` uses it). It sets the epoch-0 rates when built."""

    def __init__(self, optimizer, groups, max_steps: int, exponent: float = 0.9):
        groups = [tuple(g) for g in groups]
        if len(groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(groups)} schedules for {len(optimizer.param_groups)} parameter groups")
        self.optimizer, self.groups, self.max_steps, self.exponent = optimizer, groups, max_steps, exponent
        self.ctr = 0
        self.step()

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lrs = group_lrs(current_step, self.groups, self.max_steps, self.exponent)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group['lr'] = lr
        self._last_lr = lrs

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {"ctr": self.ctr}

    def load_state_dict(self, state: dict) -> None:
        self.ctr = state["ctr"]
