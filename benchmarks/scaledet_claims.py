"""ScaleDet's two claims, measured at convergence in the data-limited regime where the paper expects them.

Design (fixed before any run; reported whichever way it comes out; see projects/ScaleDet/README.md, "Results"):

* Data: the synthetic ``scaledet_claims`` preset, generated once per seed (the seed changes pixels and layouts,
  not the vocabularies). Three small upstream sets (48 train / 16 val / 48 test images, 96 px) that share shape
  concepts under overlapping ("triangle"), synonymous ("disc" / "circle") and broader ("polygon" for hexagons)
  names, and one downstream set (``claims_toys``: unseen names, one unseen concept; 24 train / 48 test).
* Model: ``projects/ScaleDet/configs/scaledet_tiny_synthetic.py`` (tiny BN ResNet + FPN + 3-stage cascade,
  MiniLM text embeddings), inputs 80-112 px, everything else from the config (its defaults are the method's).
* Schedule in epochs over each run's own data: ``--epochs`` passes over every training set (the multi-dataset
  loader samples the sets equally, so a 3-set run takes 3x the iterations of a 1-set run and sees each set for
  the same number of epochs as its single-set run), batch 4, SGD lr 0.01, warm-up 50 iterations, x0.1 at 2/3
  and 8/9 of the run. The validation AP (val splits of the run's training sets) is written ``--curve-points``
  times per run, so a reader sees whether it has flattened; nothing is chosen from it.
* Reported: box AP on the *test* split of every upstream set, each evaluated with its own vocabulary; the
  downstream test split zero-shot (its names as the vocabulary) and, for the Table-1 rows, after fine-tuning on
  its 24 train images (``--finetune-epochs`` epochs, DatasetFinetuner).
* Table 1 analogue: single-set runs (a, b, c), a 2-set run (a+b) and the 3-set run (a+b+c).
  Table 8 analogue on a+b+c, one switch changed from the config's defaults at a time: hard label loss only
  (λ = 0) vs hard + soft; the hard loss's per-class normalisation (sum vs the paper's 1/|L| mean); its negatives
  (all columns, partitioned per dataset, near-duplicates of the GT label skipped). A variant equal to the
  defaults is the a+b+c run itself (run once).
* ``--seeds`` seeds per cell (default 3), mean ± sample std; a markdown table, a JSON file and a PNG (the
  scaling curve and every run's validation curve) in benchmarks/results/ (``--smoke``: in the work folder).

Each (setting, seed) is a finished unit (``<work>/units/<setting>/seed<k>/result.json``, written last and
atomically): a second call skips it, an interrupted unit resumes from its checkpoint. Units run as separate
processes, ``--jobs`` at a time, one thread each; on a CUDA machine every unit uses the GPU unchanged.

    python benchmarks/scaledet_claims.py                 # the full matrix (27 units)
    python benchmarks/scaledet_claims.py --smoke         # 1 seed, a few iterations per setting: runs end to end
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CONFIG = "projects/ScaleDet/configs/scaledet_tiny_synthetic.py"
PRESET = "scaledet_claims"
UPSTREAM = {"a": "claims_a", "b": "claims_b", "c": "claims_c"}
DOWNSTREAM = "claims_toys"
BATCH = 4
WARMUP_ITERS = 50


@dataclass(frozen=True)
class Setting:
    """One cell row: the upstream sets it trains on and the ``scaledet.*`` switches it changes."""

    name: str
    train: tuple[str, ...]
    switches: tuple[tuple[str, str], ...] = ()
    finetune: bool = False  # fine-tune downstream too (the Table-1 rows)

    @property
    def slug(self) -> str:
        return self.name.replace("+", "").replace(" ", "_").replace("=", "-").replace(".", "")


SCALING = [Setting(name, tuple(name.split("+")), finetune=True) for name in ("a", "b", "c", "a+b", "a+b+c")]
# Table 8 and the hard-loss switches: (key, value) pairs, each a one-switch change of the 3-set run.
ABLATION_SWITCHES = [
    ("soft_loss_weight", "0.0"), ("soft_loss_weight", "1.0"),
    ("hard_loss_norm", "sum_classes"), ("hard_loss_norm", "mean_classes"),
    ("hard_loss_negatives", "all"), ("hard_loss_negatives", "partitioned"), ("hard_loss_negatives", "skip_duplicates"),
]


def config_defaults() -> dict[str, str]:
    """The ``scaledet`` node's values of the ablated keys, as override strings."""
    from detectron2.config import LazyConfig

    node = LazyConfig.load(str(REPO / CONFIG)).scaledet
    return {key: str(float(node[key])) if key == "soft_loss_weight" else str(node[key]) for key, _ in ABLATION_SWITCHES}


def ablation_rows(defaults: dict[str, str]) -> list[tuple[str, Setting]]:
    """(row label, setting) of the Table-8 analogue; a switch equal to the default is the a+b+c run."""
    base = SCALING[-1]
    rows = []
    for key, value in ABLATION_SWITCHES:
        label = f"{key}={value}" + (" (default)" if defaults[key] == value else "")
        setting = base if defaults[key] == value else Setting(f"a+b+c {key}={value}", base.train, ((key, value),))
        rows.append((label, setting))
    return rows


def all_settings(defaults: dict[str, str]) -> list[Setting]:
    unique = {s.name: s for s in SCALING}
    for _, setting in ablation_rows(defaults):
        unique.setdefault(setting.name, setting)
    return list(unique.values())


# ------------------------------------------------------------------------------------------------ one unit
def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    os.replace(tmp, path)


def data_root(work: Path, seed: int) -> Path:
    return work / "data" / f"seed{seed}"


def prepare_data(work: Path, seed: int, preset: str) -> Path:
    from unidet2.data.synthetic import generate_synthetic

    root = data_root(work, seed)
    if not (root / "manifest.json").is_file():
        generate_synthetic(root, seed=seed, preset=preset, overwrite=root.exists())
    return root


def _bbox_ap(results: dict, dataset: str) -> float | None:
    value = results.get(dataset, {}).get("bbox", {}).get("AP")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_unit(setting: Setting, seed: int, work: Path, epochs: float, curve_points: int, finetune_epochs: float,
             max_iter_cap: int | None) -> dict:
    """Train, validate along the way, test, fine-tune downstream; returns the unit's result (also written)."""
    import torch

    torch.set_num_threads(1)
    from detectron2.data import DatasetCatalog

    from unidet2.data.label_space import UnifiedLabelSpace
    from unidet2.data.text_embeddings import get_text_embeddings, save_text_embeddings
    from unidet2.engine import do_test, do_train, load_config, setup
    from unidet2.engine.run import register_config_datasets, resolve_device

    start = time.perf_counter()
    unit_dir = work / "units" / setting.slug / f"seed{seed}"
    unit_dir.mkdir(parents=True, exist_ok=True)
    root = data_root(work, seed)
    train_sets = [f"{UPSTREAM[k]}_train" for k in setting.train]
    val_sets = [f"{UPSTREAM[k]}_val" for k in setting.train]
    test_sets = [f"{name}_test" for name in UPSTREAM.values()]
    names_list = "[" + ",".join(train_sets) + "]"
    overrides = [
        f"dataset_registration.synthetic.manifest_path_or_dir={root}",
        f"dataloader.train.dataset_names={names_list}",
        "dataloader.train.ratios=[" + ",".join("1.0" for _ in train_sets) + "]",
        f"dataloader.train.total_batch_size={BATCH}",
        f"dataloader.train.seed={seed}",
        f"scaledet.dataset_columns.dataset_names={names_list}",
        "dataloader.train.mapper.augmentations.min_size=[80,96,112]",
        "dataloader.train.mapper.augmentations.max_size=128",
        "dataloader.test_loader.mapper.augmentations.0.short_edge_length=96",
        "dataloader.test_loader.mapper.augmentations.0.max_size=128",
        "model.proposal_generator.pre_nms_topk=[300,150]",
        "model.proposal_generator.post_nms_topk=[100,100]",
        "model.roi_heads.batch_size_per_image=64",
        f"train.output_dir={unit_dir / 'train'}",
        f"train.seed={seed}",
        "train.log_period=20",
        *[f"scaledet.{key}={value}" for key, value in setting.switches],
    ]
    cfg = load_config(str(REPO / CONFIG), overrides)
    cfg.train.device = resolve_device(None)
    register_config_datasets(cfg)

    # label space and text embeddings of this run's training sets (rows = unified ids, sidecar = prompts)
    space = UnifiedLabelSpace.from_dataset_names(train_sets)
    space.save_json(unit_dir / "label_space.json")
    embeddings, metadata = get_text_embeddings(space.names, encoder="minilm", synonyms=space.synonyms,
                                               cache_dir=str(work / "text_cache"), return_metadata=True)
    save_text_embeddings(unit_dir / "embeddings.npy", embeddings, metadata)
    cfg.scaledet.embeddings_file = str(unit_dir / "embeddings.npy")
    cfg.scaledet.label_space_file = str(unit_dir / "label_space.json")

    num_images = sum(len(DatasetCatalog.get(name)) for name in train_sets)
    max_iter = max(1, math.ceil(epochs * num_images / BATCH))
    if max_iter_cap is not None:
        max_iter = min(max_iter, max_iter_cap)
    cfg.train.max_iter = max_iter
    cfg.train.eval_period = max(1, max_iter // curve_points)
    cfg.train.checkpointer.period = max_iter
    cfg.lr_multiplier.scheduler.milestones = [int(max_iter * 2 / 3), int(max_iter * 8 / 9)]
    cfg.lr_multiplier.scheduler.num_updates = max_iter
    cfg.lr_multiplier.warmup_length = min(WARMUP_ITERS, max(1, max_iter // 4)) / max_iter
    cfg.dataloader.test = val_sets  # the training curve
    setup(cfg)

    from detectron2.config import instantiate

    torch.manual_seed(seed)
    model = instantiate(cfg.model).to(cfg.train.device)
    trained = do_train(cfg, model, resume=True)
    train_s = time.perf_counter() - start

    # the final model on the val splits (last curve point), the upstream test splits and downstream zero-shot
    cfg.dataloader.test = [*val_sets, *test_sets, f"{DOWNSTREAM}_test"]
    tested = do_test(cfg, model, tag=f"iter_{max_iter:07d}")
    curve = []
    for path in sorted((unit_dir / "train" / "inference").glob("results_iter_*.json")):
        iteration = int(path.stem.rsplit("_", 1)[1])
        results = json.loads(path.read_text())
        curve.append({"iteration": iteration, "epoch": iteration * BATCH / num_images,  # per training set
                      "val_ap": {name: _bbox_ap(results, name) for name in val_sets}})
    result = {
        "setting": setting.name, "seed": seed, "train_sets": train_sets, "switches": dict(setting.switches),
        "num_train_images": num_images, "epochs": epochs, "max_iter": max_iter, "device": cfg.train.device,
        "test_ap": {name: _bbox_ap(tested, name) for name in test_sets},
        "zero_shot_ap": _bbox_ap(tested, f"{DOWNSTREAM}_test"), "val_curve": curve,
    }

    result["finetuned_ap"] = None
    if setting.finetune:
        result["finetuned_ap"] = _finetune(cfg, trained["checkpoint"], seed, unit_dir, finetune_epochs, max_iter_cap)
    result["wall_s"] = time.perf_counter() - start
    result["train_wall_s"] = train_s
    _write_json_atomic(unit_dir / "result.json", result)
    return result


@dataclass(frozen=True)
class _FinetuneRun:
    train_dataset: str
    seed: int
    epochs: float
    dataset_repeat: int


def _finetune(cfg, checkpoint: str, seed: int, unit_dir: Path, epochs: float, max_iter_cap: int | None):
    """Downstream fine-tuning in the set's own label space, from the trained weights; its test AP."""
    from unidet2.engine import DatasetFinetuner, FinetuneSchedule, do_test

    schedule = FinetuneSchedule(epochs=epochs, dataset_repeat=1, warmup_iters=0, max_iter=max_iter_cap)
    tuned = DatasetFinetuner(cfg, checkpoint, schedule)(
        _FinetuneRun(f"{DOWNSTREAM}_train", seed, epochs, 1), str(unit_dir / "finetune")
    )
    cfg.dataloader.test = [f"{DOWNSTREAM}_test"]
    return _bbox_ap(do_test(cfg, tuned, tag="finetuned"), f"{DOWNSTREAM}_test")


# ------------------------------------------------------------------------------------------------ driver
def unit_path(work: Path, setting: Setting, seed: int) -> Path:
    return work / "units" / setting.slug / f"seed{seed}" / "result.json"


def run_matrix(args: argparse.Namespace, settings: list[Setting]) -> dict[tuple[str, int], dict]:
    units = [(s, seed) for seed in range(args.seeds) for s in settings]
    for seed in range(args.seeds):
        prepare_data(args.work, seed, args.preset)  # once per seed, before the parallel units read it
    todo = [(s, seed) for s, seed in units if not unit_path(args.work, s, seed).is_file()]
    print(f"{len(units)} units, {len(units) - len(todo)} already finished, {len(todo)} to run", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def launch(unit):
        setting, seed = unit
        log = unit_path(args.work, setting, seed).parent / "unit.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--unit", setting.name, "--unit-seed", str(seed),
               "--work", str(args.work), "--epochs", str(args.epochs), "--curve-points", str(args.curve_points),
               "--finetune-epochs", str(args.finetune_epochs)]
        if args.max_iter is not None:
            cmd += ["--max-iter", str(args.max_iter)]
        started = time.perf_counter()
        with open(log, "w") as stream:
            code = subprocess.run(cmd, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
        status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
        print(f"  {setting.name} seed {seed}: {status} in {time.perf_counter() - started:.0f} s", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(launch, todo))
    if any(codes):
        raise SystemExit(f"{sum(1 for c in codes if c)} unit(s) failed; rerun to retry only those")
    return {(s.name, seed): json.loads(unit_path(args.work, s, seed).read_text()) for s, seed in units}


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def _cell(values: list[float | None]) -> str:
    mean, std, n = _mean_std(values)
    if mean is None:
        return "—"
    return f"{mean:.1f} ± {std:.1f}" if std is not None else f"{mean:.1f} (n={n})"


def summarise(results: dict[tuple[str, int], dict], seeds: int, defaults: dict[str, str]) -> dict:
    columns = [f"{name}_test" for name in UPSTREAM.values()]

    def row(setting: Setting) -> dict:
        runs = [results[(setting.name, seed)] for seed in range(seeds)]
        cells = {col: [r["test_ap"].get(col) for r in runs] for col in columns}
        cells["zero-shot " + DOWNSTREAM] = [r["zero_shot_ap"] for r in runs]
        cells["fine-tuned " + DOWNSTREAM] = [r["finetuned_ap"] for r in runs]
        return {"setting": setting.name, "cells": cells, "wall_s": [r["wall_s"] for r in runs],
                "max_iter": runs[0]["max_iter"]}

    return {
        "seeds": seeds,
        "defaults": defaults,
        "scaling": [row(s) for s in SCALING],
        "ablation": [{**row(s), "label": label} for label, s in ablation_rows(defaults)],
    }


def write_markdown(summary: dict, command: str, wall_s: float) -> str:
    title = f"ScaleDet claims (synthetic `{summary['preset']}` preset, {summary['seeds']} seed(s), box AP, mean ± std)"
    lines = [f"# {title}", "",
             f"Command: `{command}`; wall time of this call {wall_s / 60:.1f} min.", ""]
    for title, key, label in (("Table 1 analogue: training sets", "scaling", "setting"),
                              ("Table 8 analogue and hard-loss switches (a+b+c)", "ablation", "label")):
        first = summary[key][0]
        headers = list(first["cells"])
        lines += [f"## {title}", "", f"| {label} | iterations | " + " | ".join(headers) + " |",
                  "|---" * (len(headers) + 2) + "|"]
        for row in summary[key]:
            lines.append(f"| {row[label]} | {row['max_iter']} | " + " | ".join(_cell(v) for v in row["cells"].values())
                         + " |")
        lines.append("")
    return "\n".join(lines)


def write_plot(summary: dict, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scaling_ax, curve_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_name = {row["setting"]: row for row in summary["scaling"]}
    for key, dataset in UPSTREAM.items():
        # number of training sets -> AP on this set's test split, over the runs that train on it
        chain = {"a": ["a", "a+b", "a+b+c"], "b": ["b", "a+b", "a+b+c"], "c": ["c", "a+b+c"]}[key]
        xs, means, stds = [], [], []
        for name in chain:
            mean, std, _ = _mean_std(by_name[name]["cells"][f"{dataset}_test"])
            if mean is not None:
                xs.append(name.count("+") + 1)
                means.append(mean)
                stds.append(std or 0.0)
        scaling_ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=f"{dataset} test")
    scaling_ax.set_xlabel("number of training sets")
    scaling_ax.set_ylabel("box AP (mean ± std over seeds)")
    scaling_ax.set_xticks([1, 2, 3])
    scaling_ax.set_title("Table 1 analogue: AP vs training sets")
    scaling_ax.legend()
    for (name, seed), result in sorted(results.items()):
        curve = result["val_curve"]
        if not curve:
            continue
        values = [statistics.fmean([v for v in point["val_ap"].values() if v is not None] or [float("nan")])
                  for point in curve]
        curve_ax.plot([p["epoch"] for p in curve], values, marker=".", alpha=0.6,
                      label=f"{name} s{seed}" if seed == 0 else None)
    curve_ax.set_xlabel("epoch (passes over each training set)")
    curve_ax.set_ylabel("mean val AP of the run's training sets")
    curve_ax.set_title("validation curves, every run")
    curve_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "output" / "bench_scaledet_claims")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=20.0, help="passes over each training set")
    parser.add_argument("--curve-points", type=int, default=6, help="validation evaluations per run")
    parser.add_argument("--finetune-epochs", type=float, default=12.0, help="downstream fine-tuning epochs")
    parser.add_argument("--jobs", type=int, default=2, help="units run at once (one thread each)")
    parser.add_argument("--max-iter", type=int, help="cap on every run's iterations (smoke tests)")
    parser.add_argument("--preset", default=PRESET, help="synthetic preset (its sets must be those of scaledet_claims)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 seed, 4 iterations per run, 1 curve point, the preset's 4-image smoke version, output "
                        "in the work folder: shows that it runs end to end")
    parser.add_argument("--unit", help=argparse.SUPPRESS)
    parser.add_argument("--unit-seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    if args.smoke:
        args.seeds, args.curve_points, args.max_iter = 1, 1, args.max_iter or 4
        args.preset = f"{PRESET}_smoke"
        if args.work == (REPO / "output" / "bench_scaledet_claims").resolve():
            args.work = REPO / "output" / "bench_scaledet_claims_smoke"
    defaults = config_defaults()
    settings = all_settings(defaults)
    if args.unit is not None:  # one (setting, seed) unit, in its own process
        setting = next(s for s in settings if s.name == args.unit)
        run_unit(setting, args.unit_seed, args.work, args.epochs, args.curve_points, args.finetune_epochs,
                 args.max_iter)
        return
    start = time.perf_counter()
    results = run_matrix(args, settings)
    summary = {"preset": args.preset, **summarise(results, args.seeds, defaults)}
    command = "python benchmarks/scaledet_claims.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out_dir = args.work if args.smoke else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - start
    report = write_markdown(summary, command.strip(), wall)
    (out_dir / "scaledet_claims.md").write_text(report)
    _write_json_atomic(out_dir / "scaledet_claims.json", {
        "summary": summary, "command": command.strip(), "wall_s": wall,
        "units": {f"{name} | seed {seed}": result for (name, seed), result in results.items()}})
    write_plot(summary, results, out_dir / "scaledet_claims.png")
    print(report)
    print(f"wrote {out_dir / 'scaledet_claims.md'}, .json, .png")


if __name__ == "__main__":
    main()
