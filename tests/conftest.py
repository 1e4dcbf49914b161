"""Shared test setup: one torch thread per test worker (pytest -n 2 uses both cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Before every test: CLI entry points run in-process (`offrl train`, `datasets build`) set
    torch's thread count for their own run, which would otherwise leak into the next test of
    the worker (bit-for-bit tests compare runs made under one thread count)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(1)
    # Tests that draw from torch's global RNG would otherwise see whatever the tests before them
    # in the same xdist worker left behind, so a test's inputs changed with test order (a
    # gradcheck once landed on a ReLU kink that way).
    torch.manual_seed(0)
    yield


@pytest.fixture
def offrl_home(tmp_path, monkeypatch):
    """An empty $OFFRL_HOME (cache) and $MINARI_DATASETS_PATH for one test."""
    home = tmp_path / "offrl_home"
    monkeypatch.setenv("OFFRL_HOME", str(home))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return home
