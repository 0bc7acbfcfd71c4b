"""Datasets for bnviz: a bundled MNIST subset, the full MNIST / Fashion-MNIST, 2-D toys.

``load(name)`` returns a :class:`Dataset` of torch tensors and caches it for the whole
process, so every session on one server shares one copy (treat the tensors as
read-only). Images are (N, 1, 28, 28) float32 normalized with the training set's own
mean and std; synthetic sets are (N, 2) float32 standardized per feature.

* ``mnist-mini`` -- 5,000 real MNIST digits shipped inside the package
  (``bnviz/datasets/mnist_mini.npz``, see its README); works offline.
* ``mnist``, ``fashion-mnist`` -- downloaded once with pooch into ``data_dir()/NAME``,
  trying each mirror in order and verifying SHA-256. When every mirror fails, ``mnist``
  falls back to ``mnist-mini`` with a ``notice``; ``fashion-mnist`` raises DataError.
* ``spiral``, ``circles``, ``xor``, ``blobs`` -- generated with a fixed seed.

Pre-fetch (used by the Docker build): ``python -m bnviz.data fetch mnist fashion-mnist``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import numpy as np
import platformdirs
import pooch
import requests
import torch

from bnviz.dataset_names import DATASETS
from bnviz.errors import BnvizError, ConfigError, DataError


class Remote(NamedTuple):
    mirrors: tuple[str, ...]  # base URLs ending in "/", tried in order
    sha256: dict[str, str]  # file name -> hex digest


# Hashes cross-checked in tensorflow/datasets (url_checksums/mnist.txt, fashion_mnist.txt)
# and ankane/torchvision-ruby (lib/torchvision/datasets/{mnist,fashion_mnist}.rb).
REMOTE: dict[str, Remote] = {
    "mnist": Remote(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": Remote(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
}

_N_TRAIN, _N_TEST = 4000, 1000  # mnist-mini and the synthetic sets
_DATA_SEED = 20240607  # fixed, so the data never depends on a run's training seed
_SYNTH_CLASSES = {"spiral": 3, "circles": 2, "xor": 2, "blobs": 4}
_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: tensors have no boolean ==
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    notice: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def data_dir() -> Path:
    """Where downloads are cached: $BNVIZ_DATA_DIR, else the user cache dir."""
    env = os.environ.get("BNVIZ_DATA_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("bnviz"))


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown value {name!r}; allowed: {', '.join(DATASETS)}")


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _why(exc: BaseException) -> str:
    """Why one mirror failed, in a few words. requests words a refused connection as its pool's
    repr ("HTTPSConnectionPool(host=..., port=443): Max retries exceeded with url: ..."), 250
    characters that cut the page's one-line notice short before the second mirror or the fix."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.Timeout):
        return f"no answer within {_TIMEOUT_S:g} s"
    if isinstance(exc, requests.ConnectionError):
        return "no connection"
    return _one_line(exc, 120)  # a hash mismatch (ValueError), a disk error


def download(
    name: str,
    mirrors: tuple[str, ...] | None = None,
    sha256: dict[str, str] | None = None,
    root: Path | None = None,
) -> dict[str, Path]:
    """Make every file of ``name`` present and verified under ``root/name``.

    Defaults come from REMOTE and data_dir() at call time (tests pass their own).
    Raises DataError when some file cannot be had from any mirror; no unverified file is
    ever left behind (pooch streams to a temp file and moves it only if the hash matches).
    """
    mirrors = mirrors if mirrors is not None else REMOTE[name].mirrors
    sha256 = sha256 if sha256 is not None else REMOTE[name].sha256
    folder = (root if root is not None else data_dir()) / name
    downloader = pooch.HTTPDownloader(progressbar=False, timeout=_TIMEOUT_S)
    paths = {}
    for fname, digest in sha256.items():
        path = folder / fname
        if path.exists():
            if pooch.file_hash(str(path)) == digest:
                paths[fname] = path
                continue
            try:  # corrupt or stale: must not survive even if every mirror fails
                path.unlink()
            except OSError as exc:  # e.g. a read-only volume
                reason = _one_line(exc)
                raise DataError(f"{name}: cached {fname} is corrupt and cannot be removed ({reason})") from exc
        errors = []
        for base in mirrors:
            try:
                pooch.retrieve(
                    base + fname, known_hash=f"sha256:{digest}", fname=fname, path=folder,
                    downloader=downloader, progressbar=False,
                )
                # pooch's temp file is private (0600); the data is public, and a cache
                # filled by one user (a build step) may be read by another (the server).
                path.chmod(0o644)
                break
            except Exception as exc:  # requests errors, hash mismatch (ValueError), disk errors
                errors.append(f"{urlsplit(base).netloc}: {_why(exc)}")
        else:
            raise DataError(f"{name}: could not download {fname} ({'; '.join(errors)})")
        paths[fname] = path
    return paths


def on_disk(name: str) -> bool:
    """Whether every file of the remote dataset ``name`` is in data_dir() and verified: load() needs no network."""
    folder = data_dir() / name
    try:
        return all(pooch.file_hash(str(folder / fname)) == digest for fname, digest in REMOTE[name].sha256.items())
    except OSError:  # missing or unreadable
        return False


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes (magic 2049 labels, 2051 images)."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path.name}: not a readable gzip file ({_one_line(exc)})") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path.name}: bad IDX header (expected magic number {magic})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path.name}: IDX header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def pixel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std of uint8 ``images``' pixels scaled to [0, 1], as float32 scalars.

    Computed exactly, in integers, from the counts of the 256 values, then rounded once. torch's
    float32 reduction rounds by its thread count (mnist-mini's mean differs in the last bit
    between 1 and 2 threads), and the workers' forkserver loads on one thread while a server or
    the CLI may use more (bnviz/worker_boot.py): exact statistics make every process normalize
    to the same bits. For mnist-mini they equal torch's one-thread values (tests/test_data.py),
    so runs made at one thread, as in docs/EXPERIMENTS.md, are unchanged.
    """
    counts = np.bincount(images.ravel(), minlength=256).tolist()
    n = sum(counts)
    s1 = sum(v * c for v, c in enumerate(counts))
    s2 = sum(v * v * c for v, c in enumerate(counts))
    mean = s1 / (255 * n)  # Python's int / int is correctly rounded
    std = math.sqrt((n * s2 - s1 * s1) / (n * (n - 1) * 255 * 255))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _image_dataset(name, train_x, train_y, test_x, test_y, notice=None) -> Dataset:
    """uint8 images + labels -> normalized float32 tensors (stats from the train split)."""
    for x, y in ((train_x, train_y), (test_x, test_y)):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),) or y.size == 0 or y.max() > 9:
            raise DataError(f"{name}: images {x.shape} and labels {y.shape} do not match 28x28 digits 0-9")
    x_train = torch.from_numpy(train_x.copy()).float().div_(255).unsqueeze(1)
    mean, std = pixel_stats(train_x)
    x_test = torch.from_numpy(test_x.copy()).float().div_(255).unsqueeze(1)
    return Dataset(
        name=name,
        x_train=x_train.sub_(mean).div_(std),
        y_train=torch.from_numpy(train_y.astype(np.int64)),
        x_test=x_test.sub_(mean).div_(std),
        y_test=torch.from_numpy(test_y.astype(np.int64)),
        n_classes=10,
        notice=notice,
    )


def _mnist_mini() -> Dataset:
    return _image_dataset("mnist-mini", *mnist_mini_split())


def mnist_mini_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled digits as uint8 (train images, train labels, test images, test labels)."""
    with resources.files("bnviz").joinpath("datasets/mnist_mini.npz").open("rb") as fh:
        npz = np.load(fh)
        images, labels = npz["images"], npz["labels"]
    # Stratified split: per class, the first 80% of its rows (file order) train, the
    # rest test; a fixed permutation then mixes the classes (the file is sorted by label).
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        cut = len(idx) * _N_TRAIN // (_N_TRAIN + _N_TEST)
        train.append(idx[:cut])
        test.append(idx[cut:])
    rng = np.random.default_rng(_DATA_SEED)
    train, test = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    return images[train], labels[train], images[test], labels[test]


def _remote_dataset(name: str, root: Path) -> Dataset:
    paths = download(name, root=root)
    return _image_dataset(
        name,
        _read_idx(paths["train-images-idx3-ubyte.gz"], 2051),
        _read_idx(paths["train-labels-idx1-ubyte.gz"], 2049),
        _read_idx(paths["t10k-images-idx3-ubyte.gz"], 2051),
        _read_idx(paths["t10k-labels-idx1-ubyte.gz"], 2049),
    )


def _synthetic(name: str) -> Dataset:
    k = _SYNTH_CLASSES[name]
    n = _N_TRAIN + _N_TEST
    rng = np.random.default_rng([_DATA_SEED, DATASETS.index(name)])
    y = rng.permutation(np.arange(n) % k)  # balanced classes in random order
    if name == "spiral":  # 3 arms winding out from the origin, angular noise
        t = rng.uniform(0.05, 1.0, n)
        theta = 4.0 * t + 2 * np.pi * y / k + rng.normal(0, 0.45, n)
        x = np.stack([t * np.sin(theta), t * np.cos(theta)], 1)
    elif name == "circles":  # outer ring (class 0) around an inner ring (class 1)
        theta = rng.uniform(0, 2 * np.pi, n)
        r = np.where(y == 0, 1.0, 0.5)
        x = r[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1) + rng.normal(0, 0.12, (n, 2))
    elif name == "xor":  # quadrant sign product decides the class; noise blurs the axes
        x = rng.uniform(-1.0, 1.0, (n, 2))
        x[:, 1] = np.abs(x[:, 1]) * np.sign(x[:, 0]) * np.where(y == 1, 1.0, -1.0)
        x += rng.normal(0, 0.12, (n, 2))
    else:  # blobs: 4 overlapping gaussians at the corners of a square
        centers = np.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
        x = centers[y] + rng.normal(0, 0.55, (n, 2))
    x_train, x_test = x[:_N_TRAIN], x[_N_TRAIN:]
    mean, std = x_train.mean(0), x_train.std(0)
    as_x = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    return Dataset(name, as_x(x_train), torch.from_numpy(y[:_N_TRAIN].astype(np.int64)),
                   as_x(x_test), torch.from_numpy(y[_N_TRAIN:].astype(np.int64)), k)


@functools.lru_cache(maxsize=None)
def _load_cached(name: str, root: Path) -> Dataset:
    if name == "mnist-mini":
        return _mnist_mini()
    if name in REMOTE:
        try:
            return _remote_dataset(name, root)
        except DataError as exc:
            # The fallback is cached too: an offline server should not retry (and wait on
            # timeouts) for every session; load.cache_clear() or a restart retries.
            if name == "mnist":
                mini = _load_cached("mnist-mini", root)
                note = (f"{_one_line(exc, 300)}: training on the bundled 5,000-image subset mnist-mini instead "
                        "(to pre-fetch MNIST once, where there is a network: `python -m bnviz.data fetch mnist`)")
                return dataclasses.replace(mini, notice=note)
            raise DataError(
                f"{name} needs the network once and the download failed ({_one_line(exc, 200)}); "
                f"pre-fetch it with `python -m bnviz.data fetch {name}` (cache: {root})"
            ) from exc
    return _synthetic(name)


_locks: dict[str, threading.Lock] = {}


def load(name: str) -> Dataset:
    """The dataset ``name`` (one of DATASETS), cached per (name, data_dir()) process-wide."""
    _check_name(name)
    # One lock per name so 30 sessions asking for mnist at once download it once, while
    # a slow download does not block loading the other datasets.
    with _locks.setdefault(name, threading.Lock()):
        return _load_cached(name, data_dir())


load.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]
load.cache_info = _load_cached.cache_info  # type: ignore[attr-defined]


def fetch(names: list[str]) -> None:
    """Download and verify the named remote datasets into data_dir() (others need nothing)."""
    for name in names:
        _check_name(name)
    for name in names:
        if name in REMOTE:
            download(name)
            print(f"{name}: ready in {data_dir() / name}")
        else:
            print(f"{name}: nothing to fetch (bundled or generated)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "fetch":
        print(f"usage: python -m bnviz.data fetch NAME... (NAME one of: {', '.join(DATASETS)})", file=sys.stderr)
        return 2
    try:
        fetch(args[1:])
    except BnvizError as exc:
        print(f"bnviz.data: error: {_one_line(exc, 400)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
