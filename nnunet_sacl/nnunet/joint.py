"""SACLTrainer_joint: one phase, nnU-Net's segmentation loss plus a weighted SupCon term on the same forward pass."""
import numpy as np
import torch
from torch import distributed as dist

from nnunet_sacl.method.distributed import is_distributed
from nnunet_sacl.nnunet.network import encoder_of
from nnunet_sacl.nnunet.trainer import SACLTrainer


class SACLTrainer_joint(SACLTrainer):
    """No pretraining phase: every step minimises ``seg_loss + joint_contrastive_weight * SupCon``, the SupCon term
    taken over mask-pooled organ embeddings of the encoder features that the segmentation forward pass computed
    anyway (the encoder runs once per step). The projection head is trained alongside (its own parameter group in
    nnU-Net's optimizer, its state in every checkpoint); it is not part of ``network_weights``, so
    ``nnUNetv2_predict`` and ``-pretrained_weights`` see nnU-Net's own network.

    ``joint_contrastive_weight = 0`` is exactly nnU-Net's step (the contrastive term is not computed).
    """

    pretrain_epochs = 0
    joint_contrastive_weight: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.pretrain_epochs != 0:
            raise RuntimeError(f"{self.__class__.__name__}.pretrain_epochs = {self.pretrain_epochs}: the joint "
                               f"trainer has one phase; set joint_contrastive_weight, or use SACLTrainer for two")
        if not self.joint_contrastive_weight >= 0:
            raise RuntimeError(f"{self.__class__.__name__}.joint_contrastive_weight = "
                               f"{self.joint_contrastive_weight}: must be a number >= 0")
        self._encoder_features = None

    def initialize(self):
        if self.embedding != "mask_pool":
            raise RuntimeError(f"{self.__class__.__name__}.embedding = {self.embedding!r}: the joint trainer pools "
                               f"the segmentation pass's own encoder features, so only 'mask_pool' applies")
        super().initialize()
        # the encoder's output (its skips) is kept from the network's forward: through nnU-Net's DDP and compile
        # wrappers, so DDP still averages every network gradient, the contrastive term's included
        encoder_of(self.network).register_forward_hook(self._keep_encoder_features)
        # nnU-Net built the optimizer before the head existed: build it again with the head's parameter group
        self.optimizer, self.lr_scheduler = self.configure_optimizers()

    def _keep_encoder_features(self, module, inputs, output):
        # only a training forward's features feed the contrastive term: validation and inference run the network
        # in eval mode, and keeping their features would hold a whole batch of skips until the next step
        if module.training:
            self._encoder_features = output

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        if self.head is not None:
            # same SGD settings; nnU-Net's poly schedule sets the learning rate of every parameter group
            optimizer.add_param_group({'params': list(self.head.parameters())})
        return optimizer, scheduler

    def head_in_checkpoint(self) -> bool:
        return True

    def train_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        full_resolution = target[0] if isinstance(target, list) else target
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp_context():
            self._encoder_features = None
            segmentation_loss = self.loss(self.network(data), target)
            features, self._encoder_features = self._encoder_features, None
            if self.joint_contrastive_weight > 0:
                z, organs, samples = self.embed_features(features, full_resolution)
                contrastive, statistics = self.contrastive_term(z, organs, samples, data, full_resolution,
                                                                batch.get('keys'))
                loss = segmentation_loss + self.joint_contrastive_weight * contrastive
                without_positive = float(statistics['anchors'] == 0)
            else:
                contrastive, loss, without_positive = None, segmentation_loss, 0.0
        if not self.nonfinite.is_finite(loss, f"joint training epoch {self.current_epoch}"):
            return {'loss': np.nan, 'segmentation': np.nan, 'contrastive': np.nan,
                    'without_positive': without_positive}
        self.backward_and_step(loss, list(self.network.parameters()) + list(self.head.parameters()),
                               outside_ddp=list(self.head.parameters()))
        return {'loss': loss.detach().cpu().numpy(), 'segmentation': segmentation_loss.detach().cpu().numpy(),
                'contrastive': np.nan if contrastive is None else contrastive.detach().cpu().numpy(),
                'without_positive': without_positive}

    def on_train_epoch_end(self, train_outputs: list):
        finite = [o for o in train_outputs if np.isfinite(o['loss'])] or train_outputs
        terms = torch.tensor([[float(o['segmentation']), float(o['contrastive'])] for o in finite],
                             dtype=torch.float64).mean(0)
        without_positive = torch.tensor(sum(o['without_positive'] for o in train_outputs), dtype=torch.float64)
        if is_distributed():
            stats = torch.cat([terms, without_positive.reshape(1)]).to(self.device)
            dist.all_reduce(stats)
            stats /= dist.get_world_size()  # every rank computed the same gathered loss: counted once, not W times
            terms, without_positive = stats[:2].cpu(), stats[2].cpu()
        segmentation, contrastive = terms.tolist()
        self.print_to_log_file(
            f"SACL joint epoch {self.current_epoch}: segmentation loss {segmentation:.4f}, contrastive loss "
            f"{contrastive:.4f} (weight {self.joint_contrastive_weight:g}), batches without a positive pair "
            f"{int(without_positive)}")
        super().on_train_epoch_end(train_outputs)
