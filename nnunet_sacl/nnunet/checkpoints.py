"""Checkpoint files that survive a kill and fail loudly when they are not what they should be."""
import os

import torch


def save_atomically(obj, filename: str) -> None:
    """torch.save to a temporary file, then rename: a kill leaves either the old file or the new one, never half."""
    tmp = f"{filename}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, filename)


def read_checkpoint(filename: str, map_location="cpu") -> dict:
    """torch.load with an error that names the file when it is truncated, corrupt or not a checkpoint."""
    try:
        checkpoint = torch.load(filename, map_location=map_location, weights_only=False, mmap=True)
    except Exception as e:  # torch raises several types for a damaged zip
        raise RuntimeError(f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}. The file is truncated "
                           f"or corrupt (e.g. the run was killed while an old, non-atomic save was writing it); "
                           f"delete it to start over, or restore a copy.") from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise RuntimeError(f"{filename} is not an nnU-Net checkpoint (no 'network_weights' entry)")
    return checkpoint
