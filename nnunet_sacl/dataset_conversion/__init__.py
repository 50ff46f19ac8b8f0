"""Data in and out of nnU-Net's formats: BTCV / FLARE21 converters, the real-CT demo dataset and the generated one,
and challenge submissions from ``nnUNetv2_predict`` output."""
