"""The plan of each stage, resolved once from the run's config: which network it trains (and
with which options), which parts it takes from earlier stages, its loss, optimiser, schedule,
batch hook, precision, memory layout and kernels, its epochs and its seed.

The runner, the Lightning module, the benchmark and ``condseg methods``/``condseg models`` read
these plans, so that "which stage trains model X, with what" is decided here and nowhere else.
A plan is only names and settings (cheap: listing every method's stages builds nothing);
:func:`stage_parts` builds what a stage trains with and refuses a stage that cannot work (a
network that cannot be built, an input size it cannot take, a loss without its views, a hook
without a size) before any stage takes its first step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from condseg.config import RunConfig, StageConfig, load_config
from condseg.data.transforms import VIEWS
from condseg.errors import CondsegError, TrainingError, WeightsUnavailableError, first_line
from condseg.losses.base import Loss, create_loss
from condseg.models.base import SegmentationModel, check_input_size
from condseg.models.registry import create_model, model_options
from condseg.recipes import METHODS, list_methods
from condseg.training.classes import run_classes
from condseg.training.hooks import BatchHook, create_batch_hook
from condseg.training.optim import configure


@dataclass(frozen=True)
class StagePlan:
    """What one stage trains and how (``cfg`` keeps the rest as configured: augmentation,
    views, early stopping, batch limits)."""

    name: str
    cfg: StageConfig
    model: str  # the registered network the stage trains
    options: dict[str, Any]  # its options (the run's model options it inherits included)
    init: dict[str, str]  # part of the network -> the earlier stage it is taken from
    precision: str
    memory_format: str  # the configured choice; the layout follows the training device
    plain_kernels: bool  # the reference kernels instead of the fast ones
    seed: int  # seeds everything as the stage starts

    @property
    def max_epochs(self) -> int:
        return self.cfg.max_epochs

    def create_loss(self) -> Loss:
        """The stage's loss, refused when the stage does not make the views it needs."""
        cfg, name = self.cfg, self.name
        try:
            loss = create_loss(cfg.loss.name, **cfg.loss.options)
        except CondsegError as error:  # a loss names its keys "loss.options.x": make them full
            raise _in_stage(error, name) from error
        for view in cfg.views:
            VIEWS.get(view)
        missing = [v for v in loss.views if v not in cfg.views]
        if missing:
            raise TrainingError(
                f"loss {cfg.loss.name!r} of stage {name} needs the views {missing}; add them "
                f"with stages.{name}.views=[{', '.join([*cfg.views, *missing])}]"
            )
        return loss

    def summary(self) -> str:
        """One line: network (and the parts taken), loss, optimiser, schedule, epochs."""
        opt = self.cfg.optimizer
        init = ", ".join(f"{part} from {source}" for part, source in self.init.items())
        encoder = f" (encoder {opt.encoder_lr:g})" if opt.encoder_lr else ""
        return (f"{self.name}: {self.model}{f' ({init})' if init else ''}; loss "
                f"{self.cfg.loss.name}; {opt.name} lr {opt.lr:g}{encoder}; "
                f"{self.cfg.schedule.name}; {self.max_epochs} epochs")


def _in_stage(error: CondsegError, name: str) -> CondsegError:
    """``error`` of a stage's loss with its keys ("loss.options.x") made full
    ("stages.NAME.loss.options.x"), in the message and in the setting that avoids it."""

    def full(text: str) -> str:
        return re.sub(r"(?<![\w.])loss\.options\.", f"stages.{name}.loss.options.", text)

    if isinstance(error, WeightsUnavailableError):
        without = full(error.without) if error.without is not None else None
        return WeightsUnavailableError(f"stages.{name}: {full(str(error))}", what=error.what,
                                       without=without)
    return type(error)(f"stages.{name}: {full(str(error))}")


def stage_model(config: RunConfig, name: str) -> tuple[str, dict[str, Any]]:
    """The model name and options stage ``name`` trains: its own network (with the options it
    inherits from the run's model), else the run's model."""
    cfg, run_model = config.stages[name], config.model
    if cfg.model is None:
        return run_model.name, dict(run_model.options)
    resolved = model_options(run_model.name, run_model.options)
    inherited = {key: resolved[key] for key in cfg.model.inherit if key in resolved}
    if "num_classes" in run_model.options:  # the run's classes: every network it trains
        inherited["num_classes"] = run_model.options["num_classes"]
    return cfg.model.name, {**inherited, **cfg.model.options}


def plan_stages(config: RunConfig, names: list[str] | None = None) -> dict[str, StagePlan]:
    """The plans of the stages ``names`` (default: every stage of the method), in order."""
    stages = list(config.stages)
    plans = {}
    for name in names or stages:
        model, options = stage_model(config, name)
        cfg = config.stages[name]
        plans[name] = StagePlan(
            name=name, cfg=cfg, model=model, options=options,
            init={part: source for part, source in cfg.init.items() if source is not None},
            precision=config.precision, memory_format=config.memory_format,
            plain_kernels=config.plain_kernels, seed=config.seed + stages.index(name) + 1,
        )
    return plans


@dataclass(frozen=True)
class StageParts:
    """What a stage trains with, built once from its plan and checked."""

    plan: StagePlan
    loss: Loss
    batch_hook: BatchHook | None  # at the run's input size
    classes: tuple[str, ...] | None = None  # the class names of K >= 2 (None: binary)


def stage_parts(plan: StagePlan, config: RunConfig) -> StageParts:
    """The loss and batch hook of ``plan``, with its network laid out on the meta device (no
    memory, no download) to check the input sizes it will be given and to build its optimiser
    and schedule."""
    name, cfg = plan.name, plan.cfg
    try:
        with torch.device("meta"):
            network = create_model(plan.model, pretrained=False, **plan.options)
    except Exception as error:  # options are the user's input: any failure to build is theirs
        key = "model.options" if cfg.model is None else f"stages.{name}.model.options" + "".join(
            f" and model.options.{k}" for k in cfg.model.inherit)
        k = plan.options.get("num_classes", 1)
        source = f"; num_classes {k} is the dataset's (labels.json)" if k != 1 else ""
        raise TrainingError(f"stages.{name}: model {plan.model!r} cannot be built from "
                            f"{key} ({first_line(error)}{source})") from error
    try:
        configure(network, cfg)
    except ValueError as error:  # torch's refusal of a value of the stage's config
        raise TrainingError(f"stages.{name}: optimizer {cfg.optimizer.name} or schedule "
                            f"{cfg.schedule.name} refuses its options ({first_line(error)}); "
                            f"fix stages.{name}.optimizer / schedule") from error
    loss = plan.create_loss()
    if loss.binary_only and plan.options.get("num_classes", 1) != 1:
        raise TrainingError(f"stages.{name}: loss {cfg.loss.name!r} takes one logit map, but "
                            f"the dataset declares {plan.options['num_classes']} classes; use "
                            f"a loss that takes them (e.g. stages.{name}.loss.name=bce-dice)")
    hook = None
    if cfg.batch_hook is not None:
        hook = create_batch_hook(cfg.batch_hook.name, **cfg.batch_hook.options)
    try:
        for size in (config.data.size, *(hook.sizes if hook is not None else ())):
            check_input_size(network, size, size)
    except CondsegError as error:
        raise TrainingError(f"stages.{name}: {error} (data.size / batch_hook sizes)") from error
    return StageParts(plan, loss, _resolved(hook, config.data.size, name, network),
                      run_classes(config))


def _resolved(
    hook: BatchHook | None, size: int, name: str, network: SegmentationModel
) -> BatchHook | None:
    """The hook for a run at ``size``: the sizes a model trains at are never a silent default
    of the recipe."""
    if hook is None:
        return None
    try:
        return hook.resolved(size, network.input_divisor)
    except CondsegError as error:
        raise type(error)(f"stages.{name}: {error}") from error


def method_plans(method: str) -> dict[str, StagePlan]:
    """The stages of ``method`` as its default configuration plans them."""
    return plan_stages(load_config("default", [f"method={method}"]))


def method_rows() -> list[tuple[str, str, list[str]]]:
    """``condseg methods``: each method's name, description and one line per stage."""
    return [(name, description, [plan.summary() for plan in method_plans(name).values()])
            for name, description in METHODS.describe().items()]


def trained_by() -> dict[str, list[str]]:
    """``condseg models``: each network trained by some method, and by which stages
    (``method/stage``)."""
    found: dict[str, list[str]] = {}
    for method in list_methods():
        for plan in method_plans(method).values():
            found.setdefault(plan.model, []).append(f"{method}/{plan.name}")
    return found


def training_plan(model: str) -> StagePlan | None:
    """The plan of the first method stage that trains ``model`` (ConDSeg's network: stage 2,
    Net_0: stage 1), or None when no method trains it."""
    for method in list_methods():
        for plan in method_plans(method).values():
            if plan.model == model:
                return plan
    return None


def fetch_weights(config: RunConfig) -> None:
    """Get (download, or find in the cache or a local file) every pretrained weight the
    config's trained stages will load — an encoder's ImageNet weights where no earlier stage
    provides the encoder, a loss's fixed network (LossNet's VGG) — raising the
    :class:`~condseg.errors.WeightsUnavailableError` training would raise, before any run."""
    for plan in plan_stages(config, config.stages_to_train()).values():
        plan.create_loss()
        if config.model.pretrained and not plan.init:
            create_model(plan.model, pretrained=True, weights=config.model.weights,
                         **plan.options)


def check_stages(config: RunConfig) -> None:
    """Refuse, as a run's start would, a trained stage that cannot work (a network that
    cannot be built, an input size it cannot take, a loss without its views)."""
    for plan in plan_stages(config, config.stages_to_train()).values():
        stage_parts(plan, config)
