"""Suite-wide setup for running the tests in parallel with pytest-xdist (`make test`: ``-n 2 --dist loadgroup``).

* Each worker computes with one thread (torch and every process it starts): two workers on two cores would
  otherwise run four compute threads, which slows both down several times over (the ScaleDet e2e bars were
  measured with one thread; every bar held in the one-thread suite run this was set up with).
* The tests of a file stay on one worker (their module fixtures, e.g. a trained model, are built once), and the
  launcher tests share one worker: their SLURM clusters are started once per session and cannot run twice.
  (xdist marks its groups in the test ids, "<id>@<group>"; pytest 9.2 silently drops that, so requirements.txt
  pins pytest 9.1; tests/foundation/test_test_workers.py fails if the groups stop reaching the scheduler.)
* Files with slow tests are handed out first, those with the longest declared timeout before the others, so that
  the longest one does not start last and the two workers finish at about the same time.
"""

from __future__ import annotations

import os

import pytest
import torch

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"  # also for the processes the tests start
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# tests that must share one worker, by folder
SHARED_WORKER_FOLDERS = {"launch": "slurm-clusters"}


def _group(item: pytest.Item) -> str:
    """The worker group of a test: its file (``tests/x/test_y.py``), or its folder's shared group."""
    return SHARED_WORKER_FOLDERS.get(item.path.parent.name, item.nodeid.split("::", 1)[0].split("@", 1)[0])


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0]) if marker and marker.args else 0.0


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank: dict[str, tuple[bool, float]] = {}  # group -> (has no slow test, -longest timeout)
    for item in items:
        group = _group(item)
        no_slow, timeout = rank.get(group, (True, 0.0))
        rank[group] = (no_slow and item.get_closest_marker("slow") is None, min(timeout, -_timeout(item)))
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: rank[_group(item)])  # stable: a file's tests keep their order and stay together


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("single_torch_thread")``).

    Tiny models on 2 shared cores: with 2 intra-op threads, OpenMP's spinning workers make every op up to 10x
    slower whenever another process competes for the cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
