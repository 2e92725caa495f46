"""`make test` runs the suite on pytest-xdist workers grouped by file (tests/conftest.py); these tests fail if the
groups stop reaching xdist's scheduler, which would split a file's module fixtures (a trained model) over both
workers, or start the session's SLURM clusters twice."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    "PYTEST_XDIST_WORKER" not in os.environ, reason="the suite runs in one process (TEST_WORKERS=0): no workers"
)


def test_a_test_id_carries_its_file_group(request):
    assert request.node.nodeid.endswith("@tests/foundation/test_test_workers.py"), request.node.nodeid


def test_launcher_tests_share_one_group(request):
    launch_items = [item for item in request.session.items if item.path.parent.name == "launch"]
    if not launch_items:
        pytest.skip("no launcher test collected in this session (PYTEST_ARGS narrowed it)")
    groups = {item.nodeid.rsplit("@", 1)[-1] for item in launch_items}
    assert groups == {"slurm-clusters"}, groups


def test_worker_processes_compute_with_one_thread():
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
