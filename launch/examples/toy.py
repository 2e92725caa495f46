"""A toy regression task that runs through the real engine in seconds on a CPU.

Used by the engine and launcher tests and by ``launch/examples/configs/toy_regression.py`` (a smoke test of a
cluster set-up): two synthetic "datasets" of (x, y) pairs, mixed by :class:`unidet2.data.sampler.MultiDatasetSampler`
behind :class:`unidet2.data.build.MultiDatasetTrainLoader` (so resume positions are exact), an MLP with dropout
(so the RNG state matters), and an MSE evaluator registered as ``evaluator_type="toy_regression"``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from unidet2.data.build import MultiDatasetTrainLoader
from unidet2.data.sampler import MultiDatasetSampler
from unidet2.evaluation import register_evaluator_type

__all__ = [
    "TOY_EVAL_DATASETS",
    "ToyEvaluator",
    "ToyMapper",
    "ToyRegressor",
    "build_toy_train_loader",
    "make_toy_records",
    "sgd_on_batches",
    "toy_global_batches",
]

IN_DIM = 8


def make_toy_records(
    dataset_name: str, num_samples: int, in_dim: int = IN_DIM, seed: int = 0, *, domain: str | None = None
) -> list[dict]:
    """Deterministic samples ``{"x": (in_dim,), "y": (), "dataset_name", "image_id"}``.

    One regression task shared by all datasets, y = x . w + 0.1 noise with a fixed w; each dataset (domain)
    draws its inputs around its own mean, like images of different sources.

    Args:
        dataset_name: stored in every record; also the domain unless ``domain`` is given.
        domain: selects the input mean (a validation set shares it with its training set).
        seed: selects the samples.
    """
    domain = domain or dataset_name
    weight = torch.randn(in_dim, generator=torch.Generator().manual_seed(0))
    mean = 0.5 * torch.randn(in_dim, generator=torch.Generator().manual_seed(zlib.crc32(domain.encode())))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(dataset_name.encode()))
    inputs = mean + torch.randn(num_samples, in_dim, generator=generator)
    targets = inputs @ weight + 0.1 * torch.randn(num_samples, generator=generator)
    return [
        {"x": inputs[i], "y": targets[i], "dataset_name": dataset_name, "image_id": i}
        for i in range(num_samples)
    ]


class _RecordDataset(Dataset):
    def __init__(self, records: Sequence[dict]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return dict(self.records[index])


class _StepBatches(Sampler):
    """One list of indices per training step, from MultiDatasetSampler.iter_batches()."""

    def __init__(self, sampler: MultiDatasetSampler):
        self.sampler = sampler

    def __iter__(self):
        return self.sampler.iter_batches()


def _as_list(batch: list[dict]) -> list[dict]:
    return batch


def build_toy_train_loader(
    sizes: Mapping[str, int],
    *,
    batch_size: int = 4,
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    in_dim: int = IN_DIM,
    num_workers: int = 0,
) -> MultiDatasetTrainLoader:
    """Infinite per-rank loader of ``batch_size`` samples per step, each batch from one toy dataset.

    Args:
        sizes: dataset name -> number of samples.
        ratios: sampling ratio per dataset (default equal).
        seed: data seed (samples and the sampler's shared stream); must be fixed for an exact resume.
    """
    names = list(sizes)
    records, sources = [], []
    for index, name in enumerate(names):
        records += make_toy_records(name, int(sizes[name]), in_dim, seed)
        sources += [index] * int(sizes[name])
    sampler = MultiDatasetSampler(
        sources,
        ratios=ratios,
        batch_size=batch_size,
        seed=seed,
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
    )
    loader = DataLoader(
        _RecordDataset(records), batch_sampler=_StepBatches(sampler), collate_fn=_as_list, num_workers=num_workers
    )
    return MultiDatasetTrainLoader(loader, sampler, names)


class ToyRegressor(nn.Module):
    """MLP regressor; training returns ``{"loss_mse", "loss_l1"}``, inference ``[{"prediction": ()}, ...]``.

    Args:
        step_delay_s: sleep per training forward (lets tests interrupt a job in the middle of training).
        nan_at_iter: make ``loss_mse`` NaN at this iteration (tests of the non-finite loss guard); < 0: never.
    """

    def __init__(
        self,
        in_dim: int = IN_DIM,
        hidden: int = 32,
        dropout: float = 0.1,
        step_delay_s: float = 0.0,
        nan_at_iter: int = -1,
    ):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.step_delay_s = step_delay_s
        self.nan_at_iter = nan_at_iter

    def forward(self, batched_inputs: list[dict]):
        device = self.net[0].weight.device
        x = torch.stack([item["x"] for item in batched_inputs]).to(device)
        prediction = self.net(x).squeeze(-1)
        if not self.training:
            return [{"prediction": value} for value in prediction]
        target = torch.stack([item["y"] for item in batched_inputs]).to(device)
        if self.step_delay_s > 0:
            time.sleep(self.step_delay_s)
        losses = {"loss_mse": F.mse_loss(prediction, target), "loss_l1": 0.1 * F.l1_loss(prediction, target)}
        if self.nan_at_iter >= 0 and get_event_storage().iter == self.nan_at_iter:
            losses["loss_mse"] = losses["loss_mse"] * float("nan")
        return losses


class ToyMapper:
    """Test-time mapper: the records already hold tensors."""

    def __call__(self, record: dict) -> dict:
        return dict(record)


class ToyEvaluator(DatasetEvaluator):
    """Mean squared error of ``prediction`` against ``y`` over a dataset (gathered over ranks)."""

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self._squared_errors: list[float] = []

    def reset(self) -> None:
        self._squared_errors = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for item, output in zip(inputs, outputs):
            self._squared_errors.append(float((output["prediction"].cpu() - item["y"]) ** 2))

    def evaluate(self):
        gathered = comm.gather(self._squared_errors, dst=0)
        if not comm.is_main_process():
            return None
        errors = [value for part in gathered for value in part]
        return {"regression": {"mse": sum(errors) / len(errors), "num_samples": float(len(errors))}}


# Validation sets of the two training tasks: name -> size (registered lazily: generated when first used).
TOY_EVAL_DATASETS = {"toy_a_val": 24, "toy_b_val": 16}


def _register_eval_datasets() -> None:
    for name, size in TOY_EVAL_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        domain = name.removesuffix("_val")
        DatasetCatalog.register(
            name, lambda name=name, size=size, domain=domain: make_toy_records(name, size, domain=domain)
        )
        MetadataCatalog.get(name).set(evaluator_type="toy_regression", task="regression")


register_evaluator_type("toy_regression", lambda dataset_name, **options: ToyEvaluator(dataset_name))
_register_eval_datasets()


def toy_global_batches(
    sizes: Mapping[str, int],
    *,
    batch_size: int,
    ratios: Sequence[float] | None,
    seed: int,
    world_size: int,
    num_steps: int,
    in_dim: int = IN_DIM,
) -> list[list[dict]]:
    """The union over ranks of the batches :func:`build_toy_train_loader` gives in each of ``num_steps`` steps.

    A single process training on these global batches (mean loss) takes the same SGD steps as
    ``world_size`` data-parallel ranks: the reference for distributed-training tests.
    """
    records, sources = [], []
    for index, name in enumerate(sizes):
        records += make_toy_records(name, int(sizes[name]), in_dim, seed)
        sources += [index] * int(sizes[name])
    streams = [
        MultiDatasetSampler(
            sources, ratios=ratios, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size
        ).iter_batches()
        for rank in range(world_size)
    ]
    return [[dict(records[i]) for stream in streams for i in next(stream)] for _ in range(num_steps)]


def sgd_on_batches(init_state: Mapping[str, torch.Tensor], batches: Sequence[list[dict]], lr: float) -> dict:
    """Weights after plain SGD (no momentum, constant ``lr``) on ``batches`` from ``init_state``, no dropout."""
    model = ToyRegressor(dropout=0.0)
    model.load_state_dict(init_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for batch in batches:
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return model.state_dict()
