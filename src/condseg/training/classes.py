"""The classes of a run: K and the class names come from its dataset's ``labels.json``.

A dataset that declares several foreground classes trains K = len(classes) logit maps: K is
written into the run's ``model.options.num_classes`` (so config.yaml records it, and every
network of the run is built with it) when the run starts; nothing is repeated on the command
line. A binary dataset leaves the configuration as it is (K = 1, no new key).
"""

from __future__ import annotations

from pathlib import Path

from condseg.config import RunConfig
from condseg.data.labels import Labels, read_labels, require_supported
from condseg.errors import TrainingError
from condseg.layout import DatasetDir


def classes_of(labels: Labels | None) -> int:
    """K of a declaration: 1 (binary) without one or with one foreground class."""
    return len(labels.names) if labels is not None and labels.foreground > 1 else 1


def with_dataset_classes(config: RunConfig, root: Path) -> RunConfig:
    """``config`` with the K of the dataset at ``root`` as ``model.options.num_classes`` (K >= 2
    only); a value the user gave that disagrees is refused in one line."""
    labels = require_supported(root)
    k = classes_of(labels)
    options = config.model.options
    given = options.get("num_classes")
    if given is not None and given != k:
        declared = (f"declares {k} classes ({', '.join(labels.names)}) in "
                    f"{DatasetDir(root).labels.name}" if labels is not None and k > 1
                    else "is binary (num_classes 1)")
        raise TrainingError(
            f"model.options.num_classes={given!r}, but dataset {root} {declared}; a run takes "
            "its classes from its dataset: drop model.options.num_classes")
    if k == 1:
        return config
    model = config.model.model_copy(update={"options": {**options, "num_classes": k}})
    return config.model_copy(update={"model": model})


def run_classes(config: RunConfig) -> tuple[str, ...] | None:
    """The class names of a run of K >= 2 classes (its dataset's declaration, background
    first); None for a binary run."""
    if config.model.options.get("num_classes", 1) == 1 or config.data.root is None:
        return None
    labels = read_labels(config.data.root)
    return labels.names if labels is not None else None
