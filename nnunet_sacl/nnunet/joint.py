"""SACLTrainer_joint: one phase, nnU-Net's segmentation loss plus a weighted SupCon term on the same forward pass."""
from contextlib import contextmanager

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sacl.nnunet.checkpoints import AtomicCheckpointMixin
from nnunet_sacl.nnunet.contrastive import ContrastiveMixin
from nnunet_sacl.nnunet.network import encoder_of
from nnunet_sacl.nnunet.partial_labels import refuse_partial_labels
from nnunet_sacl.nnunet.seeding import SeededMixin
from nnunet_sacl.nnunet.update import GuardedUpdateMixin, batch_on_device


class SACLTrainer_joint(ContrastiveMixin, GuardedUpdateMixin, AtomicCheckpointMixin, SeededMixin, nnUNetTrainer):
    """nnU-Net's training in which every step minimises ``seg_loss + joint_contrastive_weight * SupCon``, the SupCon
    term taken over mask-pooled organ embeddings of the encoder features that the segmentation forward pass
    computed anyway (the encoder runs once per step). The projection head is trained alongside (its own parameter
    group in nnU-Net's optimizer, its state in every checkpoint); it is not part of ``network_weights``, so
    ``nnUNetv2_predict`` and ``-pretrained_weights`` see nnU-Net's own network.

    ``joint_contrastive_weight = 0`` is exactly nnU-Net's step (the contrastive term is not computed).
    """

    joint_contrastive_weight: float = 0.1
    _encoder_features, _keeping_features = None, False   # the encoder's output, kept in training steps only

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        refuse_partial_labels(self.dataset_json, self.plans_manager.dataset_name, self.__class__.__name__,
                              announce=True)
        if not self.joint_contrastive_weight >= 0:
            raise RuntimeError(f"{self.__class__.__name__}.joint_contrastive_weight = "
                               f"{self.joint_contrastive_weight}: must be a number >= 0")

    def initialize(self):
        if self.embedding != "mask_pool":
            raise RuntimeError(f"{self.__class__.__name__}.embedding = {self.embedding!r}: the joint trainer pools "
                               f"the segmentation pass's own encoder features, so only 'mask_pool' applies")
        if self.was_initialized:
            return super().initialize()      # nnU-Net's: raises
        super().initialize()
        self.build_contrastive_parts()
        # the encoder's output (its skips) is kept from the network's forward: through nnU-Net's DDP and compile
        # wrappers, so DDP still averages every network gradient, the contrastive term's included
        encoder_of(self.network).register_forward_hook(self._keep_encoder_features)
        # nnU-Net built the optimizer before the head existed: build it again with the head's parameter group
        self.optimizer, self.lr_scheduler = self.configure_optimizers()

    def _keep_encoder_features(self, module, inputs, output):
        if self._keeping_features:
            self._encoder_features = output

    @contextmanager
    def _encoder_features_kept(self):
        """Only a training step's forward keeps its encoder features (validation and inference never do)."""
        self._keeping_features, self._encoder_features = True, None
        try:
            yield
        finally:
            self._keeping_features = False

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        if self.head is not None:
            # same SGD settings; nnU-Net's poly schedule sets the learning rate of every parameter group
            optimizer.add_param_group({'params': list(self.head.parameters())})
        return optimizer, scheduler

    def train_step(self, batch: dict) -> dict:
        data, target = batch_on_device(batch, self.device)
        full_resolution = target[0] if isinstance(target, list) else target
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp_context():
            with self._encoder_features_kept():
                segmentation_loss = self.loss(self.network(data), target)
            features, self._encoder_features = self._encoder_features, None
            if self.joint_contrastive_weight > 0:
                z, organs, samples = self.embed_features(features, full_resolution)
                contrastive, statistics = self.contrastive_term(z, organs, samples, data, full_resolution,
                                                                batch.get('keys'))
                loss = segmentation_loss + self.joint_contrastive_weight * contrastive
                step = {'organs': z.shape[0], 'without_positive': int(statistics['anchors'] == 0)}
            else:
                contrastive, loss, step = None, segmentation_loss, {'organs': 0, 'without_positive': 0}
        if not self.nonfinite.is_finite(loss, f"joint training epoch {self.current_epoch}"):
            return {'loss': np.nan, 'segmentation': np.nan, 'contrastive': np.nan, **step}
        self.backward_and_step(loss, list(self.network.parameters()) + list(self.head.parameters()),
                               outside_ddp=list(self.head.parameters()))
        return {'loss': loss.detach().cpu().numpy(), 'segmentation': segmentation_loss.detach().cpu().numpy(),
                'contrastive': np.nan if contrastive is None else contrastive.detach().cpu().numpy(), **step}

    def on_train_epoch_end(self, train_outputs: list):
        finite = [o for o in train_outputs if np.isfinite(o['loss'])] or train_outputs
        segmentation, contrastive = np.mean([[float(o['segmentation']), float(o['contrastive'])] for o in finite], 0)
        statistics = self.epoch_statistics(train_outputs, segmentation=segmentation, contrastive=contrastive)
        self.print_to_log_file(
            f"SACL joint epoch {self.current_epoch}: segmentation loss {statistics['segmentation']:.4f}, contrastive "
            f"loss {statistics['contrastive']:.4f} (weight {self.joint_contrastive_weight:g}), batches without a "
            f"positive pair {statistics['batches_without_positive']}")
        super().on_train_epoch_end(train_outputs)

    # ------------------------------------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> dict:
        return {'phase': "segmentation", 'head': self.head.state_dict()}

    def check_checkpoint_extras(self, filename: str, extras) -> None:
        if not extras or extras.get('head') is None:
            raise RuntimeError(f"{filename} was not written by {self.__class__.__name__} (no projection head in it); "
                               f"to start from its weights use -pretrained_weights instead of --c")

    def load_checkpoint_extras(self, extras) -> None:
        self.head.load_state_dict(extras['head'])
