"""Trainer: exact resume, non-finite loss guard, per-dataset metrics, AMP switch, gradient clipping."""

import itertools
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from detectron2.utils.env import seed_all_rng

from launch.examples.toy import toy_global_batches
from unidet2.engine.config import load_config
from unidet2.engine.preemption import PreemptionRequest, TrainingPreempted
from unidet2.engine.run import run
from unidet2.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")
MAX_ITER, BATCH_SIZE = 12, 4


def _toy_cfg(output_dir, *overrides):
    return load_config(
        TOY_CONFIG,
        [
            f"train.output_dir={output_dir}",
            f"train.max_iter={MAX_ITER}",
            f"dataloader.train.batch_size={BATCH_SIZE}",
            "train.checkpointer.period=4",
            "train.log_period=1",
            "dataloader.test=[]",
            *overrides,
        ],
    )


class _StopAfter(PreemptionRequest):
    """A stop request that appears at a chosen iteration (the trainer reads the flag once per step)."""

    def __init__(self, iteration: int):
        super().__init__(on_preempted=self._record)  # no signals: the flag is driven by the iteration
        self._reads = 0
        self._iteration = iteration
        self.preempted_at = None

    @property
    def requested(self) -> bool:
        self._reads += 1
        return self._reads > self._iteration

    def _record(self, iteration: int) -> None:
        self.preempted_at = iteration


def _last_metrics(output_dir) -> dict:
    lines = Path(output_dir, "metrics.json").read_text().strip().splitlines()
    return json.loads(lines[-1])


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path):
    seed_all_rng(0)
    reference = run(_toy_cfg(tmp_path / "reference"))

    seed_all_rng(0)
    stop = _StopAfter(5)
    with pytest.raises(TrainingPreempted):
        run(_toy_cfg(tmp_path / "resumed"), preemption=stop)
    assert stop.preempted_at == 5
    assert (tmp_path / "resumed/last_checkpoint").read_text() == "model_0000005.pth"
    assert not (tmp_path / "resumed/model_final.pth").exists()

    seed_all_rng(7)  # the resumed process may seed differently: the RNG states come from the checkpoint
    resumed = run(_toy_cfg(tmp_path / "resumed"), resume=True)

    expected = torch.load(reference["checkpoint"], weights_only=True)
    actual = torch.load(resumed["checkpoint"], weights_only=True)
    assert expected["iteration"] == actual["iteration"] == MAX_ITER - 1
    for key, tensor in expected["model"].items():
        assert torch.equal(tensor, actual["model"][key]), key
    for index, state in expected["trainer"]["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], actual["trainer"]["optimizer"]["state"][index]["momentum_buffer"])
    assert expected["trainer"]["samples_per_dataset"] == actual["trainer"]["samples_per_dataset"]


def test_per_dataset_sample_counts_and_losses_are_logged(tmp_path):
    seed_all_rng(0)
    cfg = _toy_cfg(tmp_path)
    run(cfg)
    metrics = _last_metrics(tmp_path)
    # The dataset of each step follows the sampler's shared schedule: count it independently.
    sizes = dict(cfg.dataloader.train.sizes)
    batches = toy_global_batches(
        sizes, batch_size=BATCH_SIZE, ratios=[1.0, 1.0], seed=cfg.dataloader.train.seed, world_size=1,
        num_steps=MAX_ITER,
    )
    expected = {name: sum(item["dataset_name"] == name for batch in batches for item in batch) for name in sizes}
    assert expected["toy_a"] > 0 and expected["toy_b"] > 0
    assert metrics["samples/toy_a"] == expected["toy_a"] and metrics["samples/toy_b"] == expected["toy_b"]
    assert "loss/toy_a" in metrics or "loss/toy_b" in metrics
    all_lines = [json.loads(line) for line in Path(tmp_path, "metrics.json").read_text().splitlines()]
    assert any("loss/toy_a" in line for line in all_lines) and any("loss/toy_b" in line for line in all_lines)


def test_non_finite_loss_stops_without_checkpointing_the_broken_state(tmp_path):
    seed_all_rng(0)
    cfg = _toy_cfg(tmp_path, "model.nan_at_iter=6")
    with pytest.raises(FloatingPointError) as info:
        run(cfg)
    message = str(info.value)
    assert "iteration 6" in message and "loss_mse=nan" in message and "loss_l1=" in message
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".pth")) == ["model_0000003.pth"]
    state = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


class _DtypeProbe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.seen_dtype = None

    def forward(self, batch):
        output = self.linear(torch.stack([item["x"] for item in batch]))
        self.seen_dtype = output.dtype
        return {"loss": output.float().pow(2).mean()}


def _batches():
    return itertools.repeat([{"x": torch.ones(4), "dataset_name": "probe"}])


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_switch_runs_the_model_under_autocast_without_a_scaler_on_cpu(dtype, torch_dtype):
    model = _DtypeProbe()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), amp_enabled=True, amp_dtype=dtype)
    trainer.set_data_loader(_batches())
    trainer.train(0, 2)
    assert model.seen_dtype == torch_dtype
    assert trainer.grad_scaler is None  # GradScaler is only for fp16 on CUDA

    plain = _DtypeProbe()
    trainer = Trainer(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    trainer.set_data_loader(_batches())
    trainer.train(0, 1)
    assert plain.seen_dtype == torch.float32


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = _DtypeProbe()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), clip_grad_max_norm=0.01)
    trainer.set_data_loader(_batches())
    trainer.train(0, 1)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert step == pytest.approx(0.01, rel=1e-4)  # lr 1: the update is the clipped gradient
    assert trainer.storage.history("grad_norm").latest() > 0.01  # the unclipped norm is logged


def test_preemption_request_records_a_signal_and_restores_the_handler():
    request = PreemptionRequest([signal.SIGUSR2])
    previous = signal.getsignal(signal.SIGUSR2)
    with request.installed():
        assert not request.requested
        os.kill(os.getpid(), signal.SIGUSR2)
        assert request.requested and request.signum == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) is previous
