"""SACLTrainer: SACL contrastive pretraining of the encoder, then nnU-Net's own training from that encoder."""
import os
import shutil
from os.path import isfile, join
from time import time
from typing import Optional

import numpy as np
import torch
from torch import autocast
from torch import distributed as dist
from torch.profiler import record_function

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context

from nnunet_sacl.method.augment import augment_batch
from nnunet_sacl.method.contrast_correlation import normalized_ct_intensity_range
from nnunet_sacl.method.distributed import average_gradients, broadcast_module, is_distributed
from nnunet_sacl.method.heads import ProjectionHead
from nnunet_sacl.method.losses import IntensityWeightedSupConLoss, SupConLoss
from nnunet_sacl.nnunet.augment_settings import hands_augmentation_to_device
from nnunet_sacl.nnunet.checkpoints import read_checkpoint, save_atomically
from nnunet_sacl.nnunet.device_augmentation import make_augmenter
from nnunet_sacl.nnunet.finetune import FineTuneScheduleMixin
from nnunet_sacl.nnunet.network import encoder_of, unwrap
from nnunet_sacl.nnunet.partial_labels import refuse_partial_labels
from nnunet_sacl.method.nonfinite import NonFiniteLossGuard
from nnunet_sacl.nnunet.progress import (PRETRAIN_KEYS, add_pretraining_panel, new_pretrain_log, plot_pretraining,
                                         pseudo_dice_axis_named_as_mean)
from nnunet_sacl.method.phases import find_phases_file, organ_phase_labels, read_phases
from nnunet_sacl.method.pooling import mask_pool, organ_masked_inputs, organ_mean_intensity

PRETRAIN, SEGMENTATION = "pretrain", "segmentation"


class SACLTrainer(FineTuneScheduleMixin, nnUNetTrainer):
    """Phase 1: ``pretrain_epochs`` epochs of SACL on encoder + projection head (nnU-Net's dataloader and
    augmentation, supervised contrastive loss over mask-pooled organ embeddings). Phase 2: nnU-Net's standard
    training for ``num_epochs`` from the pretrained encoder, with the untouched decoder and a fresh optimizer and
    poly schedule. The phase is part of every checkpoint, so ``--c`` resumes where the run stopped.

    Settings are class attributes: a variant is a one-line subclass (see docs/trainers.md).
    """

    pretrain_epochs: int = 100
    pretrain_initial_lr: float = 1e-2          # SGD, Nesterov, momentum 0.99, poly decay, as nnU-Net's own
    pretrain_weight_decay: float = 3e-5
    temperature: float = 0.07
    head_hidden_channels: int = 512
    head_out_channels: int = 128
    pool_stages: tuple = (-1,)                 # encoder stages to pool (concatenated); -1 is the bottleneck
    min_organ_voxels: int = 1                  # an organ with fewer label voxels in a patch gives no embedding
    embedding: str = "mask_pool"               # or "paper_style": one encoder pass per organ-masked input
    stop_after_pretraining: bool = False
    encoder_file_name: str = "checkpoint_sacl_encoder.pth"
    max_nonfinite_in_a_row: int = 5            # skipped steps with a NaN/inf loss before the run stops
    pretrain_augmentation: str = "auto"        # "torch": batches augmented on the training device (CPU workers only
                                               # crop), "nnunet": nnU-Net's CPU pipeline; "auto": torch on CUDA
    use_phase_labels: bool = False             # organ x contrast phase labels from sacl_phases.json (method.phases)
    intensity_weighted_negatives: bool = False  # DCC: negatives weighted by organ contrast correlation (losses.py)
    intensity_range: Optional[tuple] = None    # per channel, normalized units; None: from the plans (CT only)
    # finetune_warmup_epochs, finetune_frozen_encoder_epochs (phase 2): see FineTuneScheduleMixin

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._refuse_unsupported_labels()
        if not self.stop_after_pretraining:   # SACLTrainer's phase 2 and the joint trainer train segmentation
            refuse_partial_labels(self.dataset_json, self.plans_manager.dataset_name, self.__class__.__name__)
        self.phase = PRETRAIN if self.pretrain_epochs > 0 else SEGMENTATION
        self.pretrain_epoch = 0                 # next pretraining epoch to run
        self.head = self.contrastive_loss = self.pretrain_encoder = self.case_phase = None
        self.augment_settings = self.augment_generator = None
        self.pretrain_log = new_pretrain_log()    # the trainer's own (in its checkpoints), shared with no logger
        self.save_every_pretrain_epochs = 1
        self.nonfinite = NonFiniteLossGuard(self.max_nonfinite_in_a_row)

    # ----------------------------------------------------------------------------------------------- set-up
    def _refuse_unsupported_labels(self):
        lm = self.label_manager
        if lm.has_regions:
            raise RuntimeError(
                f"{self.__class__.__name__}: region-based label configs (dataset.json 'regions_class_order') are "
                f"not supported: SACL needs one organ identity per voxel to define positives. Train with plain "
                f"labels, or use nnUNetTrainer for region-based training.")
        if len(lm.foreground_labels) < 2:
            raise RuntimeError(
                f"{self.__class__.__name__}: the dataset has {len(lm.foreground_labels)} foreground label(s) "
                f"({lm.foreground_labels}); contrastive pretraining needs at least two organs to have negatives. "
                f"Use nnUNetTrainer for this dataset.")

    def initialize(self):
        super().initialize()
        encoder = encoder_of(self.network)
        n = len(encoder.output_channels)
        bad = [s for s in self.pool_stages if not -n <= s < n]
        if bad or not self.pool_stages:
            raise RuntimeError(f"{self.__class__.__name__}.pool_stages = {self.pool_stages}: the encoder of this "
                               f"plan ({self.plans_manager.plans_name}, {self.configuration_name}) has {n} stages, "
                               f"so stages must be in {-n}..{n - 1}")
        in_channels = sum(encoder.output_channels[s] for s in self.pool_stages)
        self.head = ProjectionHead(in_channels, self.head_hidden_channels, self.head_out_channels).to(self.device)
        if is_distributed():  # each rank drew its own initial head; DDP broadcasts only the network
            broadcast_module(self.head)
        self.contrastive_loss = self.make_contrastive_loss().to(self.device)
        # the encoder runs on its own in phase 1; compile it exactly when nnU-Net compiles the network
        self.pretrain_encoder = torch.compile(encoder) if self._do_i_compile() else encoder
        if self.phase == PRETRAIN:
            self.optimizer, self.lr_scheduler = self.configure_pretraining_optimizer()
        self._warn_if_no_positives_possible()
        self.case_phase = self._read_case_phases() if self.use_phase_labels else None
        if self.phase == PRETRAIN and self.augments_on_device():
            self.augment_settings, self.augment_generator = make_augmenter(self)

    def make_contrastive_loss(self) -> SupConLoss:
        if not self.intensity_weighted_negatives:
            return SupConLoss(self.temperature)
        intensity_range = self.intensity_range
        if intensity_range is None:
            try:
                intensity_range = normalized_ct_intensity_range(
                    self.configuration_manager.normalization_schemes,
                    self.plans_manager.foreground_intensity_properties_per_channel)
            except ValueError as e:
                raise RuntimeError(f"{self.__class__.__name__} ({self.plans_manager.plans_name}, "
                                   f"{self.configuration_name}): {e}") from None
        self.print_to_log_file(f"Intensity-weighted negatives (DCC): intensity range per channel {intensity_range}")
        return IntensityWeightedSupConLoss(intensity_range, self.temperature)

    def augments_on_device(self) -> bool:
        """Whether phase 1 augments whole batches with nnunet_sacl.method.augment on the training device."""
        if self.pretrain_augmentation not in ("auto", "torch", "nnunet"):
            raise RuntimeError(f"{self.__class__.__name__}.pretrain_augmentation = {self.pretrain_augmentation!r}: "
                               f"use 'auto', 'torch' or 'nnunet'")
        return self.pretrain_augmentation == "torch" or \
            (self.pretrain_augmentation == "auto" and self.device.type == "cuda")

    @hands_augmentation_to_device
    def get_training_transforms(self, *args, **kwargs):
        # nnU-Net's is a staticmethod called as self.get_training_transforms(...): in phase 1 with on-device
        # augmentation the CPU workers only crop (nnU-Net's initial patch size) and copy; the device applies what
        # the implementation behind this one returns (augment_settings.training_transforms)
        if self.phase == PRETRAIN and self.augments_on_device():
            return None
        return super().get_training_transforms(*args, **kwargs)

    def _read_case_phases(self):
        """Phase index of every case, from sacl_phases.json next to the preprocessed (or raw) dataset.json."""
        raw = join(os.environ["nnUNet_raw"], self.plans_manager.dataset_name) if os.environ.get("nnUNet_raw") else None
        path = find_phases_file([self.preprocessed_dataset_folder_base, raw])
        case_phase, phases = read_phases(path, self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        self.num_phases = len(phases)
        self.print_to_log_file(f"Organ x phase labels from {path}: phases {phases}")
        return case_phase

    def _warn_if_no_positives_possible(self):
        world = dist.get_world_size() if is_distributed() else 1
        if self.batch_size * world < 2:
            self.print_to_log_file(
                f"WARNING: batch size {self.batch_size} x {world} GPU(s): every organ appears at most once per "
                f"batch, so the contrastive loss has no positive pair and pretraining learns nothing. Use a batch "
                f"size of at least 2 (plans 'batch_size') or more GPUs.")

    def pretraining_parameters(self):
        return list(encoder_of(self.network).parameters()) + list(self.head.parameters())

    def configure_pretraining_optimizer(self):
        optimizer = torch.optim.SGD(self.pretraining_parameters(), self.pretrain_initial_lr,
                                    weight_decay=self.pretrain_weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.pretrain_initial_lr, self.pretrain_epochs)

    # --------------------------------------------------------------------------------------------- training
    def run_training(self):
        if self.phase == PRETRAIN:
            self.run_pretraining()
            if self.stop_after_pretraining:
                return
            self.start_segmentation_phase()
        super().run_training()

    def on_train_start(self):
        # phase 2 keeps the dataloaders that phase 1 started (nnU-Net's on_train_start would start new ones)
        if self.dataloader_train is None:
            super().on_train_start()

    def run_pretraining(self):
        self.on_train_start()
        self.print_to_log_file(f"SACL pretraining: epochs {self.pretrain_epoch}..{self.pretrain_epochs - 1}, "
                               f"{self.num_iterations_per_epoch} iterations each, pooling encoder stages "
                               f"{self.pool_stages} ({self.embedding}), temperature {self.temperature}")
        while self.pretrain_epoch < self.pretrain_epochs:
            start = time()
            self.network.train()
            self.head.train()
            self.lr_scheduler.step(self.pretrain_epoch)
            outputs = [self.pretrain_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_pretrain_epoch_end(outputs, time() - start)
        self.save_pretrained_encoder(join(self.output_folder, self.encoder_file_name))
        if self.stop_after_pretraining:
            self.save_checkpoint(join(self.output_folder, "checkpoint_final.pth"))
            if self.local_rank == 0 and isfile(join(self.output_folder, "checkpoint_latest.pth")):
                os.remove(join(self.output_folder, "checkpoint_latest.pth"))
            self.on_train_end_without_checkpoint()

    def embed(self, data: torch.Tensor, seg: torch.Tensor):
        """Projected organ embeddings z [N, head_out], their organ labels [N] and sample index [N] for one batch."""
        num_classes, ignore = self.label_manager.num_segmentation_heads, self.label_manager.ignore_label
        # record_function ranges name the parts in torch.profiler traces (benchmarks/step_benchmark.py)
        if self.embedding == "mask_pool":
            with record_function("sacl.encoder"):
                features = self.pretrain_encoder(data)
            return self.embed_features(features, seg)
        elif self.embedding == "paper_style":
            inputs, labels, samples = organ_masked_inputs(data, seg, num_classes, ignore, self.min_organ_voxels)
            features = self.pretrain_encoder(inputs)
            embeddings = torch.cat([features[s].flatten(2).mean(-1) for s in self.pool_stages], 1)
        else:
            raise RuntimeError(f"{self.__class__.__name__}.embedding = {self.embedding!r}: "
                               f"use 'mask_pool' or 'paper_style'")
        return self.head(embeddings), labels, samples

    def embed_features(self, features: list, seg: torch.Tensor):
        """``embed`` for encoder outputs already computed (one feature map per stage): mask-pooled, projected."""
        with record_function("sacl.mask_pool"):
            pooled = [mask_pool(features[s], seg, self.label_manager.num_segmentation_heads,
                                self.label_manager.ignore_label, self.min_organ_voxels) for s in self.pool_stages]
        embeddings, labels, samples = torch.cat([p[0] for p in pooled], 1), pooled[0][1], pooled[0][2]
        return self.head(embeddings), labels, samples

    def contrastive_term(self, z, organs, samples, data, seg, keys):
        """SupCon (or its intensity-weighted form) of one batch's projected organ embeddings, and the batch's
        statistics (the loss's ``anchors`` and ``rows``, device tensors)."""
        with record_function("sacl.loss"):
            labels = self.contrastive_labels(organs, samples, keys)
            if self.intensity_weighted_negatives:   # intensities of the batch the encoder saw (augmented)
                intensities = organ_mean_intensity(data, seg, self.label_manager.num_segmentation_heads,
                                                   self.label_manager.ignore_label)[samples, organs]
                return self.contrastive_loss(z, labels, intensities, with_statistics=True)
            return self.contrastive_loss(z, labels, with_statistics=True)

    def contrastive_labels(self, organ_labels, sample_index, keys):
        """Organ identity, or organ x phase when use_phase_labels is on."""
        if self.case_phase is None:
            return organ_labels
        phase = torch.tensor([self.case_phase[k] for k in keys], device=organ_labels.device)
        return organ_phase_labels(organ_labels, phase, sample_index, self.num_phases)

    def pretrain_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        seg = batch['target'][0] if isinstance(batch['target'], (list, tuple)) else batch['target']
        seg = seg.to(self.device, non_blocking=True)
        if self.augment_settings is not None:
            with record_function("sacl.augment"):
                data, seg = augment_batch(data, seg, self.augment_settings, self.augment_generator)
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp_context():
            z, organs, samples = self.embed(data, seg)
            loss, statistics = self.contrastive_term(z, organs, samples, data, seg, batch.get('keys'))
        without_positive = statistics['anchors'] == 0
        if not self.nonfinite.is_finite(loss, f"pretraining epoch {self.pretrain_epoch}"):
            return {'loss': loss.detach(), 'organs': torch.tensor(z.shape[0], device=self.device),
                    'without_positive': without_positive, 'skipped': True}
        # the encoder runs outside nnU-Net's DDP wrapper in phase 1: average its (and the head's) gradients here
        self.backward_and_step(loss, self.pretraining_parameters(), average_over_ranks=is_distributed())
        # tensors, not floats: the logged numbers are copied to the host once, at the epoch's end. The step itself
        # still waits on the device a few times: the non-finite check (bool(isfinite)), the label check in
        # mask_pool (bool(bad.any())) and the organ lookup (nonzero) each synchronise.
        return {'loss': loss.detach(), 'organs': torch.tensor(z.shape[0], device=self.device),
                'without_positive': without_positive}

    def amp_context(self):
        """nnU-Net's mixed precision: autocast (float16) on CUDA, none elsewhere. One method for every step of every
        SACL trainer, so that the tests can run the CUDA branch on a CPU (bfloat16 autocast there)."""
        return autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def train_step(self, batch: dict) -> dict:
        # Copies nnUNetTrainer.train_step (forward, loss, backward, clip, step in one body) to skip the step when the
        # loss is not finite: there is no hook between computing the loss and the optimizer step.
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp_context():
            loss = self.loss(self.network(data), target)
        if not self.nonfinite.is_finite(loss, f"segmentation epoch {self.current_epoch}"):
            return {'loss': np.nan}
        self.backward_and_step(loss, self.network.parameters())
        return {'loss': loss.detach().cpu().numpy()}

    def backward_and_step(self, loss: torch.Tensor, params, average_over_ranks: bool = False,
                          outside_ddp=()) -> None:
        """nnU-Net's update (GradScaler on CUDA, gradient norm clipped at 12), for both phases. Under DDP the
        gradients of ``params`` (all of them) or of ``outside_ddp`` (modules DDP does not wrap) are averaged here."""
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
        finite = [o for o in train_outputs if np.isfinite(o['loss'])]
        skipped = self.nonfinite.take_epoch_report()
        if skipped:
            self.print_to_log_file(skipped)
        super().on_train_epoch_end(finite or train_outputs)

    def on_epoch_end(self):
        # nnU-Net draws progress.png at the end of its on_epoch_end (rank 0): its pseudo-Dice axis is named as the
        # mean over organs while it draws, and the pretraining panel goes on top afterwards
        with pseudo_dice_axis_named_as_mean():
            super().on_epoch_end()
        if self.local_rank == 0 and self.pretrain_log["loss"]:
            add_pretraining_panel(self.pretrain_log, self.output_folder)

    def on_pretrain_epoch_end(self, outputs: list, seconds: float):
        skipped = self.nonfinite.take_epoch_report()
        without_positive = torch.stack([o['without_positive'] for o in outputs]).sum()   # skipped steps included
        outputs = [o for o in outputs if not o.get('skipped')] or outputs
        loss = torch.stack([o['loss'] for o in outputs]).mean()
        organs = torch.stack([o['organs'] for o in outputs]).float().mean()
        stats = torch.stack([loss.float(), organs, without_positive.float()])
        if is_distributed():
            dist.all_reduce(stats)
            stats[:2] /= dist.get_world_size()
        loss, organs, without_positive = stats.tolist()
        log = self.pretrain_log
        values = (loss, self.optimizer.param_groups[0]['lr'], organs, int(without_positive), seconds)
        for key, value in zip(PRETRAIN_KEYS, values):
            log[key].append(value)
        self.print_to_log_file(
            f"SACL pretraining epoch {self.pretrain_epoch}: contrastive loss {loss:.4f}, "
            f"lr {log['lr'][-1]:.5f}, organ embeddings per batch {organs:.1f}, "
            f"batches without a positive pair {int(without_positive)}, epoch time {seconds:.2f} s")
        if skipped:
            self.print_to_log_file(skipped)
        self.pretrain_epoch += 1
        if self.pretrain_epoch % self.save_every_pretrain_epochs == 0 or self.pretrain_epoch == self.pretrain_epochs:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        if self.local_rank == 0:
            plot_pretraining(log, join(self.output_folder, "progress_pretraining.png"))
            shutil.copyfile(join(self.output_folder, "progress_pretraining.png"),
                            join(self.output_folder, "progress.png"))

    def start_segmentation_phase(self):
        """Hand-off: same network (pretrained encoder, untouched decoder), fresh optimizer and poly schedule."""
        self.phase = SEGMENTATION
        self.current_epoch = 0
        if self.augment_settings is not None:  # phase 2 gets nnU-Net's own augmentation: new dataloaders
            self.on_train_end_without_checkpoint()
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self.print_to_log_file(f"SACL pretraining done ({self.pretrain_epochs} epochs). Segmentation training "
                               f"starts from the pretrained encoder: {self.num_epochs} epochs.")

    def on_train_end_without_checkpoint(self):
        for loader in (self.dataloader_train, self.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
        self.dataloader_train = self.dataloader_val = None

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_pretrained_encoder(self, filename: str):
        """The whole network (pretrained encoder, untouched decoder) as CPU tensors, so that stock
        ``nnUNetv2_train ... -pretrained_weights FILE`` (which needs every key but seg_layers) accepts it."""
        if self.local_rank != 0:
            return
        weights = {k: v.detach().cpu() for k, v in unwrap(self.network).state_dict().items()}
        save_atomically({
            'network_weights': weights,
            'trainer_name': self.__class__.__name__,
            'sacl': {'plans_name': self.plans_manager.plans_name, 'configuration': self.configuration_name,
                     'dataset_name': self.plans_manager.dataset_name, 'pretrain_epochs': self.pretrain_epoch,
                     'pool_stages': list(self.pool_stages), 'embedding': self.embedding,
                     'temperature': self.temperature, 'final_loss': (self.pretrain_log['loss'] or [None])[-1]},
        }, filename)
        self.print_to_log_file(f"Pretrained encoder written to {filename} (usable with -pretrained_weights)")

    def save_checkpoint(self, filename: str) -> None:
        # Copies the body of nnUNetTrainer.save_checkpoint: it builds and writes its dict in one go, with no hook
        # to add the SACL state or to write atomically.
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        in_pretraining = self.phase == PRETRAIN
        checkpoint = {
            'network_weights': unwrap(self.network).state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            # nnU-Net saves at the end of an epoch, before current_epoch += 1; phase 1 has run no such epoch
            'current_epoch': 0 if in_pretraining else self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
            'sacl': {'phase': self.phase, 'pretrain_epoch': self.pretrain_epoch, 'pretrain_log': self.pretrain_log,
                     'head': self.head.state_dict() if self.head_in_checkpoint() else None},
        }
        save_atomically(checkpoint, filename)

    def head_in_checkpoint(self) -> bool:
        """Whether the projection head is still trained (phase 1 here), so checkpoints keep its state for --c."""
        return self.phase == PRETRAIN

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("SACLTrainer.load_checkpoint takes a file name")
        # nnU-Net's load_checkpoint works only with a file name (its dict branch never binds `checkpoint`), so the
        # file is opened twice: here memory-mapped for the SACL entry and the checks, there for the rest
        sacl = read_checkpoint(filename_or_checkpoint).get('sacl')
        if sacl is None:
            raise RuntimeError(f"{filename_or_checkpoint} was not written by a SACL trainer (no 'sacl' entry); "
                               f"to start from its weights use -pretrained_weights instead of --c")
        if not self.was_initialized:
            self.initialize()
        self.phase, self.pretrain_epoch = sacl['phase'], sacl['pretrain_epoch']
        self.pretrain_log = {key: list(values) for key, values in sacl['pretrain_log'].items()}
        try:
            if self.phase == PRETRAIN:
                self.optimizer, self.lr_scheduler = self.configure_pretraining_optimizer()
            else:
                self.optimizer, self.lr_scheduler = self.configure_optimizers()
            if self.head_in_checkpoint():
                self.head.load_state_dict(sacl['head'])
            super().load_checkpoint(filename_or_checkpoint)
        except torch.OutOfMemoryError as e:   # a RuntimeError, but no mismatch: the checkpoint may be fine
            raise torch.OutOfMemoryError(f"Out of memory on {self.device} while resuming from {filename_or_checkpoint} "
                                         f"(free memory on it, e.g. other processes on this GPU): {e}") from e
        except (RuntimeError, ValueError, KeyError) as e:
            # torch's key/shape errors of load_state_dict; the optimizer's ValueError; an entry the checkpoint lacks
            if isinstance(e, RuntimeError) and not str(e).startswith("Error(s) in loading state_dict"):
                raise
            # never start over silently with a re-initialised head or optimizer
            raise RuntimeError(f"{filename_or_checkpoint} does not match this {self.__class__.__name__} (network, "
                               f"projection head or optimizer differ: other plans or SACL settings?): {e}") from e
        self.print_to_log_file(f"Resumed from {filename_or_checkpoint}: phase {self.phase}, "
                               f"pretraining epoch {self.pretrain_epoch}, segmentation epoch {self.current_epoch}")


class SACLPretrainer(SACLTrainer):
    """Phase 1 only: ends with the pretrained encoder file (and checkpoint_final.pth), no segmentation training."""
    stop_after_pretraining = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file(f"{self.__class__.__name__} trains no decoder: nothing to validate. Pretrained "
                               f"encoder: {join(self.output_folder, self.encoder_file_name)}")
