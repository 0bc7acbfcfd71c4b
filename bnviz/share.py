"""Shareable links: a comparison <-> URL query parameters, forgiving of mangled links.

A link names its preset (the base) and only what differs from it, so it stays short and
readable: ``?preset=quick-look&lr=0.1&bn.placement=after``. Reading a link never fails:
each parameter that cannot be applied is skipped and reported in one line, and the page
opens with the rest.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from bnviz import presets
from bnviz.config import Comparison
from bnviz.errors import ConfigError

DEFAULT_PRESET = "quick-look"


def to_query(comparison: Comparison, preset: str | None) -> dict[str, str]:
    base = presets.get(preset).comparison() if preset in presets.PRESETS else None
    query = {"preset": preset} if base is not None else {}
    query.update(comparison.to_flat(base))
    return query


def from_query(params: Mapping[str, str | Sequence[str]]) -> tuple[Comparison, str | None, list[str]]:
    """(comparison, preset name or None, one warning per parameter that was skipped)."""
    warnings: list[str] = []
    flat: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(value, str):  # a repeated parameter (?lr=1&lr=2) arrives as a list
            values = list(value)
            if len(values) != 1:
                warnings.append(f"{key}: given {len(values)} times in the link; ignored")
                continue
            value = values[0]
        flat[key] = value
    preset = flat.pop("preset", None)
    if preset is not None and preset not in presets.PRESETS:
        warnings.append(f"preset: unknown preset {preset!r}; using {DEFAULT_PRESET}")
        preset = None
    preset = preset if preset is not None else DEFAULT_PRESET
    comparison = presets.get(preset).comparison()
    # `variants` first, so per-variant keys can name the variants it adds.
    for key in sorted(flat, key=lambda k: k != "variants"):
        try:
            comparison = Comparison.from_flat([(key, flat[key])], base=comparison)
        except ConfigError as exc:
            warnings.append(f"{exc}; ignored")
    return comparison, preset, warnings
