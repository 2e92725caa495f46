"""Two CPU processes (gloo) through unidet2.engine.launch: DDP gradients equal a single-process step."""

import json
from pathlib import Path

import torch
from detectron2.utils import comm

from launch.examples.toy import ToyRegressor, sgd_on_batches, toy_global_batches
from unidet2.engine import launch
from unidet2.engine.run import main as run_main

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")
STEPS, LR, BATCH_SIZE = 3, 0.1, 4


def ddp_overrides(output_dir, init_checkpoint) -> list[str]:
    """Plain SGD at a constant LR, no dropout: the update is a pure function of the global batch."""
    return [
        f"train.output_dir={output_dir}",
        f"train.init_checkpoint={init_checkpoint}",
        f"train.max_iter={STEPS}",
        f"dataloader.train.batch_size={BATCH_SIZE}",
        "dataloader.test=[]",
        "model.dropout=0.0",
        f"optimizer.lr={LR}",
        "optimizer.momentum=0.0",
        "lr_multiplier.warmup_factor=1.0",
        "lr_multiplier.scheduler.end_value=1.0",
    ]


def reference_weights(init_state: dict, world_size: int) -> dict:
    """One process taking the same SGD steps on the union of the ranks' batches."""
    batches = toy_global_batches(
        {"toy_a": 64, "toy_b": 32}, batch_size=BATCH_SIZE, ratios=[1.0, 1.0], seed=1234, world_size=world_size,
        num_steps=STEPS,
    )
    return sgd_on_batches(init_state, batches, LR)


def _worker(output_dir: str, init_checkpoint: str) -> None:
    run_main(TOY_CONFIG, ddp_overrides(output_dir, init_checkpoint))
    topology = {"rank": comm.get_rank(), "local_rank": comm.get_local_rank(), "local_size": comm.get_local_size()}
    Path(output_dir, f"topology_{comm.get_rank()}.json").write_text(json.dumps(topology))


def test_two_process_gloo_training_matches_single_process_on_the_global_batch(tmp_path):
    torch.manual_seed(0)
    init_state = ToyRegressor(dropout=0.0).state_dict()
    torch.save({"model": init_state}, tmp_path / "init.pth")
    launch(_worker, 2, args=(str(tmp_path / "out"), str(tmp_path / "init.pth")), backend="gloo")

    trained = torch.load(tmp_path / "out/model_final.pth", weights_only=True)["model"]
    expected = reference_weights(init_state, world_size=2)
    for key, tensor in expected.items():
        torch.testing.assert_close(trained[key], tensor, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tensor, init_state[key])  # the steps did move the weights
    # Rank r's batches differ from rank 0's: a single-rank run on rank 0's data alone ends elsewhere.
    alone = reference_weights(init_state, world_size=1)
    assert not all(torch.allclose(alone[k], expected[k], atol=1e-6) for k in expected)
    for rank in (0, 1):
        topology = json.loads((tmp_path / f"out/topology_{rank}.json").read_text())
        assert topology == {"rank": rank, "local_rank": rank, "local_size": 2}
