"""Foundation demo: one inference of a detectron2 model-zoo model on a generated image, saved as a PNG.

The model is randomly initialised (no weights can be downloaded here), so the boxes are meaningless; the
point is that building, inference and detectron2's Visualizer run on this stack.
"""

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer
from PIL import Image, ImageDraw

logger = logging.getLogger("unidet2.smoke_demo")


def generated_image(size=(256, 192), seed=0) -> np.ndarray:
    """An RGB image of a few coloured shapes on a grey background, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (90, 90, 90))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(10, min(size) - 60, 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse([x, y, x + 50, y + 40], fill=colour) if rng.random() < 0.5 else draw.rectangle(
            [x, y, x + 45, y + 45], fill=colour)
    return np.asarray(image)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("output/smoke_demo"))
    parser.add_argument("--config", default="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(args.config))
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = "GN"  # random-init FrozenBN ResNets blow up
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: show the top boxes whatever their score
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    torch.manual_seed(0)
    model = build_model(cfg).eval()

    image = generated_image()
    tensor = torch.as_tensor(image[:, :, ::-1].copy()).permute(2, 0, 1)  # BGR, as the zoo configs expect
    start = time.perf_counter()
    with torch.no_grad():
        (output,) = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
    elapsed = time.perf_counter() - start
    instances = output["instances"].to("cpu")
    metadata = MetadataCatalog.get("coco_2017_val")
    visualised = Visualizer(image, metadata).draw_instance_predictions(instances).get_image()
    path = args.out / "inference.png"
    Image.fromarray(visualised).save(path)
    logger.info("%s (random weights) on a %dx%d generated image: %d instances in %.2f s; wrote %s",
                args.config, image.shape[1], image.shape[0], len(instances), elapsed, path)


if __name__ == "__main__":
    main()
