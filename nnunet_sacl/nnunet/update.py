"""nnU-Net's update step with a guard against non-finite losses, as a mixin for any nnU-Net trainer."""
import numpy as np
import torch
from torch import autocast

from nnunetv2.utilities.helpers import dummy_context

from nnunet_sacl.method.distributed import average_gradients, is_distributed
from nnunet_sacl.method.nonfinite import NonFiniteLossGuard


def batch_on_device(batch: dict, device: torch.device, full_resolution_only: bool = False) -> tuple:
    """``data`` and ``target`` of one of nnU-Net's training batches on ``device``, copied as nnU-Net's own train_step
    copies them (non-blocking): the target as the loader gives it (one tensor, or a list of one per deep-supervision
    scale), or with ``full_resolution_only`` only its full-resolution tensor (the first scale)."""
    data, target = batch['data'].to(device, non_blocking=True), batch['target']
    if full_resolution_only and isinstance(target, (list, tuple)):
        target = target[0]
    if isinstance(target, (list, tuple)):
        return data, [t.to(device, non_blocking=True) for t in target]
    return data, target.to(device, non_blocking=True)


class GuardedUpdateMixin:
    """Put before ``nnUNetTrainer``. A step whose loss is NaN/inf on any rank is skipped on every rank (the decision
    is all-reduced, ``NonFiniteLossGuard``); ``max_nonfinite_in_a_row`` of them stop the run. ``amp_context`` and
    ``backward_and_step`` are nnU-Net's mixed precision and update, shared by every SACL step."""

    max_nonfinite_in_a_row: int = 5            # skipped steps with a NaN/inf loss before the run stops

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.nonfinite = NonFiniteLossGuard(self.max_nonfinite_in_a_row)

    def amp_context(self):
        """nnU-Net's mixed precision: autocast (float16) on CUDA, none elsewhere. One method for every step of every
        SACL trainer, so that the tests can run the CUDA branch on a CPU (bfloat16 autocast there)."""
        return autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def train_step(self, batch: dict) -> dict:
        # Copies nnUNetTrainer.train_step (forward, loss, backward, clip, step in one body) to skip the step when the
        # loss is not finite: there is no hook between computing the loss and the optimizer step.
        data, target = batch_on_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp_context():
            loss = self.loss(self.network(data), target)
        if not self.nonfinite.is_finite(loss, f"segmentation epoch {self.current_epoch}"):
            return {'loss': np.nan}
        self.backward_and_step(loss, self.network.parameters())
        return {'loss': loss.detach().cpu().numpy()}

    def backward_and_step(self, loss: torch.Tensor, params, average_over_ranks: bool = False,
                          outside_ddp=()) -> None:
        """nnU-Net's update (GradScaler on CUDA, gradient norm clipped at 12). Under DDP the gradients of ``params``
        (all of them, for modules run outside DDP) or of ``outside_ddp`` (modules DDP does not wrap) are averaged
        here."""
        params = list(params)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()
        if average_over_ranks:
            average_gradients(params)
        elif outside_ddp and is_distributed():
            average_gradients(outside_ddp)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(params, 12)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def on_train_epoch_end(self, train_outputs: list):
        # nnU-Net logs the mean loss of the epoch's steps: the skipped ones (NaN) are left out
        finite = [o for o in train_outputs if np.isfinite(o['loss'])]
        skipped = self.nonfinite.take_epoch_report()
        if skipped:
            self.print_to_log_file(skipped)
        super().on_train_epoch_end(finite or train_outputs)
