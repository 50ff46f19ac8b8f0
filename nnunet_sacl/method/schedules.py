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
