"""What every method of a study receives: its own recipe, with the study's shared protocol,
budget and overrides on top, and whatever it had to give up to run here.

Each method's configuration is ``condseg train --method M`` plus ``key=value`` overrides in a
fixed order — the protocol (size, batch, precision, pretrained), the budget (epochs), the
study's overrides, the method's own, and last the fallbacks for weights that cannot be had
(``pretrained: auto``). A compute budget comes after the overrides: the epochs they give are
the proportions in which the method's stages share it. Every value that then differs from the
recipe is a :class:`Change` with its reason: nothing a recipe gives up is silent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from condseg.config import RunConfig
from condseg.errors import CondsegError, StudyError, WeightsUnavailableError, first_line
from condseg.files import read_json
from condseg.study.budget import compute_budget
from condseg.study.spec import Budget, MethodEntry, StudySpec
from condseg.training.classes import with_dataset_classes
from condseg.training.plan import check_stages, fetch_weights
from condseg.training.request import run_config

PROTOCOL, BUDGET, STUDY, OWN = ("the study's protocol", "the study's budget",
                                "the study's overrides", "its own overrides")
#: Keys a study sets per run (seed, fold) and the dataset, and settings of logging and input
#: speed that do not change what is trained: not changes of the recipe.
_NOT_RECIPE = ("seed", "data.root", "data.train_split", "data.val_split", "data.num_workers",
               "progress_bar", "log_every_n_steps", "checkpoint_every_n_steps",
               "checkpoint_every_minutes", "keep_best_checkpoint", "log_images_every_n_epochs")


#: What the record of a compute budget holds for each stage (study.budget).
_STAGE_COST = ("gflop_per_image", "images_per_epoch", "tflop_per_epoch", "epochs")


@dataclass(frozen=True)
class Change:
    """A value of a method's recipe that its runs in the study do not have, and why."""

    key: str
    recipe: Any
    value: Any
    reason: str


@dataclass
class MethodProtocol:
    """One method of the study as its runs receive it."""

    name: str
    method: str
    overrides: list[str]
    changes: list[Change] = field(default_factory=list)
    # Under a compute budget: each stage's cost and epochs (study.budget); None: epochs given
    cost: dict[str, Any] | None = None

    def config(self) -> RunConfig:
        return _load(self.method, self.overrides)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MethodProtocol:
        changes = [Change(**c) for c in raw.get("changes", [])]
        cost = raw.get("cost")
        if cost is not None:  # what the report reads of it, there and of the right kinds
            numbers = [cost["planned_tflop"], *(stage[key] for stage in cost["stages"].values()
                                                for key in _STAGE_COST)]
            if cost["kind"] not in ("flops", "time") or not all(
                    isinstance(n, (int, float)) for n in numbers):
                raise TypeError("its cost is not as condseg writes it")
        return cls(raw["name"], raw["method"], list(raw["overrides"]), changes, cost)


def resolve(
    spec: StudySpec, entry: MethodEntry, threads: int = 1, gpus: int = 0
) -> MethodProtocol:
    """The overrides and changes of one method of ``spec``; weights are fetched (or their
    absence found) now, so that no run fails for them later. A compute budget is measured on
    the method as it will train (its weights' fallbacks applied), with the ``threads`` and
    ``gpus`` a job will have."""
    method = entry.method_name
    groups = [(PROTOCOL, protocol_overrides(spec)), (STUDY, list(spec.overrides)),
              (OWN, list(entry.overrides))]
    cost = None
    try:
        given = [o for _, items in groups for o in items]
        fallbacks = _weight_fallbacks(method, given, spec.protocol.pretrained)
        config = _load(method, given + [o for _, items in fallbacks for o in items])
        if spec.data:
            config = with_dataset_classes(config, spec.data)
        if spec.budget.compute is not None:
            check_stages(config)  # a network that cannot be built is named before it is timed
            try:
                epochs, cost = compute_budget(spec, config, threads, gpus)
            except (RuntimeError, OSError) as error:  # the machine's: memory, a file, a device
                raise StudyError(f"measuring the budget's cost failed ({first_line(error)}); "
                                 "lower --batch-size, or give the budget in FLOPs") from error
            # last: epochs given in overrides set the stages' proportions, the budget the rest
            groups.append((BUDGET, [f"stages.{name}.max_epochs={n}" for name, n in
                                    epochs.items()]))
        else:
            groups.insert(1, (BUDGET, budget_overrides(spec.budget, config)))
    except CondsegError as error:
        raise StudyError(f"method {entry.name}: {first_line(error)}") from error
    groups += fallbacks
    overrides = [o for _, items in groups for o in items]
    try:  # a size, option or K a network cannot take fails here, not in every run; so do
        # epochs a budget gave that a stage's schedule cannot take (its warm-up)
        received = MethodProtocol(entry.name, method, overrides, _changes(method, groups), cost)
        config = received.config()
        check_stages(with_dataset_classes(config, spec.data) if spec.data else config)
    except CondsegError as error:
        raise StudyError(f"method {entry.name}: {first_line(error)}") from error
    return received


def protocol_overrides(spec: StudySpec) -> list[str]:
    """The shared protocol as overrides (what it leaves to each recipe gives none)."""
    protocol = spec.protocol
    found = []
    if protocol.size is not None:
        found.append(f"data.size={protocol.size}")
    if protocol.batch_size is not None:
        found.append(f"data.batch_size={protocol.batch_size}")
    if protocol.precision is not None:
        found.append(f"precision={protocol.precision}")
    if protocol.pretrained == "none":
        found.append("model.pretrained=false")
    return found


def budget_overrides(budget: Budget, config: RunConfig) -> list[str]:
    """max_epochs of each trained stage: ``epochs`` each, or ``total_epochs`` shared as the
    recipe shares its epochs (largest remainders; every stage at least one)."""
    stages = config.stages_to_train()
    if budget.epochs is not None:
        epochs = {name: budget.epochs for name in stages}
    elif budget.total_epochs is not None:
        epochs = _shares(budget.total_epochs, {s: config.stages[s].max_epochs for s in stages})
    else:
        return []
    return [f"stages.{name}.max_epochs={n}" for name, n in epochs.items()]


def _shares(total: int, weights: dict[str, int]) -> dict[str, int]:
    if total < len(weights):
        raise StudyError(f"budget.total_epochs ({total}) is fewer than the {len(weights)} stages "
                         f"({', '.join(weights)}) that train; give at least {len(weights)}")
    whole = sum(weights.values())
    exact = {name: total * w / whole for name, w in weights.items()}
    shares = {name: max(1, int(value)) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda n: exact[n] - int(exact[n]), reverse=True)
    for name in by_remainder[: max(0, total - sum(shares.values()))]:
        shares[name] += 1
    while sum(shares.values()) > total:  # the minimum of one took epochs from the budget
        shares[max(shares, key=shares.__getitem__)] -= 1
    return shares


def _weight_fallbacks(
    method: str, overrides: list[str], pretrained: str
) -> list[tuple[str, list[str]]]:
    """The settings that train without each weight that cannot be had, with the reason, in
    the order they were found; ``pretrained: imagenet`` refuses instead."""
    found: list[tuple[str, list[str]]] = []
    for _ in range(8):  # each fallback removes one need; a method has a few at most
        try:
            fetch_weights(_load(method, overrides + [o for _, (o,) in found]))
            return found
        except WeightsUnavailableError as error:
            if pretrained == "imagenet" or error.without is None or any(
                    error.without == o for _, (o,) in found):
                hint = (" (pretrained: auto trains without them and records it)"
                        if pretrained == "imagenet" and error.without else "")
                raise StudyError(f"{first_line(error)}{hint}") from error
            found.append((f"{error.what or 'weights'} unavailable here", [error.without]))
    raise StudyError(f"more than 8 weights cannot be had: {[o for _, (o,) in found]}")


def _load(method: str, overrides: list[str]) -> RunConfig:
    """``condseg train --method METHOD`` with ``overrides``."""
    return run_config(None, overrides, method=method)


def _changes(method: str, groups: list[tuple[str, list[str]]]) -> list[Change]:
    """Every value that differs from the recipe, with the last group that set it."""
    steps = [_flat(_load(method, []).model_dump(mode="json"))]
    applied: list[str] = []
    for _, items in groups:
        applied += items
        steps.append(_flat(_load(method, applied).model_dump(mode="json")) if items
                     else steps[-1])
    recipe, final = steps[0], steps[-1]
    changes = []
    for key in sorted(set(recipe) | set(final)):
        if _same(recipe.get(key), final.get(key)) or key in _NOT_RECIPE:
            continue
        last = max(i for i in range(1, len(steps)) if steps[i].get(key) != steps[i - 1].get(key))
        changes.append(Change(key, recipe.get(key), final.get(key), groups[last - 1][0]))
    return changes


def _same(a: Any, b: Any) -> bool:
    """Equal, or both nothing: an empty section's options (``{}``) under a section set to null
    are not something the recipe gave up."""
    return a == b or all(v is None or v == {} or v == [] for v in (a, b))


def read_protocols(path: Path, spec: StudySpec) -> dict[str, MethodProtocol]:
    """What the methods of a study folder received (``protocol.json``), refused in one line
    when this study did not write it so: unreadable, of another method, or edited so that its
    overrides no longer give the changes it records (the report would show a protocol that is
    not in effect)."""
    redo = "restore it, or start the study again in a new --out"
    todo = ("restore it from a copy of the study, or move it away to resolve the methods again "
            "(what a method receives may then change)")
    entries = read_json(path, list, StudyError, todo)
    try:
        saved = [MethodProtocol.from_json(raw) for raw in entries]
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # an entry of another shape
        raise StudyError(f"{path} is damaged: an entry is not as condseg writes it "
                         f"({type(error).__name__}: {first_line(error)}); {todo}") from None
    methods = {entry.name: entry.method_name for entry in spec.methods}
    for received in saved:
        edited = StudyError(f"{path} was edited: what it records for method {received.name} "
                            f"is not what its overrides give; {redo}")
        if methods.get(received.name, received.method) != received.method:
            raise edited
        try:
            found = _changes(received.method, [("", received.overrides)])
        except CondsegError as error:
            raise StudyError(f"{path}: method {received.name}: {first_line(error)}; "
                             f"{redo}") from None
        recorded = [(c.key, c.recipe, c.value) for c in received.changes
                    if not _same(c.recipe, c.value)]  # as an earlier condseg recorded them
        if recorded != [(c.key, c.recipe, c.value) for c in found]:
            raise edited
    return {received.name: received for received in saved}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a JSON tree (lists are leaves)."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, item in tree.items()
                for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}
