"""How plug-ins attach to a host model: by forward hooks on the sites the host declares
(:meth:`SegmentationModel.plugin_sites`), so that the host's code and its state-dict keys stay as
they are and a plug-in works on every host that names its sites.

The model option ``plugins`` names them, as a list of names (default options) or a mapping of
name to options, ``false`` leaving one out (so that a preset can switch off what a recipe turns
on): ``plugins={"uafr": {}, "pdcr": {"layers": ["encoder3"]}}``. ``create_model`` builds the
host and then :func:`attach_plugins`, which adds the plug-ins as ``model.plugins.<name>`` in a
fixed order (UAFR before PDCR, so that PDCR sees the re-weighted features).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from condseg.errors import PluginError
from condseg.models.base import PluginSite, SegmentationModel
from condseg.registry import Registry

PLUGINS: Registry[type[Plugin]] = Registry("plug-in")


class Plugin(nn.Module):
    """A plug-in: built with the host and its sites, it registers its own hooks on the host."""

    #: Attachment order: lower first (hooks on one site run in the order they were attached).
    order: int = 0

    def __init__(self, model: SegmentationModel, sites: Mapping[str, PluginSite]) -> None:
        super().__init__()


def register_plugin(name: str, plugin: type[Plugin] | None = None, *,
                    description: str = "") -> Any:
    """Register a :class:`Plugin` subclass under ``name`` (without it: a decorator that does)."""
    return PLUGINS.register(name, plugin, description=description)


def plugin_specs(spec: Any) -> dict[str, dict[str, Any]]:
    """The ``plugins`` option as {name: options}: a list of names, or a mapping whose values
    are options (a mapping, or null for the defaults) or ``false`` (left out)."""
    if isinstance(spec, str) or not isinstance(spec, Iterable | Mapping):
        raise PluginError(f"plugins must be a list of names or a mapping of name to options, "
                         f"got {spec!r}")
    items = spec.items() if isinstance(spec, Mapping) else ((name, {}) for name in spec)
    out: dict[str, dict[str, Any]] = {}
    for name, options in items:
        if options is False:
            continue
        if options is not None and not isinstance(options, Mapping):
            raise PluginError(f"options of plug-in {name!r} must be a mapping (or false to leave "
                             f"it out), got {options!r}")
        out[str(name)] = dict(options or {})
    return out


def attach_plugins(model: SegmentationModel, spec: Any) -> None:
    """Build the plug-ins of ``spec`` on ``model`` (see the module docstring)."""
    specs = plugin_specs(spec)
    if not specs:
        return
    sites = model.plugin_sites()
    if not sites:
        raise PluginError(f"{model.name} declares no plug-in sites, so plug-ins "
                         f"({', '.join(specs)}) cannot attach to it; use a model that does")
    classes = {name: PLUGINS.get(name) for name in specs}
    plugins = nn.ModuleDict()
    for name in sorted(specs, key=lambda n: classes[n].order):
        try:
            plugins[name] = classes[name](model, sites, **specs[name])
        except TypeError as error:
            raise PluginError(f"bad option for plug-in {name!r}: {error}") from error
    model.plugins = plugins


def pick_sites(
    sites: Mapping[str, PluginSite], names: Iterable[str], plugin: str
) -> dict[str, PluginSite]:
    """The named sites, in the host's order; an unknown name is an error listing the sites."""
    names = list(names)
    unknown = [name for name in names if name not in sites]
    if unknown:
        raise PluginError(f"plug-in {plugin}: no site {', '.join(map(repr, unknown))} on this "
                         f"model; its sites: {', '.join(sites)}")
    return {name: site for name, site in sites.items() if name in names}
