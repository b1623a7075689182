"""What a run asks of the machine, checked before Lightning starts anything, and DDP children
that end with the process that launched them (:class:`ParentWatch`).

Lightning takes ``accelerator``, ``devices``, ``strategy`` and ``num_nodes`` as they come: a
mistyped one is a traceback (on every rank, once processes exist), and ``devices=99`` on a CPU
starts 99 processes. Here each is compared with what this machine has, and refused in one line
that names the value and what is allowed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import StrategyRegistry

from condseg.children import die_with_parent, record_parent
from condseg.config import RunConfig
from condseg.errors import ResourceError
from condseg.inference.loading import usable_cores

#: Packages a family of strategies needs besides Lightning.
_STRATEGY_PACKAGES = {"deepspeed": "deepspeed", "xla": "torch_xla", "single_xla": "torch_xla"}


def _available_accelerators() -> dict[str, int]:
    """Accelerator name -> number of devices, for those this machine has (``gpu``: CUDA or
    MPS, Lightning's alias); the CPU's devices are processes, at most one per usable core."""
    found = {"cpu": usable_cores()}
    for name in sorted(AcceleratorRegistry.available_accelerators()):
        accelerator = AcceleratorRegistry[name]["accelerator"]
        if name != "cpu" and accelerator.is_available():
            found[name] = accelerator.auto_device_count()
    for gpu in ("cuda", "mps"):
        if gpu in found:
            found.setdefault("gpu", found[gpu])
    return found


def check_resources(config: RunConfig) -> int:
    """Refuse an accelerator, device count, strategy or node count this machine cannot give;
    returns the number of training processes on this node."""
    available = _available_accelerators()
    name = config.accelerator
    if name == "auto":
        name = next((n for n in ("cuda", "mps") if n in available), "cpu")
    elif name not in available:
        known = sorted({*AcceleratorRegistry.available_accelerators(), "gpu"})
        what = "is not available on this machine" if name in known else "is not an accelerator"
        raise ResourceError(f"accelerator={name} {what}; here: auto, {', '.join(available)}")
    processes = _processes(config.devices, name, available[name])
    _check_strategy(config.strategy, name, processes)
    if config.num_nodes > 1 and not _in_cluster():
        raise ResourceError(
            f"num_nodes={config.num_nodes} needs a cluster launcher (SLURM, torchrun, LSF, or "
            "MASTER_ADDR and NODE_RANK set on every node); this machine is not in one: use "
            "num_nodes=1")
    return processes


def _processes(devices: Any, accelerator: str, count: int) -> int:
    """The devices asked for as a number of processes, refused beyond ``count``."""
    allowed = (f"here: auto, 1 to {count}" + (", -1 (all)" if count > 1 else "")
               + (f", or a list of indices 0 to {count - 1}" if accelerator != "cpu" else ""))
    if isinstance(devices, str) and devices.strip() not in ("auto", ""):
        text = devices.strip()
        parts = [p for p in text.split(",") if p.strip()]
        try:
            devices = ([int(p) for p in parts] if "," in text else int(text))
        except ValueError:
            raise ResourceError(f"devices={devices} is not a number of devices; "
                                f"{accelerator} {allowed}") from None
    if devices in ("auto", ""):
        return 1 if accelerator == "cpu" else max(count, 1)
    if isinstance(devices, list):
        if accelerator == "cpu" or not devices or any(not 0 <= d < count for d in devices):
            raise ResourceError(f"devices={devices} does not name devices of {accelerator} "
                                f"on this machine; {allowed}")
        return len(set(devices))
    if devices == -1:
        return count
    if not 1 <= devices <= count:
        unit = "usable CPU cores (one process each)" if accelerator == "cpu" else "devices"
        raise ResourceError(f"devices={devices}: {accelerator} has {count} {unit} on this "
                            f"machine; {allowed}")
    return devices


def _check_strategy(strategy: str, accelerator: str, processes: int) -> None:
    if strategy == "auto":
        return
    known = StrategyRegistry.available_strategies()
    if strategy not in known:
        families = sorted({s.split("_find_unused")[0] for s in known})
        raise ResourceError(f"strategy={strategy} is not a Lightning strategy; choose auto, "
                            f"{', '.join(families)}")
    family = strategy.split("_")[0] if not strategy.startswith("single_") else strategy
    package = _STRATEGY_PACKAGES.get(family)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ResourceError(f"strategy={strategy} needs the {package} package, which is not "
                            "installed; use strategy=auto or ddp")
    if family in ("xla", "single_xla", "single_tpu", "xla_debug") and accelerator != "tpu":
        raise ResourceError(f"strategy={strategy} runs on TPUs; this run uses {accelerator}: "
                            "use strategy=auto or ddp")
    if strategy == "single_device" and processes > 1:
        raise ResourceError(f"strategy=single_device runs one process, but devices asks for "
                            f"{processes}; use strategy=auto or ddp")


def _in_cluster() -> bool:
    """Whether a launcher Lightning knows has set this process up as part of several nodes."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    env = os.environ
    return (SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
            or LSFEnvironment.detect()
            or ("MASTER_ADDR" in env and "NODE_RANK" in env))


def check_shares(config: RunConfig, processes: int, split_sizes: Mapping[str, int]) -> None:
    """Every training process must get at least one full batch of the training split and one
    image of the validation split (Lightning's DDP sampler deals the split out in shares)."""
    total = processes * config.num_nodes
    if total <= 1:
        return
    data = config.data
    n_train = split_sizes.get(data.train_split, 0)
    n_val = split_sizes.get(data.val_split, 0)
    asked = f"devices={config.devices}, num_nodes={config.num_nodes}"
    if n_train // total < data.batch_size:
        raise ResourceError(
            f"{total} training processes ({asked}) would each get {n_train // total} of the "
            f"{n_train} training images, less than one batch (data.batch_size="
            f"{data.batch_size}); use at most {max(1, n_train // data.batch_size)} processes "
            "or a smaller data.batch_size")
    if n_val < total:
        raise ResourceError(
            f"{total} training processes ({asked}) cannot share the {n_val} validation images "
            f"(one each at least); use at most {max(1, n_val)} processes")


class ParentWatch(Callback):
    """Makes Lightning's DDP children end with the process that launched them
    (:mod:`condseg.children`): built in the launching process, set up in every rank."""

    def __init__(self) -> None:
        record_parent()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        die_with_parent()
