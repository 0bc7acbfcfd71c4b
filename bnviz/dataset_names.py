"""The datasets bnviz knows, by name: importable without torch (the CLI reads its presets and
rejects bad input before torch loads; bnviz/data.py loads them)."""

from __future__ import annotations

# The order is part of the data: a synthetic set's seed includes its index here (data.py).
DATASETS: tuple[str, ...] = ("mnist-mini", "mnist", "fashion-mnist", "spiral", "circles", "xor", "blobs")
IMAGE_DATASETS: frozenset[str] = frozenset({"mnist-mini", "mnist", "fashion-mnist"})
