"""SACL's method in pure torch, for any training loop: organ embeddings by mask pooling (``pooling``), the projection
head (``heads``), supervised contrastive loss (``losses``, with ``contrast_correlation`` for DCC's weighted negatives
and ``phases`` for organ x phase labels), cross-rank gathering (``distributed``), fine-tuning schedules
(``schedules``), non-finite step handling (``nonfinite``) and batched on-device augmentation (``augment``).
Nothing here imports nnU-Net."""
