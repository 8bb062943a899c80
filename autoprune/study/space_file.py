"""Search space files: the YAML schema (:func:`space_from_dict`), the shipped spaces
(``search_spaces/``, :func:`default_space_file`), the automatic space (:func:`auto_space`)
and :func:`load_space`, which picks among them. The schema is in the docstring of
:mod:`autoprune.study.space`, whose classes a file becomes."""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.config import (
    NONE_TYPE,
    LayerTarget,
    parse_target,
    pattern_specificity,
    read_yaml,
    reject_unknown_keys,
)
from autoprune.errors import ConfigError
from autoprune.groups import ChannelGraph
from autoprune.sparsity import get_sparsity
from autoprune.study.space import RateRange, SearchSpace, Variable

DEFAULT_TYPES_CONV = (NONE_TYPE, "filter", "shape")
DEFAULT_TYPES_LINEAR = (NONE_TYPE, "filter", "irregular")
DEFAULT_RATE = {"low": 0.1, "high": 0.9, "step": 0.1}

def _spaces_dir() -> Path:
    """``search_spaces/`` of the source tree (editable installs), else the copy a regular
    install puts under ``<prefix>/share/autoprune/search_spaces``."""
    tree = Path(__file__).resolve().parents[2] / "search_spaces"
    installed = Path(sys.prefix) / "share" / "autoprune" / "search_spaces"
    return tree if tree.is_dir() or not installed.is_dir() else installed


SPACES_DIR = _spaces_dir()


# -- loading ------------------------------------------------------------------
def default_space_file(model: str) -> Path | None:
    """The shipped space for a model (``tv:resnet18`` → ``search_spaces/tv-resnet18.yaml``)."""
    path = SPACES_DIR / f"{model.replace(':', '-').replace('/', '-')}.yaml"
    return path if path.is_file() else None


def load_space(spec: str | os.PathLike | None, model_name: str, graph: ChannelGraph, *, device: str = "cpu") -> SearchSpace:
    """Resolve a space: ``spec`` is a YAML file, ``"auto"``, or None (the model's shipped file, else auto)."""
    if spec is None:
        path = default_space_file(model_name)
        if path is None:
            return auto_space(graph, device=device)
        spec = path
    if str(spec) == "auto":
        return auto_space(graph, device=device)
    path = Path(spec)
    raw = read_yaml(path, "search space file", " (see search_spaces/ for examples, or use --space auto)")
    return space_from_dict(raw, graph, source=str(path.resolve()), model_name=model_name)


def _default_layers(graph: ChannelGraph) -> list[str]:
    return [n for n, info in graph.layers.items() if not info.is_output]


def auto_space(graph: ChannelGraph, *, device: str = "cpu") -> SearchSpace:
    """Every conv and linear but the output layer (the first conv included); convs get
    none/filter/shape, linears none/filter/irregular (plus 2:4 on CUDA), rates 0.1–0.9."""
    raw: dict[str, Any] = {"types": list(DEFAULT_TYPES_CONV), "rate": dict(DEFAULT_RATE), "overrides": {}}
    for name in _default_layers(graph):
        if graph.layers[name].kind == "linear":
            raw["overrides"][name] = {"types": list(DEFAULT_TYPES_LINEAR)}
    if device.startswith("cuda"):
        raw["types"].append("2:4")
        for o in raw["overrides"].values():
            o["types"].append("2:4")
    space = space_from_dict(raw, graph, source="auto", strict=False)
    return space


_TOP_KEYS = {"model", "include", "types", "rate", "overrides", "groups", "fixed"}


def _rate(raw: Any, where: str) -> RateRange:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'rate' must be a mapping {{low, high, step}}, got {raw!r}.")
    reject_unknown_keys(raw, {"low", "high", "step"}, f"{where}: rate")
    try:
        low = float(raw.get("low", DEFAULT_RATE["low"]))
        high = float(raw.get("high", DEFAULT_RATE["high"]))
        step = raw.get("step", None)
        step = None if step is None else float(step)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: rate low/high/step must be numbers, got {raw!r}.") from None
    if not (0.0 <= low <= high < 1.0):
        raise ConfigError(f"{where}: rate needs 0 <= low <= high < 1, got low={low}, high={high}.")
    if step is not None and not (0 < step <= max(high - low, step)):
        raise ConfigError(f"{where}: rate step must be > 0, got {step}.")
    if step is not None and abs(round((high - low) / step) * step - (high - low)) > 1e-9:
        raise ConfigError(f"{where}: (high - low) = {high - low:g} is not a multiple of step {step:g}.")
    return RateRange(low, high, step)


def _types(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'types' must be a non-empty list such as [none, filter, shape], got {raw!r}.")
    out = []
    for t in raw:
        if isinstance(t, int) and not isinstance(t, bool):  # YAML reads an unquoted 2:4 as 124 (base 60)
            raise ConfigError(f"{where}: type {t!r} is a number; quote N:M patterns in YAML, e.g. '2:4'.")
        t = str(t).strip().lower()
        if t != NONE_TYPE:
            try:
                get_sparsity(t)
            except Exception as exc:  # UnknownNameError with the list of names
                raise ConfigError(f"{where}: {exc}") from None
        if t not in out:
            out.append(t)
    return out


def _match(pattern: str, names: list[str], where: str) -> list[str]:
    found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not found:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ConfigError(f"{where}: pattern '{pattern}' matches no layer (layers: {shown}).")
    return found


def _applicable(kind: str, layers: list[str], graph: ChannelGraph, model_modules: dict) -> str | None:
    """None if ``kind`` can prune every layer, else why not."""
    if kind == NONE_TYPE:
        return None
    stype = get_sparsity(kind)
    for layer in layers:
        if stype.structured == "out":
            g = graph.out_group(layer)
            if g is None or not g.prunable:
                return f"{layer}'s output channels cannot be removed ({g.reason if g else 'no channel group'})"
        if stype.structured == "in":
            g = graph.in_group(layer)
            if g is None or not g.prunable:
                return f"{layer}'s input channels cannot be removed ({g.reason if g else 'no channel group'})"
        module = model_modules.get(layer)
        if module is not None:
            reason = stype.applies_to(module.weight)
            if reason is not None:
                return reason
    return None


def space_from_dict(
    raw: Any, graph: ChannelGraph, *, source: str = "space", model_name: str | None = None, strict: bool = True
) -> SearchSpace:
    """Validate a space mapping against a model's layers and resolve its variables."""
    where = f"search space '{source}'"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys such as types, rate, overrides, groups, fixed.")
    reject_unknown_keys(raw, _TOP_KEYS, where)
    if model_name is not None and raw.get("model") is not None and str(raw["model"]) != model_name:
        raise ConfigError(f"{where} is written for model '{raw['model']}', not '{model_name}'; pick the matching --space.")
    names = list(graph.layers)
    modules = dict(graph.model.named_modules())
    searched = _searched(raw.get("include"), graph, where)
    base = _Base(_types(raw.get("types", list(DEFAULT_TYPES_CONV)), where), _rate(raw.get("rate", DEFAULT_RATE), where))
    layer_types, layer_rate = _overrides(raw.get("overrides") or {}, searched, base, where)
    fixed = _fixed(raw.get("fixed") or {}, names, graph, modules, where)
    searched = [n for n in searched if n not in fixed]
    grouped, group_vars = _groups(raw.get("groups") or {}, names, fixed, layer_types, layer_rate, base, where)
    # variables in graph order: a layer set sits where its first layer is
    variables: list[Variable] = []
    placed: set[str] = set()
    for n in names:
        if n in grouped:
            g = grouped[n]
            if g not in placed:
                variables.append(group_vars[g])
                placed.add(g)
        elif n in searched:
            variables.append(Variable(f"layer.{n}", [n], list(layer_types[n]), layer_rate[n]))
    notes: list[str] = []
    kept = _applicable_types(variables, graph, modules, strict, notes)
    if not kept and not any(t.type != NONE_TYPE for t in fixed.values()):
        raise ConfigError(f"{where}: nothing to search: every layer is fixed dense or no type applies to it.")
    return SearchSpace(source, kept, fixed, notes)


@dataclass(frozen=True)
class _Base:
    """The space's own types and rate range (every searched layer's unless overridden)."""

    types: list[str]
    rate: RateRange


def _searched(include: Any, graph: ChannelGraph, where: str) -> list[str]:  # noqa: ANN401
    """The layers ``include`` names (default: every layer but the output layer), in graph order."""
    if include is None:
        return _default_layers(graph)
    if not isinstance(include, list) or not include:
        raise ConfigError(f"{where}: 'include' must be a non-empty list of layer names or globs.")
    names = list(graph.layers)
    searched: list[str] = []
    for pat in include:
        for n in _match(str(pat), names, f"{where}: include"):
            if n not in searched:
                searched.append(n)
    return [n for n in names if n in searched]  # graph order


def _overrides(overrides: Any, searched: list[str], base: _Base,  # noqa: ANN401
               where: str) -> tuple[dict[str, list[str]], dict[str, RateRange]]:
    """Per-layer types and rate range: the most specific override wins (an exact name over a
    glob, a more specific glob over a looser one, the first written among equals)."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: 'overrides' must map layer globs to {{types, rate}}.")
    layer_types = {n: base.types for n in searched}
    layer_rate = {n: base.rate for n in searched}
    best: dict[str, tuple[int, int, int]] = {}
    for order, (pat, val) in enumerate(overrides.items()):
        w = f"{where}: overrides['{pat}']"
        if not isinstance(val, dict):
            raise ConfigError(f"{w}: expected {{types: [...], rate: {{...}}}}, got {val!r}.")
        reject_unknown_keys(val, {"types", "rate"}, w)
        for n in _match(str(pat), searched, w):
            key = (1 if pat == n else 0, pattern_specificity(str(pat)), -order)
            if n in best and best[n] > key:
                continue
            best[n] = key
            if "types" in val:
                layer_types[n] = _types(val["types"], w)
            if "rate" in val:
                layer_rate[n] = _rate(val["rate"], w)
    return layer_types, layer_rate


def _fixed(fixed_raw: Any, names: list[str], graph: ChannelGraph, modules: dict,  # noqa: ANN401
           where: str) -> dict[str, LayerTarget]:
    """Layers given one target, not searched."""
    if not isinstance(fixed_raw, dict):
        raise ConfigError(f"{where}: 'fixed' must map layer globs to a target such as {{type: filter, rate: 0.5}} or none.")
    fixed: dict[str, LayerTarget] = {}
    for pat, val in fixed_raw.items():
        w = f"{where}: fixed['{pat}']"
        target = parse_target(val, w)
        if target.type != NONE_TYPE:
            try:
                get_sparsity(target.type).check_rate(target.rate)
            except Exception as exc:
                raise ConfigError(f"{w}: {exc}") from None
        for n in _match(str(pat), names, w):
            why = _applicable(target.type, [n], graph, modules)
            if why is not None:
                raise ConfigError(f"{w}: {target.type} cannot apply to '{n}': {why}.")
            fixed[n] = target
    return fixed


def _groups(groups_raw: Any, names: list[str], fixed: dict[str, LayerTarget],  # noqa: ANN401
            layer_types: dict[str, list[str]], layer_rate: dict[str, RateRange], base: _Base,
            where: str) -> tuple[dict[str, str], dict[str, Variable]]:
    """Layer sets searched as one variable: layer -> its group, and each group's variable."""
    if not isinstance(groups_raw, dict):
        raise ConfigError(f"{where}: 'groups' must map a group name to a list of layer globs.")
    grouped: dict[str, str] = {}
    group_vars: dict[str, Variable] = {}
    for gname, val in groups_raw.items():
        w = f"{where}: groups['{gname}']"
        if isinstance(val, list):
            val = {"layers": val}
        if not isinstance(val, dict):
            raise ConfigError(f"{w}: expected a list of layer globs or {{layers, types, rate}}.")
        reject_unknown_keys(val, {"layers", "types", "rate"}, w)
        pats = val.get("layers")
        if not isinstance(pats, list) or not pats:
            raise ConfigError(f"{w}: 'layers' must be a non-empty list of layer globs.")
        members: list[str] = []
        for pat in pats:
            for n in _match(str(pat), names, w):
                if n in fixed:
                    raise ConfigError(f"{w}: layer '{n}' is also fixed; a layer is either fixed or searched.")
                if n in grouped and grouped[n] != gname:
                    raise ConfigError(f"{w}: layer '{n}' is already in group '{grouped[n]}'.")
                if n not in members:
                    members.append(n)
                grouped[n] = gname
        members = [n for n in names if n in members]
        for key, own, per_layer, default in (("types", "types" in val, layer_types, base.types),
                                             ("rate", "rate" in val, layer_rate, base.rate)):
            seen = {repr(per_layer.get(n, default)) for n in members}
            if not own and len(seen) > 1:
                raise ConfigError(f"{w}: its layers have different '{key}' (from overrides); give the group its own "
                                  f"'{key}' since they share one variable.")
        types = _types(val["types"], w) if "types" in val else layer_types.get(members[0], base.types)
        rate = _rate(val["rate"], w) if "rate" in val else layer_rate.get(members[0], base.rate)
        group_vars[gname] = Variable(f"group.{gname}", members, types, rate)
    return grouped, group_vars


def _applicable_types(variables: list[Variable], graph: ChannelGraph, modules: dict, strict: bool,
                      notes: list[str]) -> list[Variable]:
    """Each variable with the types its layers can take (a note for each one dropped); a
    variable left with none, or with only dense, is not searched."""
    kept: list[Variable] = []
    for var in variables:
        ok = []
        for t in var.types:
            why = _applicable(t, var.layers, graph, modules)
            if why is None:
                ok.append(t)
            elif strict or t not in DEFAULT_TYPES_CONV + DEFAULT_TYPES_LINEAR + ("2:4",):
                notes.append(f"{var.name}: type '{t}' dropped: {why}")
        if not ok:
            notes.append(f"{var.name}: no type applies; it stays dense")
            continue
        var.types = ok
        if var.types == [NONE_TYPE]:
            continue
        kept.append(var)
    return kept
