"""ScaleDet's classification switches on a region-classifier proxy: cheap enough for many seeds on one CPU thread.

What it measures: the part of ScaleDet that the switches change, the text-embedding classifier and its Eq. 6 /
Eq. 7 losses, on region features of known concepts, without the detector around it (boxes, proposals, backbone).

* Label space: the ``scaledet_claims`` synthetic preset's three upstream sets concatenated (6 + 7 + 7 = 20 entries,
  exact duplicates "triangle" and "star", synonyms such as "disc" / "circle", broader names such as "polygon"),
  embedded with the real MiniLM encoder and the sets' synonyms, as tools/build_text_embeddings.py does.
* Region features: every shape concept has a random prototype in R^64 (per seed); a foreground region of a concept
  is its prototype plus Gaussian noise (sigma ``--noise``), a background region is noise alone.
* Training: ``--steps`` SGD steps (lr 0.01, momentum 0.9, as the tiny detector's config), each on one dataset's
  batch (like the multi-dataset loader): 8 foreground regions of that dataset's classes, labelled with their
  unified ids, and 24 background regions (the detector's 25 % foreground RoI sampling).
* Evaluation (fresh regions): for every upstream set, with its own vocabulary, and for the downstream
  ``claims_toys`` names (zero-shot), the mean over classes of the average precision of ranking all test regions
  by sigma(z) for that class (positives: regions of the class's concept). Upstream AP is averaged over the three sets.

Arms: one switch changed from the config's defaults at a time (soft weight, hard-loss normalisation, negatives,
Eq. 7 with or without the GT entry, symmetrised or per-row Ŝ). ``--seeds`` seeds, mean ± std.
Writes benchmarks/results/scaledet_head_ablation.{json,md}.

    python benchmarks/scaledet_head_ablation.py              # 5 seeds x 11 arms, about 1 CPU-minute
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
UPSTREAM = ("claims_a", "claims_b", "claims_c")
DOWNSTREAM = "claims_toys"
FEATURE_DIM = 64

# (label, switches) with switches as keyword values of the predictor's parts; None = the defaults.
ARMS = [
    ("defaults", {}),
    ("soft_loss_weight=0 (hard only)", {"soft_weight": 0.0}),
    ("hard_loss_norm=mean_classes", {"normalization": "mean_classes"}),
    ("hard_loss_norm=sum_classes", {"normalization": "sum_classes"}),
    ("hard_loss_negatives=all", {"negatives": "all"}),
    ("hard_loss_negatives=partitioned", {"negatives": "partitioned"}),
    ("hard_loss_negatives=skip_duplicates", {"negatives": "skip_duplicates"}),
    ("soft_loss_exclude_gt=True", {"exclude_gt": True}),
    ("soft_loss_exclude_gt=False", {"exclude_gt": False}),
    ("similarity_symmetrize=False", {"symmetrize": False}),
    ("similarity_symmetrize=True", {"symmetrize": True}),
]


def _vocabularies():
    """Per set: (names, synonyms, concepts) from the synthetic preset's specs."""
    from unidet2.data.synthetic.specs import PRESETS

    sets = {spec.name: spec for spec in PRESETS["scaledet_claims"].datasets}
    return {
        name: ([c.name for c in sets[name].classes], [list(c.all_synonyms()[1:]) for c in sets[name].classes],
               [c.concept for c in sets[name].classes])
        for name in (*UPSTREAM, DOWNSTREAM)
    }


def _embeddings(vocabularies, cache_dir):
    from unidet2.data.text_embeddings import get_text_embeddings

    return {name: torch.from_numpy(get_text_embeddings(names, encoder="minilm", synonyms=synonyms,
                                                       cache_dir=cache_dir))
            for name, (names, synonyms, _) in vocabularies.items()}


def _average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def run_arm(switches: dict, seed: int, vocabularies: dict, embeddings: dict, defaults: dict, steps: int,
            noise: float) -> dict:
    from unidet2.modeling import TextEmbeddingClassifier, VocabularySimilarity, set_vocabulary
    from unidet2.modeling.label_assignment_losses import HardLabelLoss, SoftLabelLoss, dataset_class_mask

    options = {**defaults, **switches}
    generator = torch.Generator().manual_seed(seed)
    concepts = sorted({c for _, _, cs in vocabularies.values() for c in cs})
    prototypes = {c: torch.randn(FEATURE_DIM, generator=generator) for c in concepts}
    unified = torch.cat([embeddings[name] for name in UPSTREAM])
    columns, offset = [], 0
    for name in UPSTREAM:
        columns.append(list(range(offset, offset + len(vocabularies[name][0]))))
        offset += len(columns[-1])

    torch.manual_seed(seed)
    classifier = TextEmbeddingClassifier(FEATURE_DIM, unified, temperature=options["temperature"])
    hard = HardLabelLoss(options["normalization"], negatives=options["negatives"],
                         duplicate_threshold=options["duplicate_threshold"])
    soft = SoftLabelLoss(options["soft_weight"], exclude_gt=options["exclude_gt"]) if options["soft_weight"] else None
    similarity = VocabularySimilarity(classifier, symmetrize=options["symmetrize"])
    masks = dataset_class_mask(columns, len(unified))
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def regions(concept_list, count):
        picks = torch.randint(len(concept_list), (count,), generator=generator)
        features = torch.stack([prototypes[concept_list[int(k)]] for k in picks])
        return features + noise * torch.randn(features.shape, generator=generator), picks

    for step in range(steps):
        dataset = step % len(UPSTREAM)
        fg, local = regions(vocabularies[UPSTREAM[dataset]][2], 8)
        features = torch.cat([fg, noise * torch.randn((24, FEATURE_DIM), generator=generator)])
        gt = torch.cat([torch.tensor(columns[dataset])[local], torch.full((24,), len(unified))])
        cosine = classifier.forward_cosine(features)
        logits = classifier.cosine_to_logits(cosine)
        loss = hard(logits, gt, embeddings=classifier.embeddings, dataset_mask=masks[dataset].expand(len(gt), -1))
        if soft is not None:
            loss = loss + soft(cosine, logits, gt, similarity(classifier))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    ap = {}
    with torch.no_grad():
        for name in (*UPSTREAM, DOWNSTREAM):
            names, _, set_concepts = vocabularies[name]
            fg, picks = regions(set_concepts, 40 * len(names))
            features = torch.cat([fg, noise * torch.randn((120 * len(names), FEATURE_DIM), generator=generator)])
            labels = np.concatenate([picks.numpy(), np.full(120 * len(names), -1)])
            state = set_vocabulary(classifier, embeddings[name])
            scores = torch.sigmoid(classifier(features)).numpy()
            set_vocabulary(classifier, state)
            ap[name] = 100 * float(np.nanmean([_average_precision(scores[:, k], labels == k)
                                               for k in range(len(names))]))
    return {"upstream_ap": statistics.fmean(ap[n] for n in UPSTREAM), "zero_shot_ap": ap[DOWNSTREAM], "ap": ap}


def config_defaults() -> dict:
    from detectron2.config import LazyConfig

    node = LazyConfig.load("projects/ScaleDet/configs/scaledet_tiny_synthetic.py").scaledet
    return {"temperature": node.temperature, "normalization": node.hard_loss_norm,
            "negatives": node.hard_loss_negatives, "duplicate_threshold": node.duplicate_threshold,
            "soft_weight": node.soft_loss_weight, "exclude_gt": node.soft_loss_exclude_gt,
            "symmetrize": node.similarity_symmetrize}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--cache-dir", default=".cache/text_embeddings")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    defaults = config_defaults()
    vocabularies = _vocabularies()
    embeddings = _embeddings(vocabularies, args.cache_dir)
    rows = []
    for label, switches in ARMS:
        runs = [run_arm(switches, seed, vocabularies, embeddings, defaults, args.steps, args.noise)
                for seed in range(args.seeds)]
        row = {"arm": label, "switches": switches, "runs": runs}
        for key in ("upstream_ap", "zero_shot_ap"):
            values = [r[key] for r in runs]
            row[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        rows.append(row)
        print(f"{label:40s} upstream {row['upstream_ap'][0]:5.1f} ± {row['upstream_ap'][1]:4.1f}   "
              f"zero-shot {row['zero_shot_ap'][0]:5.1f} ± {row['zero_shot_ap'][1]:4.1f}", flush=True)
    wall = time.perf_counter() - start
    lines = [f"# ScaleDet classification switches on the region-classifier proxy ({args.seeds} seeds, {args.steps} "
             f"steps, noise {args.noise}; {wall:.0f} s)", "", f"Defaults: `{defaults}`", "",
             "| arm | upstream AP (mean of 3 sets) | zero-shot AP (claims_toys) |", "|---|---|---|"]
    lines += [f"| {r['arm']} | {r['upstream_ap'][0]:.1f} ± {r['upstream_ap'][1]:.1f} | "
              f"{r['zero_shot_ap'][0]:.1f} ± {r['zero_shot_ap'][1]:.1f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaledet_head_ablation.md").write_text("\n".join(lines) + "\n")
    (args.out / "scaledet_head_ablation.json").write_text(json.dumps(
        {"defaults": defaults, "seeds": args.seeds, "steps": args.steps, "noise": args.noise, "wall_s": wall,
         "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
