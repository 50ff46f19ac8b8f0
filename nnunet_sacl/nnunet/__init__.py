"""Thin nnU-Net glue: the SACL trainers and what they need of nnU-Net's objects."""
