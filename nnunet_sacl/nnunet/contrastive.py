"""The contrastive parts of the SACL trainers: their settings and label checks (``ContrastiveSettings``, which
SACLTrainer has too), and the projection head, loss, mask-pooled organ embeddings and the epoch's statistics of the
trainers that train a contrastive term (``ContrastiveMixin``). The method itself is in ``nnunet_sacl.method``."""
import os
from os.path import join
from typing import Optional

import torch
from torch import distributed as dist
from torch.profiler import record_function

from nnunet_sacl.method.contrast_correlation import normalized_ct_intensity_range
from nnunet_sacl.method.distributed import broadcast_module, is_distributed, mean_over_ranks
from nnunet_sacl.method.heads import ProjectionHead
from nnunet_sacl.method.losses import IntensityWeightedSupConLoss, SupConLoss
from nnunet_sacl.method.phases import find_phases_file, organ_phase_labels, read_phases
from nnunet_sacl.method.pooling import mask_pool, organ_masked_inputs, organ_mean_intensity
from nnunet_sacl.nnunet.network import encoder_of


# the settings of ContrastiveSettings, by name (what a SACLTrainer hands its pretrainer; the encoder file's record)
CONTRASTIVE_SETTINGS = ("temperature", "head_hidden_channels", "head_out_channels", "pool_stages", "min_organ_voxels",
                        "embedding", "use_phase_labels", "intensity_weighted_negatives", "intensity_range")


class ContrastiveSettings:
    """SACL's settings, as class attributes (one-line variants) that ``__init__`` may change as well, and the label
    checks of every trainer that has them (at construction, before anything trains)."""

    temperature: float = 0.07
    head_hidden_channels: int = 512
    head_out_channels: int = 128
    pool_stages: tuple = (-1,)                 # encoder stages to pool (concatenated); -1 is the bottleneck
    min_organ_voxels: int = 1                  # an organ with fewer label voxels in a patch gives no embedding
    embedding: str = "mask_pool"               # or "paper_style": one encoder pass per organ-masked input
    use_phase_labels: bool = False             # organ x contrast phase labels from sacl_phases.json (method.phases)
    intensity_weighted_negatives: bool = False  # DCC: negatives weighted by organ contrast correlation (losses.py)
    intensity_range: Optional[tuple] = None    # per channel, normalized units; None: from the plans (CT only)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._refuse_unsupported_labels()

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


class ContrastiveMixin(ContrastiveSettings):
    """The contrastive parts of the trainers that train a contrastive term (SACLPretrainer, the joint trainer): put
    before ``nnUNetTrainer`` (after any variant's mixins, so that their settings win). ``build_contrastive_parts()``
    (called from ``initialize``) makes the head and the loss."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.head = self.contrastive_loss = self.contrastive_encoder = self.case_phase = None

    # ----------------------------------------------------------------------------------------------- set-up
    def build_contrastive_parts(self):
        """Head (equal on every rank), loss, the encoder to run on its own (compiled when nnU-Net compiles the
        network), and the case phases when ``use_phase_labels``. Called after nnU-Net's initialize."""
        encoder = encoder_of(self.network)
        n = len(encoder.output_channels)
        bad = [s for s in self.pool_stages if not -n <= s < n]
        if bad or not self.pool_stages:
            raise RuntimeError(f"{self.__class__.__name__}.pool_stages = {self.pool_stages}: the encoder of this "
                               f"plan ({self.plans_manager.plans_name}, {self.configuration_name}) has {n} stages, "
                               f"so stages must be in {-n}..{n - 1}")
        if self.embedding not in ("mask_pool", "paper_style"):
            raise RuntimeError(f"{self.__class__.__name__}.embedding = {self.embedding!r}: "
                               f"use 'mask_pool' or 'paper_style'")
        in_channels = sum(encoder.output_channels[s] for s in self.pool_stages)
        self.head = ProjectionHead(in_channels, self.head_hidden_channels, self.head_out_channels).to(self.device)
        if is_distributed():  # each rank drew its own initial head; DDP broadcasts only the network
            broadcast_module(self.head)
        self.contrastive_loss = self.make_contrastive_loss().to(self.device)
        self.contrastive_encoder = torch.compile(encoder) if self._do_i_compile() else encoder
        self._warn_if_no_positives_possible()
        self.case_phase = self._read_case_phases() if self.use_phase_labels else None

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

    # ------------------------------------------------------------------------------------------- one batch
    def embed(self, data: torch.Tensor, seg: torch.Tensor):
        """Projected organ embeddings z [N, head_out], their organ labels [N] and sample index [N] for one batch."""
        if self.embedding == "paper_style":
            inputs, labels, samples = organ_masked_inputs(data, seg, self.label_manager.num_segmentation_heads,
                                                          self.label_manager.ignore_label, self.min_organ_voxels)
            features = self.contrastive_encoder(inputs)
            embeddings = torch.cat([features[s].flatten(2).mean(-1) for s in self.pool_stages], 1)
            return self.head(embeddings), labels, samples
        # record_function ranges name the parts in torch.profiler traces (benchmarks/step_benchmark.py)
        with record_function("sacl.encoder"):
            features = self.contrastive_encoder(data)
        return self.embed_features(features, seg)

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

    # ------------------------------------------------------------------------------------------- one epoch
    @staticmethod
    def epoch_statistics(outputs: list, **rank_means: float) -> dict:
        """The epoch's mean organ embeddings per batch (of one rank) and its batches without a positive pair, from
        the steps' own outputs (``organs``, ``without_positive``), and any further per-rank values given by name,
        averaged over ranks in one all-reduce: the loss gathers every rank's embeddings, so every rank counted the
        same global batches."""
        organs = sum(float(o['organs']) for o in outputs) / len(outputs)
        without_positive = sum(float(o['without_positive']) for o in outputs)
        means = mean_over_ranks([organs, without_positive, *rank_means.values()])
        return {'organs_per_batch': means[0], 'batches_without_positive': round(means[1]),
                **dict(zip(rank_means, means[2:]))}
