"""The errors a user can fix, under one base class.

The CLI prints a :class:`CondsegError` as one line and exits with status 2; any other exception
is a bug and keeps its traceback, so a bare ``ValueError`` from a mistake in our code is never
presented as the user's mistake.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class CondsegError(Exception):
    """Bad input, configuration or environment; the message says what and what to do."""


class OutputExistsError(CondsegError, FileExistsError):
    """An output would replace a file the user already has."""


class InputNotFoundError(CondsegError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OptionError(CondsegError, ValueError):
    """An option of a command or a library call has a value it cannot take, or contradicts
    another option; the message names the option (its keyword and its command-line flag)."""


class OutputError(CondsegError):
    """An output folder cannot be used; the message names the path and the cause."""


class OutputBusyError(OutputError):
    """Another condseg process holds the output folder."""


class RegistryError(CondsegError):
    """An unknown or doubly registered name (a loss, method, plug-in, hook, view, converter)."""


class ConfigError(CondsegError):
    """A preset, YAML file or override that cannot be turned into a run configuration."""


class LossError(ConfigError):
    """A loss option that cannot work (the message names the option)."""


class ModelError(CondsegError):
    """A model name, option or input size the model cannot take."""


class PluginError(ModelError):
    """A plug-in that cannot attach to a model, or a plug-in option that cannot work."""


class NonFiniteOutputError(ModelError):
    """A model gave NaN probabilities (its computation overflowed, or its weights are bad)."""


class EnsembleError(CondsegError):
    """Members that cannot be averaged (no members, different input sizes)."""


class ModelFileError(CondsegError):
    """A file that cannot be used as a condseg model file (the message names the file)."""


class WeightsUnavailableError(CondsegError):
    """ImageNet weights could neither be downloaded nor read from a local file. ``what`` names
    them in a few words and ``without`` is the ``key=value`` setting that trains without them,
    when there is one (``condseg study`` applies it with ``pretrained: auto`` and records
    why)."""

    def __init__(self, message: str, *, what: str = "", without: str | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.without = without


class ConversionError(CondsegError):
    """A file that is not a checkpoint of the authors' code of a packaged method."""


class ExecutionError(CondsegError):
    """A device or precision this machine or this model cannot run."""


class ExportError(CondsegError):
    """The model cannot be exported as asked, or the exported graph disagrees with PyTorch."""


class DataError(CondsegError):
    """Bad or missing input data; the message names the file and what to do about it."""


class CheckpointError(CondsegError):
    """A checkpoint of an unfinished stage is damaged beyond what resuming can work around."""


class TrainingError(CondsegError):
    """Training cannot start or continue; the message says why and what to do."""


class NonFiniteLossError(CondsegError):
    """The training loss became NaN or infinite; the run stops before the step is applied."""


class CrossValidationError(CondsegError):
    """A cross-validation that cannot run as asked; the message says what to do."""


class ResourceError(CondsegError):
    """The run asks for an accelerator, devices, strategy or nodes this machine cannot give."""


class StudyError(CondsegError):
    """A study file, option or folder that cannot be used (the message names it)."""


class NNUNetError(CondsegError):
    """nnU-Net v2 (the ``condseg[nnunet]`` extra) is missing, or a command of it is unknown."""


class CompareError(CondsegError, ValueError):
    """An input folder that cannot be compared (the message names it and what to do)."""


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise before writing anything if an output would replace an existing file, or (even
    with ``overwrite``) a folder."""
    paths = list(paths)
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise OutputExistsError(f"{folders[0]} is a folder where a file is to be written; move "
                                "it away or choose another output folder")
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        shown = ", ".join(existing[:5]) + (
            f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        )
        raise OutputExistsError(
            f"{len(existing)} output file(s) exist already: {shown}; choose another output folder "
            "or pass --overwrite (overwrite=True in Python)"
        )


def first_line(error: BaseException) -> str:
    """An exception's message on one line: torch and safetensors write paragraphs of advice
    that would bury the name of the file in a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
