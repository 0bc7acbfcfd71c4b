"""Tests for bnviz.data: downloads against a local HTTP server, fallbacks, bundled and synthetic sets."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

from bnviz import data
from bnviz.dataset_names import IMAGE_DATASETS
from bnviz.errors import ConfigError, DataError

N_TRAIN, N_TEST = 20, 10
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx_gz(array: np.ndarray) -> bytes:
    """A gzipped IDX file of unsigned bytes, as in the MNIST distribution."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@pytest.fixture
def idx_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        FILES[0]: idx_gz(rng.integers(0, 256, (N_TRAIN, 28, 28))),
        FILES[1]: idx_gz(np.arange(N_TRAIN) % 10),
        FILES[2]: idx_gz(rng.integers(0, 256, (N_TEST, 28, 28))),
        FILES[3]: idx_gz(np.arange(N_TEST) % 10),
    }


class Server:
    """Serves {url path: bytes} on 127.0.0.1 and records every requested path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def publish(self, folder: str, files: dict[str, bytes]) -> str:
        for fname, blob in files.items():
            self.files[f"/{folder}/{fname}"] = blob
        return f"{self.url}/{folder}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own BNVIZ_DATA_DIR, fresh lru cache, and no proxy for 127.0.0.1."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNVIZ_DATA_DIR", str(cache))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    data.load.cache_clear()
    yield cache
    data.load.cache_clear()


def refused_url() -> str:
    """A base URL on a port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def use_remote(monkeypatch, name: str, mirrors: tuple[str, ...], hashes: dict[str, str]) -> None:
    monkeypatch.setitem(data.REMOTE, name, data.Remote(mirrors, hashes))


def files_under(folder: Path) -> dict[str, str]:
    return {p.name: sha(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


# --- download path ------------------------------------------------------------------


def test_download_parses_idx_caches_under_data_dir_and_reload_is_offline(
        server, idx_files, isolated_cache, monkeypatch):
    hashes = {f: sha(b) for f, b in idx_files.items()}
    use_remote(monkeypatch, "mnist", (server.publish("mnist", idx_files),), hashes)

    ds = data.load("mnist")

    assert ds.name == "mnist" and ds.notice is None and ds.n_classes == 10
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28) and ds.x_test.shape == (N_TEST, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28)
    assert ds.y_train.tolist() == [i % 10 for i in range(N_TRAIN)]
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-3
    assert files_under(isolated_cache / "mnist") == hashes
    assert all((isolated_cache / "mnist" / f).stat().st_mode & 0o044 == 0o044 for f in FILES)  # readable by others
    assert len(server.requests) == 4

    assert data.load("mnist") is ds  # process-wide lru cache
    data.load.cache_clear()
    again = data.load("mnist")  # parsed again from the verified files on disk
    assert len(server.requests) == 4
    assert torch.equal(again.x_train, ds.x_train)


def test_downloader_takes_mirrors_and_hashes_as_arguments(server, idx_files, tmp_path):
    hashes = {f: sha(b) for f, b in idx_files.items()}
    paths = data.download("anything", mirrors=(server.publish("x", idx_files),), sha256=hashes, root=tmp_path)
    assert paths == {f: tmp_path / "anything" / f for f in FILES}
    assert files_under(tmp_path / "anything") == hashes


def test_unreachable_and_404_mirrors_are_skipped_for_the_next_one(server, idx_files, monkeypatch):
    good = server.publish("mnist", idx_files)
    missing = f"{server.url}/nothing-here/"
    use_remote(monkeypatch, "mnist", (refused_url(), missing, good), {f: sha(b) for f, b in idx_files.items()})

    ds = data.load("mnist")

    assert ds.name == "mnist" and ds.notice is None
    assert sum(r.startswith("/nothing-here/") for r in server.requests) == 4
    assert sum(r.startswith("/mnist/") for r in server.requests) == 4


def test_hash_mismatch_leaves_no_file_and_mnist_falls_back_to_mnist_mini(
        server, idx_files, isolated_cache, monkeypatch):
    hashes = {f: sha(b) for f, b in idx_files.items()}
    hashes[FILES[2]] = "0" * 64  # the server's t10k images will not match
    use_remote(monkeypatch, "mnist", (server.publish("mnist", idx_files),), hashes)

    ds = data.load("mnist")

    assert ds.name == "mnist-mini" and ds.x_train.shape == (4000, 1, 28, 28)
    assert ds.notice and "\n" not in ds.notice
    assert ds.notice.startswith("mnist: could not download") and "mnist-mini" in ds.notice
    left = files_under(isolated_cache)
    assert FILES[2] not in left
    assert all(hashes.get(name) == digest for name, digest in left.items())  # only verified files, no temp files


def test_hash_mismatch_for_fashion_mnist_raises_one_line_data_error_with_prefetch_hint(
        server, idx_files, isolated_cache, monkeypatch):
    hashes = {f: sha(b) for f, b in idx_files.items()}
    hashes[FILES[0]] = "f" * 64
    use_remote(monkeypatch, "fashion-mnist", (server.publish("fmnist", idx_files),), hashes)

    with pytest.raises(DataError) as err:
        data.load("fashion-mnist")

    msg = str(err.value)
    assert "\n" not in msg and "network" in msg
    assert "python -m bnviz.data fetch fashion-mnist" in msg
    assert files_under(isolated_cache) == {}  # stopped at the first file, nothing kept


def test_cached_file_with_wrong_checksum_is_replaced_by_fresh_download(
        server, idx_files, isolated_cache, monkeypatch):
    hashes = {f: sha(b) for f, b in idx_files.items()}
    use_remote(monkeypatch, "mnist", (server.publish("mnist", idx_files),), hashes)
    folder = isolated_cache / "mnist"
    folder.mkdir(parents=True)
    for fname, blob in idx_files.items():
        (folder / fname).write_bytes(blob)
    (folder / FILES[0]).write_bytes(b"truncated garbage")

    ds = data.load("mnist")

    assert ds.notice is None and ds.x_train.shape == (N_TRAIN, 1, 28, 28)
    assert server.requests == [f"/mnist/{FILES[0]}"]  # only the bad file was fetched again
    assert files_under(folder) == hashes


def test_failed_download_removes_a_corrupt_cached_file(isolated_cache, idx_files, monkeypatch):
    hashes = {f: sha(b) for f, b in idx_files.items()}
    use_remote(monkeypatch, "mnist", (refused_url(),), hashes)
    folder = isolated_cache / "mnist"
    folder.mkdir(parents=True)
    (folder / FILES[0]).write_bytes(b"corrupt")

    ds = data.load("mnist")

    assert ds.name == "mnist-mini" and ds.notice
    assert files_under(isolated_cache) == {}


def test_mnists_fallback_notice_names_each_mirror_and_why_in_a_few_words_and_how_to_prefetch(
        server, idx_files, isolated_cache, monkeypatch):
    """requests words a refused connection as a 250-character repr of its pool: the page's notice
    was cut before the second mirror, and never said how to get MNIST."""
    refused, missing = refused_url(), server.publish("empty", {})  # nothing listens; HTTP 404
    use_remote(monkeypatch, "mnist", (refused, missing), {f: sha(b) for f, b in idx_files.items()})
    ds = data.load("mnist")
    assert ds.name == "mnist-mini"
    assert ds.notice == (f"mnist: could not download {FILES[0]} ({urlsplit(refused).netloc}: no connection; "
                         f"{urlsplit(missing).netloc}: HTTP 404): training on the bundled 5,000-image subset "
                         "mnist-mini instead (to pre-fetch MNIST once, where there is a network: "
                         "`python -m bnviz.data fetch mnist`)")


def test_on_disk_only_when_every_file_is_present_and_verified(isolated_cache, idx_files, monkeypatch):
    """What the workers' forkserver preloads (bnviz/worker_boot.py): never a set load() would download."""
    use_remote(monkeypatch, "mnist", (refused_url(),), {f: sha(b) for f, b in idx_files.items()})
    folder = isolated_cache / "mnist"
    assert not data.on_disk("mnist")  # no folder
    folder.mkdir(parents=True)
    for fname in FILES[:3]:
        (folder / fname).write_bytes(idx_files[fname])
    assert not data.on_disk("mnist")  # one file missing
    (folder / FILES[3]).write_bytes(idx_files[FILES[2]])
    assert not data.on_disk("mnist")  # one file with the wrong content
    (folder / FILES[3]).write_bytes(idx_files[FILES[3]])
    assert data.on_disk("mnist")
    assert not data.on_disk("fashion-mnist")
    assert data.load("mnist").notice is None  # and load() then needs no network (the mirror refuses)


@pytest.mark.parametrize("blob, expected", [
    (gzip.compress(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes(5)), "magic"),  # labels, not images
    (gzip.compress(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2, 28, 28)) + bytes(10)), "holds"),
    (b"not gzip at all", "gzip"),
], ids=["wrong-magic", "short-payload", "not-gzip"])
def test_malformed_idx_file_raises_data_error(tmp_path, blob, expected):
    path = tmp_path / "x.gz"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=expected):
        data._read_idx(path, 2051)


def test_malformed_but_hash_verified_mnist_falls_back_with_notice(server, idx_files, monkeypatch):
    idx_files[FILES[1]] = idx_gz(np.arange(N_TRAIN + 3) % 10)  # label count != image count
    use_remote(monkeypatch, "mnist", (server.publish("mnist", idx_files),), {f: sha(b) for f, b in idx_files.items()})

    ds = data.load("mnist")

    assert ds.name == "mnist-mini" and "do not match" in ds.notice


def test_fetch_cli_downloads_into_data_dir_and_exits_2_on_failure(
        server, idx_files, isolated_cache, monkeypatch, capsys):
    hashes = {f: sha(b) for f, b in idx_files.items()}
    use_remote(monkeypatch, "mnist", (server.publish("mnist", idx_files),), hashes)
    assert data.main(["fetch", "mnist", "spiral"]) == 0
    assert files_under(isolated_cache / "mnist") == hashes

    use_remote(monkeypatch, "fashion-mnist", (refused_url(),), hashes)
    capsys.readouterr()
    assert data.main(["fetch", "fashion-mnist"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fashion-mnist" in err


def test_fetch_module_entry_point_rejects_unknown_name_with_exit_2():
    proc = subprocess.run([sys.executable, "-m", "bnviz.data", "fetch", "cifar"],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "dataset" in proc.stderr and "fashion-mnist" in proc.stderr


# --- bundled subset -----------------------------------------------------------------


def test_mnist_mini_loads_without_network_as_normalized_4000_1000_split(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist-mini must not touch the network")

    monkeypatch.setattr(data.pooch, "retrieve", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)

    ds = data.load("mnist-mini")

    assert ds.name == "mnist-mini" and ds.notice is None and ds.n_classes == 10
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert abs(ds.x_train.mean().item()) < 1e-3 and abs(ds.x_train.std().item() - 1) < 1e-3
    assert abs(ds.x_test.mean().item()) < 0.1  # same distribution, train statistics
    assert torch.bincount(ds.y_train).tolist() == [400] * 10
    assert torch.bincount(ds.y_test).tolist() == [100] * 10
    flat = ds.x_train.flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 4000  # real, distinct images
    assert (ds.y_train[:50] != ds.y_train[0]).any()  # classes are mixed, not sorted


def test_image_sets_normalize_to_the_same_bits_at_any_torch_thread_count():
    """A worker's forkserver loads on one thread, a server or the CLI may use more: all must
    train on the same bits (torch's own float32 mean differs in the last bit at 2 threads)."""
    threads = torch.get_num_threads()
    loads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            data.load.cache_clear()
            loads.append(data.load("mnist-mini"))
    finally:
        torch.set_num_threads(threads)
    for ds in loads[1:]:
        assert torch.equal(ds.x_train, loads[0].x_train) and torch.equal(ds.x_test, loads[0].x_test)


def test_pixel_stats_are_exact_and_keep_mnist_minis_one_thread_values():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    mean, std = data.pixel_stats(images)
    scaled = images / 255.0  # float64
    assert mean.dtype == std.dtype == torch.float32
    assert mean.item() == np.float32(scaled.mean()) and std.item() == np.float32(scaled.std(ddof=1))
    # mnist-mini's statistics as torch computes them at one thread (how docs/EXPERIMENTS.md's runs
    # were made): the exact ones round to the same floats, so those runs' numbers stand.
    train_images = data.mnist_mini_split()[0]
    pixels = torch.from_numpy(train_images.copy()).float().div_(255)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_thread = pixels.mean(), pixels.std()
    finally:
        torch.set_num_threads(threads)
    assert data.pixel_stats(train_images) == one_thread


def test_mnist_mini_train_and_test_images_do_not_overlap():
    ds = data.load("mnist-mini")
    both = torch.cat([ds.x_train, ds.x_test]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == 5000


def test_mnist_mini_split_is_deterministic_across_loads():
    first = data.load("mnist-mini")
    data.load.cache_clear()
    np.random.seed(7)
    torch.manual_seed(7)
    again = data.load("mnist-mini")
    assert again is not first
    assert torch.equal(again.x_train, first.x_train) and torch.equal(again.y_test, first.y_test)


# --- synthetic sets -----------------------------------------------------------------


@pytest.mark.parametrize("name, k", [("spiral", 3), ("circles", 2), ("xor", 2), ("blobs", 4)])
def test_synthetic_sets_have_shapes_balanced_classes_and_are_deterministic(name, k):
    ds = data.load(name)

    assert ds.name == name and ds.n_classes == k and ds.input_shape == (2,)
    assert ds.x_train.shape == (4000, 2) and ds.x_test.shape == (1000, 2)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    for y, n in ((ds.y_train, 4000), (ds.y_test, 1000)):
        counts = torch.bincount(y, minlength=k)
        assert len(counts) == k and counts.min() > 0.8 * n / k
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(ds.x_train.std(0), torch.ones(2), atol=1e-3)

    torch.manual_seed(123)  # a run seed must not change the data
    data.load.cache_clear()
    again = data.load(name)
    assert again is not ds
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)


def test_synthetic_sets_are_noisy_not_trivially_separable():
    # 1-nearest-neighbour on the test set must make some mistakes on every set.
    for name in ("spiral", "circles", "xor", "blobs"):
        ds = data.load(name)
        nearest = torch.cdist(ds.x_test, ds.x_train).argmin(1)
        acc = (ds.y_train[nearest] == ds.y_test).float().mean().item()
        assert 0.6 < acc < 0.995, (name, acc)


# --- names, cache keys ---------------------------------------------------------------


def test_unknown_dataset_name_raises_config_error_naming_field_value_and_choices():
    with pytest.raises(ConfigError) as err:
        data.load("cifar10")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("dataset")
    assert "cifar10" in msg and all(name in msg for name in data.DATASETS)


def test_dataset_names_and_image_set_are_consistent():
    assert data.DATASETS == ("mnist-mini", "mnist", "fashion-mnist", "spiral", "circles", "xor", "blobs")
    assert IMAGE_DATASETS == {"mnist-mini", "mnist", "fashion-mnist"}
    assert set(data.REMOTE) <= IMAGE_DATASETS
    for remote in data.REMOTE.values():
        assert set(remote.sha256) == set(FILES)
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in remote.sha256.values())
        assert all(m.startswith("http") and m.endswith("/") for m in remote.mirrors)


def test_data_dir_follows_env_and_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BNVIZ_DATA_DIR", str(tmp_path / "x"))
    assert data.data_dir() == tmp_path / "x"
    monkeypatch.delenv("BNVIZ_DATA_DIR")
    assert data.data_dir() == Path(data.platformdirs.user_cache_dir("bnviz"))


def test_cache_is_keyed_on_data_dir(monkeypatch, tmp_path):
    first = data.load("xor")
    assert data.load("xor") is first
    monkeypatch.setenv("BNVIZ_DATA_DIR", str(tmp_path / "other"))
    assert data.load("xor") is not first
