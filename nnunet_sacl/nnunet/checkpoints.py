"""Checkpoint files that survive a kill and fail loudly when they are not what they should be."""
import os

import torch


def save_atomically(obj, filename: str) -> None:
    """torch.save to a temporary file, fsync, rename, fsync the folder: a kill (or a power cut) leaves either the
    old file or the new one under ``filename``, never half of one. A ``.tmp`` left by a killed save is overwritten
    by the next save (opened with truncation) and never read."""
    tmp = f"{filename}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(os.path.dirname(os.path.abspath(filename)))


def _fsync_folder(folder: str) -> None:
    """Makes the rename itself durable (POSIX: a directory entry is on disk once its folder is synced)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
