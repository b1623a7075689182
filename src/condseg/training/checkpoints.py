"""Checkpoints that survive a kill: written atomically, the previous one kept, read safely.

Every checkpoint Lightning writes goes through :class:`AtomicCheckpointIO`: to a temporary
file beside it first (never in ``$TMPDIR``, where Lightning's own writer stages it: a small
``/tmp`` would stop the run), then renamed over the old one, which is kept as
``<name>.previous.ckpt`` — so a kill during a write leaves the last complete checkpoint, and a
checkpoint damaged later (a truncated copy) falls back to the one before it. A full disk is
one error naming the checkpoint and its folder's free space. Checkpoints are only ever read with
``weights_only=True``: a planted file cannot run code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from condseg.errors import CheckpointError
from condseg.files import atomic_file
from condseg.layout import StageDir

PREVIOUS_SUFFIX = ".previous.ckpt"


def previous_of(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".ckpt") + PREVIOUS_SUFFIX)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            with tmp.open("wb") as f:  # through Python: a failed write is an OSError
                torch.save(checkpoint, f)
            if path.is_file():
                os.replace(path, previous_of(path))

    def load_checkpoint(self, path: Any, map_location: Callable | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Always ``weights_only=True``, whatever the caller (Lightning < 2.6 asked for False)."""
        return torch.load(path, map_location=map_location, weights_only=True)


def readable(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint (its zip directory and records can be read)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many kinds for a damaged file; any means unusable
        return False
    return True


def resume_point(stage: StageDir) -> tuple[Path | None, str | None]:
    """The checkpoint ``stage`` resumes from and a warning when it is not the newest; (None,
    None) when there is none. ``last.ckpt`` is taken, else the one before it, else ``best.ckpt``
    (an earlier epoch, optimiser state and all). A damaged ``best.ckpt`` is refused: resuming
    past it would lose the stage's best model so far without a word."""
    checkpoint_dir, last, best = stage.checkpoints, stage.last_checkpoint, stage.best_checkpoint
    if best.is_file() and not readable(best):
        raise CheckpointError(
            f"{best} is damaged (truncated, empty or not a checkpoint), so the stage's best model "
            f"so far is lost; restore the file, or delete {checkpoint_dir} and resume again to "
            "train the stage from its start")
    if not (last.is_file() or previous_of(last).is_file()):
        return None, None  # the stage wrote no checkpoint yet
    previous = previous_of(last)
    warnings = {
        previous: f"{last} is damaged (truncated?); resuming from the checkpoint before it, "
                  f"{previous}",
        best: f"{last} and the checkpoint before it are damaged; resuming from the best epoch's "
              f"checkpoint, {best} (the epochs after it are trained again)",
    }
    for candidate in (last, previous, best):
        if candidate.is_file() and readable(candidate):
            return candidate, warnings.get(candidate)
    return None, f"{last} and the checkpoint before it are damaged; the stage starts over"


class RunCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose restored state follows the run folder: Lightning records
    absolute paths (``dirpath``, ``best_model_path``, ...) and, resumed in a moved or copied
    run, would keep the old folder's best model and drop the best score. Paths inside the
    recorded folder are re-rooted into this one before Lightning reads them."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = {key: _rerooted(value, Path(old), Path(self.dirpath))
                          for key, value in state_dict.items()}
        super().load_state_dict(state_dict)


def _rerooted(value: Any, old: Path, new: Path) -> Any:
    """``value`` with every path string at or under ``old`` moved under ``new`` (also the keys
    of ``best_k_models``); anything else unchanged."""
    if isinstance(value, dict):
        return {_rerooted(k, old, new): _rerooted(v, old, new) for k, v in value.items()}
    if isinstance(value, str) and value:
        path = Path(value)
        if path == old or old in path.parents:
            return str(new / path.relative_to(old))
    return value
