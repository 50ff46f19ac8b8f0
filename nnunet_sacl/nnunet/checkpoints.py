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


class UnsafeCheckpoint(UnreadableCheckpoint):
    """A received file that needs more than tensors and plain values to load: unpickling it could run code."""


def plain_values() -> list:
    """What ``read_checkpoint(received=True)`` lets the unpickler build besides torch's own weights-only set: numpy
    scalars and their dtypes (nnU-Net's checkpoints log numpy floats), values that construct no other object."""
    import numpy as np
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")
              and name not in ("ObjectDType", "VoidDType", "StringDType")]
    return [np._core.multiarray.scalar, np.dtype, *dtypes]


def read_checkpoint(filename: str, map_location="cpu", received: bool = False) -> dict:
    """torch.load (memory-mapped) with an error that says why a file cannot be loaded: missing
    (FileNotFoundError), truncated, not a torch file, or another error with torch's own text (UnreadableCheckpoint),
    or loaded but no nnU-Net checkpoint (UnreadableCheckpoint too).

    ``received``: a file from elsewhere, read with ``weights_only=True`` (tensors and plain values, plus numpy
    scalars: ``plain_values``), so that unpickling runs no code it carries; a file that needs more is refused
    (UnsafeCheckpoint) with what it needs and how to go on if its source is trusted."""
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Checkpoint {filename} does not exist")
    try:
        if received:
            with torch.serialization.safe_globals(plain_values()):
                checkpoint = torch.load(filename, map_location=map_location, weights_only=True, mmap=True)
        else:
            checkpoint = torch.load(filename, map_location=map_location, weights_only=False, mmap=True)
    except Exception as e:  # torch raises several types for a damaged file
        if received:
            _refuse_unsafe(filename, e)
        raise UnreadableCheckpoint(f"Cannot read checkpoint {filename}: {_why_unreadable(filename, e)}") from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise UnreadableCheckpoint(f"{filename} is not an nnU-Net checkpoint (no 'network_weights' entry)")
    return checkpoint


def _refuse_unsafe(filename: str, error: Exception) -> None:
    """Raises UnsafeCheckpoint when the weights-only load failed for a global the file names (listed without
    unpickling it); returns for any other failure (a damaged file)."""
    try:
        allowed = {f"{g.__module__}.{g.__name__}" for g in plain_values()}
        needs = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(filename) if g not in allowed]
    except Exception:
        return
    if needs:
        raise UnsafeCheckpoint(
            f"{filename} is not loaded: it needs more than tensors and plain values ({', '.join(needs[:5])}"
            f"{', ...' if len(needs) > 5 else ''}), and unpickling such a file can run any code it carries. If you "
            f"trust its source, keep only its weights and plans: python -c \"import torch; c = torch.load('{filename}',"
            f" weights_only=False); torch.save({{k: c[k] for k in ('network_weights', 'init_args', 'trainer_name') "
            f"if k in c}}, 'plain.pth')\" and pass plain.pth instead") from error


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


class AtomicCheckpointMixin:
    """Put before ``nnUNetTrainer``: its checkpoints are written atomically (``save_atomically``), with the entry
    ``checkpoint_extras()`` returns under ``'sacl'``."""

    def checkpoint_extras(self) -> dict:
        return {}

    def save_checkpoint(self, filename: str) -> None:
        # Copies the body of nnUNetTrainer.save_checkpoint: it builds and writes its dict in one go, with no hook to
        # add an entry or to write atomically (tests/test_handoff.py compares the entries with nnU-Net's).
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        from nnunet_sacl.nnunet.network import unwrap
        save_atomically({
            'network_weights': unwrap(self.network).state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
            'sacl': self.checkpoint_extras(),
        }, filename)

    def check_checkpoint_extras(self, filename: str, extras) -> None:
        """Raises when the checkpoint's ``'sacl'`` entry (None when it has none) cannot be resumed by this trainer."""

    def load_checkpoint_extras(self, extras) -> None:
        """Restores what ``checkpoint_extras`` saved (after nnU-Net's load_checkpoint)."""

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError(f"{self.__class__.__name__}.load_checkpoint takes a file name")
        # nnU-Net's load_checkpoint works only with a file name (its dict branch never binds `checkpoint`), so the
        # file is opened twice: here memory-mapped for the checks and the SACL entry, there for the rest
        extras = read_checkpoint(filename_or_checkpoint).get('sacl')
        self.check_checkpoint_extras(filename_or_checkpoint, extras)
        if not self.was_initialized:
            self.initialize()
        try:
            super().load_checkpoint(filename_or_checkpoint)
            self.load_checkpoint_extras(extras)
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
        self.print_to_log_file(f"Resumed from {filename_or_checkpoint} at epoch {self.current_epoch}")
