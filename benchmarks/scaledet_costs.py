"""ScaleDet's training cost, measured on CPU (`make bench`): step time of ScaleDet (Faster R-CNN heads) with a
2148-entry label space against detectron2's stock R50-FPN Faster R-CNN with the same backbone and 80 classes,
measured in one run, and ScaleDet's step time at 80, 2148 and 10 000 entries (512-d text embeddings, as CLIP's).

(The paper's claims, AP against the number of training sets and the soft label loss, are
benchmarks/scaledet_claims.py.) Writes benchmarks/results/scaledet_costs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _zoo_cfg():
    """detectron2's R50-FPN Faster R-CNN config, GroupNorm for random initialisation, 256 px inputs."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = "GN"  # a random-init FrozenBN ResNet blows up
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    return cfg


def _batch(seed: int, num_classes: int = 80):
    import torch
    from detectron2.structures import Boxes, Instances

    gen = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(2):
        image = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8, generator=gen)
        xy = torch.rand(6, 2, generator=gen) * 200
        wh = torch.rand(6, 2, generator=gen) * 80 + 20
        instances = Instances((256, 320))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        instances.gt_classes = torch.randint(0, num_classes, (6,), generator=gen)
        batch.append({"image": image, "instances": instances, "dataset_source": 0})
    return batch


def _models(num_classes_list, embed_dim=512):
    """detectron2's stock R50-FPN Faster R-CNN (80 classes) and ScaleDet with Faster R-CNN heads at each
    label-space size: the same backbone, RPN, box head (2 x FC-1024) and RoI sampling (512 per image)."""
    import numpy as np
    import torch
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone, build_model, build_proposal_generator
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.modeling.matcher import Matcher
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead

    from projects.ScaleDet.scaledet import ScaleDetOutputLayers, ScaleDetRCNN, ScaleDetStandardROIHeads
    from unidet2.modeling import TextEmbeddingClassifier
    from unidet2.modeling.label_assignment_losses import HardLabelLoss, SoftLabelLoss

    cfg = _zoo_cfg()
    torch.manual_seed(0)
    models = {"detectron2 Faster R-CNN, 80 classes": build_model(cfg)}
    rng = np.random.default_rng(0)
    for num_classes in num_classes_list:
        torch.manual_seed(0)
        backbone = build_backbone(cfg)
        predictor = ScaleDetOutputLayers(
            ShapeSpec(channels=1024), box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
            classifier=TextEmbeddingClassifier(1024, rng.standard_normal((num_classes, embed_dim)).astype(np.float32)),
            hard_loss=HardLabelLoss(), soft_loss=SoftLabelLoss(), cls_agnostic_bbox_reg=True,
        )
        roi_heads = ScaleDetStandardROIHeads(
            num_classes=None, batch_size_per_image=512, positive_fraction=0.25,
            proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
            box_in_features=["p2", "p3", "p4", "p5"],
            box_pooler=ROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2"),
            box_head=FastRCNNConvFCHead(ShapeSpec(channels=256, height=7, width=7), conv_dims=[],
                                        fc_dims=[1024, 1024]),
            box_predictor=predictor,
        )
        models[f"ScaleDet, {num_classes} entries"] = ScaleDetRCNN(
            backbone=backbone, proposal_generator=build_proposal_generator(cfg, backbone.output_shape()),
            roi_heads=roi_heads, pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
        )
    return models


def run_step_times(steps: int, rounds: int) -> dict:
    import torch
    from detectron2.utils.events import EventStorage

    models = _models([80, 2148, 10000])
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    times = {k: [] for k in models}
    batch = _batch(0)
    with EventStorage(0):
        for model in models.values():  # warm-up: allocator, mkldnn primitives
            model.train()
            sum(model(batch).values()).backward()
        for _ in range(rounds):  # alternate the models so that load changes hit them alike
            for name, model in models.items():
                start = time.perf_counter()
                for _ in range(steps):
                    losses = model(batch)
                    optimizers[name].zero_grad()
                    sum(losses.values()).backward()
                    optimizers[name].step()
                times[name].append((time.perf_counter() - start) / steps)
    return {name: {"median_s": statistics.median(t), "runs_s": t} for name, t in times.items()}


# ------------------------------------------------------------------------------------------ report
def write_report(step_times: dict) -> str:
    stock = step_times["detectron2 Faster R-CNN, 80 classes"]["median_s"]
    lines = ["# ScaleDet training cost (R50-FPN, 2 images of 256x320, 512 RoIs per image, CPU)", "",
             "| model | median step (s) | ratio to detectron2 80 classes |", "|---|---|---|"]
    for name, result in step_times.items():
        lines.append(f"| {name} | {result['median_s']:.3f} | {result['median_s'] / stock:.3f} |")
    s80 = step_times["ScaleDet, 80 entries"]["median_s"]
    s2148 = step_times["ScaleDet, 2148 entries"]["median_s"]
    s10k = step_times["ScaleDet, 10000 entries"]["median_s"]
    lines += ["", f"ScaleDet 2148 / detectron2 80: **{s2148 / stock:.3f}** (target <= 1.10); "
                  f"ScaleDet 10 000 / 80 entries: **{s10k / s80:.3f}** (target <= 1.3)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    step_times = run_step_times(args.steps, args.rounds)
    report = write_report(step_times)
    (RESULTS / "scaledet_costs.md").write_text(report)
    (RESULTS / "scaledet_costs.json").write_text(json.dumps({"step_times": step_times}, indent=2))
    print(report)


if __name__ == "__main__":
    main()
