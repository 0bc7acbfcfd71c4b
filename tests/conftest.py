"""Shared test setup: one CPU thread per process and a private data directory for the session."""

from __future__ import annotations

import os
import time
from typing import Callable

import pytest
import torch

# Two cores run the whole suite; more torch threads than cores only oversubscribe.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_data_dir(tmp_path_factory):
    """BNVIZ_DATA_DIR points at a fresh temporary directory for the whole session.

    Subprocesses (the CLI tests) inherit it. Tests that need their own directory
    (tests/test_data.py) override it per test with monkeypatch, which restores this one.
    """
    path = tmp_path_factory.mktemp("bnviz-data")
    old = os.environ.get("BNVIZ_DATA_DIR")
    os.environ["BNVIZ_DATA_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BNVIZ_DATA_DIR", None)
    else:
        os.environ["BNVIZ_DATA_DIR"] = old


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed; return its last value.

    The timeout only bounds a hung test: no test asserts anything about how fast it holds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def wait():
    return wait_for
