"""condseg on nnU-Net v2 (the ``condseg[nnunet]`` extra): trainer variants nnU-Net finds by
name (``-tr nnUNetTrainerPDCRUAFR``) and a thin hand-over to nnU-Net's own commands.

:mod:`~condseg.nnunet.variants` holds the variants (UAFR, PDCR, PDCR + UAFR on nnU-Net's U-Net;
M2SNet for ``2d``), :mod:`~condseg.nnunet.plugins` attaches the plug-ins to nnU-Net's networks,
:mod:`~condseg.nnunet.m2snet` adapts M2SNet, and ``trainers/`` is the folder nnU-Net's
``nnUNet_extTrainer`` variable points at. Only this module is imported without nnU-Net.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from condseg.errors import NNUNetError

INSTALL = 'pip install "condseg[nnunet]"'
#: condseg's short names of nnU-Net's commands.
COMMANDS = {"plan": "nnUNetv2_plan_and_preprocess", "train": "nnUNetv2_train",
            "predict": "nnUNetv2_predict"}
VARIABLE = "nnUNet_extTrainer"


def trainers_folder() -> Path:
    """The folder to put in ``nnUNet_extTrainer``."""
    return Path(__file__).resolve().parent / "trainers"


def require() -> str:
    """nnunetv2's version; one line saying how to install it when it is missing."""
    try:
        return metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        raise NNUNetError(f"nnU-Net v2 is not installed; install it with {INSTALL}") from None


def with_trainers(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with condseg's trainer folder first in ``nnUNet_extTrainer`` (the folders
    already there kept after it)."""
    folder = str(trainers_folder())
    kept = [p for p in environ.get(VARIABLE, "").split(os.pathsep) if p and p != folder]
    return {**environ, VARIABLE: os.pathsep.join([folder, *kept])}


def hand_over(command: str, args: list[str]) -> NoReturn:
    """Replace this process with nnU-Net's own entry point of ``command`` (plan, train,
    predict), ``args`` unchanged and ``nnUNet_extTrainer`` set: nnU-Net then runs as its own
    command would, with none of condseg's state (signal handlers, threads) under its
    worker pools."""
    require()
    name = COMMANDS[command]
    found = metadata.entry_points(group="console_scripts", name=name)
    if not found:
        raise NNUNetError(f"nnunetv2 {metadata.version('nnunetv2')} has no command {name}; "
                          f"reinstall it with {INSTALL}")
    entry = next(iter(found))
    code = (f"import sys; from {entry.module} import {entry.attr} as main; "
            f"sys.argv[0] = {name!r}; sys.exit(main())")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-c", code, *args],
              with_trainers(dict(os.environ)))
