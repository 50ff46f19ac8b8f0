"""Checkpoint files that survive a kill and fail loudly when they are not what they should be."""
import os
import zipfile

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


ZIP_START = b"PK\x03\x04"    # torch.save's format (a zip archive) since torch 1.6
PICKLE_START = b"\x80"       # torch.save's legacy format (a pickle)


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint file that exists but cannot be loaded or holds no network weights; the message says why."""


def read_checkpoint(filename: str, map_location="cpu") -> dict:
    """torch.load (memory-mapped) with an error that says why a file cannot be loaded: missing
    (FileNotFoundError), truncated, not a torch file, or another error with torch's own text (UnreadableCheckpoint),
    or loaded but no nnU-Net checkpoint (UnreadableCheckpoint too)."""
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Checkpoint {filename} does not exist")
    try:
        checkpoint = torch.load(filename, map_location=map_location, weights_only=False, mmap=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise UnreadableCheckpoint(f"Cannot read checkpoint {filename}: {_why_unreadable(filename, e)}") from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise UnreadableCheckpoint(f"{filename} is not an nnU-Net checkpoint (no 'network_weights' entry)")
    return checkpoint


def _why_unreadable(filename: str, error: Exception) -> str:
    error = f"{type(error).__name__}: {error}"
    try:
        with open(filename, "rb") as f:
            start = f.read(len(ZIP_START))
        size = os.path.getsize(filename)
    except OSError:
        return error
    if size == 0 or (start == ZIP_START and not zipfile.is_zipfile(filename)):
        return (f"it is truncated ({size} bytes{', a zip archive without its end' if size else ''}: e.g. a copy "
                f"that did not finish, or a kill while an old, non-atomic save was writing it); delete it to start "
                f"over, or restore a copy. ({error})")
    if not start.startswith((ZIP_START, PICKLE_START)):
        return (f"it is not a torch file (torch.save writes a zip archive, which starts with {ZIP_START!r}; this "
                f"file starts with {start!r}); pass a checkpoint_*.pth or checkpoint_sacl_encoder.pth")
    return error
