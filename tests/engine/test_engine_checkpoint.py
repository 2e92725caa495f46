"""Atomic checkpoints: a failure or a kill during a save leaves the last good checkpoint loadable."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from unidet2.engine.checkpoint import Checkpointer, PeriodicCheckpointer
from unidet2.engine.state import (
    capture_rng_state,
    find_resumable_state,
    isolate_loader_seeds,
    restore_rng_state,
)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


def _temp_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


class _FailsToPickle:
    def __reduce__(self):
        raise RuntimeError("simulated failure in the middle of torch.save")


def test_failed_save_leaves_previous_checkpoint_and_pointer(tmp_path):
    model = _model(0)
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    saved_weight = model.weight.detach().clone()

    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="simulated failure"):
        checkpointer.save("model_final", iteration=2, broken=_FailsToPickle())  # overwrite attempt
    with pytest.raises(RuntimeError, match="simulated failure"):
        checkpointer.save("model_0000002", iteration=2, broken=_FailsToPickle())  # new file attempt

    assert _temp_files(tmp_path) == []
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    loaded = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert loaded["iteration"] == 1
    assert torch.equal(loaded["model"]["weight"], saved_weight)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time, torch
    from unidet2.engine.checkpoint import Checkpointer

    directory, marker, kill_point = sys.argv[1:4]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    checkpointer = Checkpointer(model, directory)
    checkpointer.save("model_0000000", iteration=0)

    def stall():
        open(marker, "w").close()
        time.sleep(120)

    class StallWhilePickling:
        def __reduce__(self):
            stall()
            return (int, (0,))

    extra = {}
    if kill_point == "pickling":
        extra["stall"] = StallWhilePickling()
    else:  # the temp file is complete and about to be fsync'ed and renamed
        real_fsync = os.fsync
        os.fsync = lambda fd: (stall(), real_fsync(fd))
    with torch.no_grad():
        model.weight.add_(1.0)
    checkpointer.save("model_0000001", iteration=1, payload=torch.zeros(200_000), **extra)
    """
)


@pytest.mark.parametrize("kill_point", ["pickling", "before_rename"])
def test_kill_during_save_keeps_last_good_checkpoint(tmp_path, kill_point):
    directory, marker = tmp_path / "ckpt", tmp_path / "marker"
    process = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(directory), str(marker), kill_point])
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert process.poll() is None, "writer exited before reaching the kill point"
            assert time.time() < deadline, "writer never reached the kill point"
            time.sleep(0.05)
        assert _temp_files(directory), "the second save should be in progress in a temp file"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    assert not (directory / "model_0000001.pth").exists()
    model = _model(123)  # different weights, must be overwritten by the load
    checkpointer = Checkpointer(model, str(directory))  # opening the directory removes the orphaned temp file
    assert _temp_files(directory) == []
    assert checkpointer.get_checkpoint_file().endswith("model_0000000.pth")
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 0
    assert torch.equal(model.weight, _model(0).weight)


def test_periodic_checkpointer_rotation_survives_a_restart(tmp_path):
    model = _model(0)

    def hook():
        return PeriodicCheckpointer(Checkpointer(model, str(tmp_path)), period=1, max_iter=8, max_to_keep=2)

    first = hook()
    for iteration in range(4):
        first.step(iteration)
    second = hook()  # a restarted job: fvcore's in-memory list would be empty here
    for iteration in range(4, 8):
        second.step(iteration)
    names = sorted(name for name in os.listdir(tmp_path) if name.endswith(".pth"))
    # iteration 7 is the last one: only model_final is written for it
    assert names == ["model_0000005.pth", "model_0000006.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    torch.save({"rng": capture_rng_state()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.normal(), np.random.rand(3), torch.rand(3))

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    actual = (random.random(), np.random.normal(), np.random.rand(3), torch.rand(3))
    assert actual[0] == expected[0] and actual[1] == expected[1]
    assert np.array_equal(actual[2], expected[2]) and torch.equal(actual[3], expected[3])


class _Stateful:
    def __init__(self, child=None):
        self.sampler = child

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_find_resumable_state_prefers_the_outermost_stateful_part():
    inner = _Stateful()
    wrapper = _Stateful(child=inner)
    loader = torch.utils.data.DataLoader(range(4), batch_sampler=wrapper)
    assert find_resumable_state(loader) is wrapper
    plain = torch.utils.data.DataLoader(range(4), batch_size=2)
    assert find_resumable_state(plain) is None


def test_isolated_loader_seeds_keep_iterator_creation_off_the_global_rng():
    loader = torch.utils.data.DataLoader(range(8), batch_size=2)
    wrapper = _Stateful(child=loader)
    wrapper.data_loader = loader
    assert isolate_loader_seeds(wrapper) == 1 and loader.generator is not None
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)
    assert isolate_loader_seeds(wrapper) == 0  # an existing generator is kept
