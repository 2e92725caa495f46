"""The main job of the repository (`make demo`, tools/scaledet_demo.py): ScaleDet trained on several synthetic
datasets at once, evaluated on each of them with its own vocabulary and, zero-shot, on unseen vocabularies.

:func:`run_main_job` does it all:

1. generates the synthetic ``demo`` preset (skipped when it is already there) and registers it;
2. builds the unified label space of the upstream training sets and its text embeddings (MiniLM offline);
3. trains ScaleDet (projects/ScaleDet/configs/scaledet_demo_synthetic.py) with unidet2's trainer;
4. evaluates every upstream val set with its own vocabulary and, zero-shot, the downstream sets;
5. optionally fine-tunes the trained model on each downstream set (full train split and/or k shots per class) in
   that set's own label space and evaluates it again: the ODinW protocol (``unidet2.evaluation.odinw``) with
   ``unidet2.engine.finetune.DatasetFinetuner``, on a short schedule;
6. writes the AP table (markdown + JSON), a few images with predicted boxes and names, the training curves.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.data.synthetic import generate_synthetic, load_manifest, register_synthetic
from unidet2.data.text_embeddings import get_text_embeddings, save_text_embeddings

DEMO_CONFIG = "projects/ScaleDet/configs/scaledet_demo_synthetic.py"
QUICKSTART_CONFIG = "projects/ScaleDet/configs/scaledet_quickstart_synthetic.py"
logger = logging.getLogger(__name__)


def prepare_data(data_root: Path, seed: int, preset: str = "demo") -> dict:
    manifest_path = data_root / "manifest.json"
    if manifest_path.is_file():
        logger.info("synthetic demo data already in %s", data_root)
    else:
        start = time.perf_counter()
        generate_synthetic(data_root, seed=seed, preset=preset)
        logger.info("generated the synthetic %s preset in %.1f s", preset, time.perf_counter() - start)
    register_synthetic(data_root)
    manifest, _ = load_manifest(manifest_path)
    return manifest


def build_label_space(train_datasets: list[str], metadata_dir: Path, encoder: str) -> tuple[Path, Path]:
    metadata_dir.mkdir(parents=True, exist_ok=True)
    label_space = UnifiedLabelSpace.from_dataset_names(train_datasets)
    label_space_path = metadata_dir / "label_space.json"
    label_space.save_json(label_space_path)
    embeddings_path = metadata_dir / f"embeddings_{encoder}.npy"
    embeddings, metadata = get_text_embeddings(label_space.names, encoder=encoder, synonyms=label_space.synonyms,
                                               return_metadata=True)
    save_text_embeddings(embeddings_path, embeddings, metadata)
    logger.info("unified label space: %d entries from %s", label_space.num_classes, ", ".join(train_datasets))
    return label_space_path, embeddings_path


def ap_table(evaluation: dict, upstream: list[str], downstream: list[str]) -> tuple[str, list[dict]]:
    rows = []
    for role, names in (("upstream", upstream), ("downstream (zero-shot)", downstream)):
        for name in names:
            bbox = evaluation.get(name, {}).get("bbox", {})
            rows.append({"dataset": name, "role": role, "AP": bbox.get("AP"), "AP50": bbox.get("AP50"),
                         "AP75": bbox.get("AP75")})
    lines = ["| dataset | role | AP | AP50 | AP75 |", "|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[k]:.1f}" if isinstance(row[k], (int, float)) else "n/a" for k in ("AP", "AP50", "AP75")]
        lines.append(f"| {row['dataset']} | {row['role']} | " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


@dataclass(frozen=True)
class DownstreamSet:
    """A synthetic downstream set as the ODinW planner sees it: ``odinw_<short_name>_{train,<eval_split>}``."""

    short_name: str
    eval_split: str = "val"


def finetune_downstream(
    cfg,
    checkpoint: str,
    eval_datasets: Sequence[str],
    settings: Sequence[int | None],
    *,
    seeds: Sequence[int],
    epochs: float,
    output: Path,
) -> dict:
    """Fine-tune ``checkpoint`` on the train split of every downstream set (``odinw_<x>_val`` -> ``odinw_<x>_train``)
    for each setting (None = full split, k = k shots per class; ``seeds`` for k-shot), ``epochs`` passes over the
    train set (no repeat), and evaluate on the val split. Returns {setting: ResultTable}."""
    from unidet2.engine.finetune import DatasetFinetuner, FinetuneSchedule
    from unidet2.evaluation.odinw import plan_odinw_finetuning, run_odinw_finetuning

    downstream = []
    for name in eval_datasets:
        prefix, _, split = name.rpartition("_")
        if not prefix.startswith("odinw_"):
            raise ValueError(f"downstream set {name!r} is not named odinw_<name>_<split>")
        downstream.append(DownstreamSet(prefix.removeprefix("odinw_"), split))
    runs = plan_odinw_finetuning(shots=settings, seeds=seeds, datasets=downstream)
    finetuner = DatasetFinetuner(cfg, checkpoint, FinetuneSchedule(epochs=epochs, dataset_repeat=1))
    return run_odinw_finetuning(runs, finetuner, cfg, output_dir=str(output), progress=False, benchmark="Downstream")


def plot_training_curves(metrics_file: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    records = [r for r in records if "total_loss" in r]
    iterations = [r["iteration"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(iterations, [r["total_loss"] for r in records], label="total")
    for key in sorted({k for r in records for k in r if k.startswith("loss_") and k.endswith("stage2")}
                      | {"loss_rpn_cls"}):
        axes[0].plot(iterations, [r.get(key, np.nan) for r in records], label=key, alpha=0.7)
    axes[0].set_xlabel("iteration")
    axes[0].set_yscale("log")
    axes[0].set_title("training losses")
    axes[0].legend(fontsize=7)
    if any("lr" in r for r in records):
        axes[1].plot(iterations, [r.get("lr", np.nan) for r in records])
        axes[1].set_title("learning rate")
        axes[1].set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def visualize(model, cfg, dataset_names: list[str], out_dir: Path, images_per_dataset: int, vocabulary_kwargs: dict):
    """Draw the predictions (score > 0.3) on the first images of each dataset, preprocessed as its test loader."""
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    from unidet2.evaluation.contract import test_time_preprocessing
    from unidet2.modeling.vocabulary import dataset_vocabulary

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    written = []
    for name in dataset_names:
        metadata = MetadataCatalog.get(name)
        augmentations, image_format = test_time_preprocessing(cfg, name)
        with dataset_vocabulary(model, name, **vocabulary_kwargs), torch.no_grad():
            for record in DatasetCatalog.get(name)[:images_per_dataset]:
                image = read_image(record["file_name"], format=image_format)
                aug_input = T.AugInput(image)
                T.AugmentationList(augmentations)(aug_input)
                tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
                (output,) = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
                instances = output["instances"].to("cpu")
                instances = instances[instances.scores > 0.3]
                rgb = read_image(record["file_name"], format="RGB")
                visual = Visualizer(rgb, metadata.set(thing_classes=list(metadata.vocabulary)))
                path = out_dir / f"{name}_{Path(record['file_name']).stem}.png"
                Image.fromarray(visual.draw_instance_predictions(instances).get_image()).save(path)
                written.append(path)
    return written


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_main_job(
    output: Path,
    data_root: Path,
    *,
    seed: int = 0,
    preset: str = "demo",
    encoder: str = "minilm",
    images_per_dataset: int = 2,
    config: str = DEMO_CONFIG,
    overrides: list[str] | tuple[str, ...] = (),
    finetune: Sequence[int | None] = (),
    finetune_seeds: Sequence[int] = (3,),
    finetune_epochs: float = 3,
) -> dict:
    """Data, label space, training, evaluation and the reports (see the module docstring).

    ``finetune``: downstream fine-tuning settings (None = full train split, k = k shots per class, with
    ``finetune_seeds``), each ``finetune_epochs`` passes over its train set; () = none.

    Returns {"rows": AP table rows, "evaluation": raw results per dataset, "finetune": {setting: table json},
    "wall_seconds", "peak_rss_gib", "checkpoint", "model": the trained model (eval mode), "cfg"}.
    """
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    from unidet2.engine.checkpoint import Checkpointer
    from unidet2.engine.config import load_config
    from unidet2.engine.run import run, setup
    from unidet2.modeling.vocabulary import vocabulary_options

    output, data_root = Path(output), Path(data_root)
    start = time.perf_counter()
    cfg = load_config(config, [f"train.output_dir={output}", *overrides])
    setup(cfg)
    manifest = prepare_data(data_root, seed, preset)
    train_datasets = list(cfg.dataloader.train.dataset_names)
    label_space_path, embeddings_path = build_label_space(train_datasets, output / "metadata", encoder)
    cfg.scaledet.label_space_file = str(label_space_path)
    cfg.scaledet.embeddings_file = str(embeddings_path)
    cfg.dataloader.vocabulary = {"encoder": encoder}
    cfg.dataset_registration = {"synthetic": L(register_synthetic)(manifest_path_or_dir=str(data_root))}
    missing = sorted(set(cfg.dataloader.test) - {d["name"] for d in manifest["datasets"]})
    if missing:
        raise KeyError(f"test datasets {missing} are not in {data_root / 'manifest.json'}")
    upstream = [name for name in cfg.dataloader.test if not name.startswith("odinw_")]
    downstream = [name for name in cfg.dataloader.test if name.startswith("odinw_")]

    summary = run(cfg)
    training_peak_rss = peak_rss_gib()
    table, rows = ap_table(summary["evaluation"], upstream, downstream)
    finetuned = {}
    if finetune:
        tables = finetune_downstream(cfg, summary["checkpoint"], downstream, finetune, seeds=finetune_seeds,
                                     epochs=finetune_epochs, output=output / "finetune")  # fmt: skip
        finetuned = {setting: t.to_json() for setting, t in tables.items()}
        table += "\n\nFine-tuned from this model on each downstream train split, in its own label space (" + (
            f"{finetune_epochs:g} epochs; k-shot: mean over seeds {list(finetune_seeds)}):\n\n"
            + "\n\n".join(t.to_markdown() for t in tables.values()))
    wall = time.perf_counter() - start
    (output / "ap_table.md").write_text(
        f"# ScaleDet demo: box AP after {cfg.train.max_iter} iterations ({wall / 60:.1f} min, peak RSS "
        f"{training_peak_rss:.2f} GiB)\n\nTrained on {', '.join(train_datasets)}.\n\n{table}\n")
    (output / "ap_table.json").write_text(json.dumps(
        {"rows": rows, "max_iter": cfg.train.max_iter, "wall_seconds": wall, "peak_rss_gib": training_peak_rss,
         "train_datasets": train_datasets, "finetune": finetuned}, indent=2))
    plot_training_curves(output / "metrics.json", output / "training_curves.png")

    model = instantiate(cfg.model)
    Checkpointer(model, str(output)).resume_or_load(summary["checkpoint"], resume=False)
    pictures = visualize(model, cfg, upstream + downstream, output / "visualizations", images_per_dataset,
                         vocabulary_options(cfg))
    logger.info("AP table:\n%s", table)
    logger.info("wrote %s, ap_table.json, training_curves.png and %d images in %s; %.1f min, peak RSS %.2f GiB",
                output / "ap_table.md", len(pictures), output / "visualizations", wall / 60, training_peak_rss)
    return {"rows": rows, "table": table, "evaluation": summary["evaluation"], "finetune": finetuned,
            "wall_seconds": wall, "peak_rss_gib": training_peak_rss, "checkpoint": summary["checkpoint"],
            "model": model, "cfg": cfg}
