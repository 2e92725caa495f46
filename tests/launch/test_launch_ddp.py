"""A 2-task SLURM job (gloo DDP) takes the same SGD steps as one process on the same global batches."""

from pathlib import Path

import pytest
import torch

from launch.examples.toy import ToyRegressor, sgd_on_batches, toy_global_batches
from launch.submit import JobSpec, submit

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")
STEPS, LR, BATCH_SIZE, SEED = 3, 0.1, 4, 1234


@pytest.mark.slurm
def test_two_task_gloo_job_matches_single_process_on_the_global_batch(slurm_cluster, tmp_path):
    torch.manual_seed(0)
    init_state = ToyRegressor(dropout=0.0).state_dict()
    torch.save({"model": init_state}, tmp_path / "init.pth")
    spec = JobSpec(
        config=TOY_CONFIG,
        overrides=[
            f"train.init_checkpoint={tmp_path / 'init.pth'}",
            f"train.max_iter={STEPS}",
            f"dataloader.train.batch_size={BATCH_SIZE}",
            f"dataloader.train.seed={SEED}",
            "dataloader.test=[]",
            "model.dropout=0.0",
            f"optimizer.lr={LR}",
            "optimizer.momentum=0.0",
            "lr_multiplier.warmup_factor=1.0",
            "lr_multiplier.scheduler.end_value=1.0",
        ],
        tasks_per_node=2,
        cpus_per_task=1,
        partition="debug",
        time_min=10,
        output_root=str(tmp_path),
        job_name="ddp",
    )
    results = submit(spec).results()

    assert [(r["rank"], r["local_rank"], r["world_size"], r["local_size"]) for r in results] == [
        (0, 0, 2, 2),
        (1, 1, 2, 2),
    ]
    trained = torch.load(tmp_path / "ddp/model_final.pth", weights_only=True)["model"]
    global_batches = toy_global_batches(
        {"toy_a": 64, "toy_b": 32}, batch_size=BATCH_SIZE, ratios=[1.0, 1.0], seed=SEED, world_size=2,
        num_steps=STEPS,
    )
    assert all(len(batch) == 2 * BATCH_SIZE for batch in global_batches)
    expected = sgd_on_batches(init_state, global_batches, LR)
    for key, tensor in expected.items():
        torch.testing.assert_close(trained[key], tensor, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tensor, init_state[key])
    rank0_only = sgd_on_batches(init_state, [batch[:BATCH_SIZE] for batch in global_batches], LR)
    assert not all(torch.allclose(rank0_only[k], expected[k], atol=1e-6) for k in expected)
