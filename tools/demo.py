"""Run a trained unidet2 detector on your own images with a vocabulary given on the command line.

    python tools/demo.py --config-file projects/ScaleDet/configs/scaledet_demo_synthetic.py \
        --checkpoint output/scaledet_demo/model_final.pth --vocabulary "cat,dog,traffic cone" \
        --input photos/*.jpg --output output/demo_predictions

Images are preprocessed as the config's test loader does (its mapper's augmentations and image format). The
vocabulary is encoded with the text encoder named by ``--encoder`` (the embeddings are cached, so a
vocabulary is encoded once). Each image is written with its predicted boxes and class names drawn by
detectron2's Visualizer, and the predictions as JSON next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from unidet2.engine.checkpoint import Checkpointer
from unidet2.engine.cli import reject_renamed_flags
from unidet2.engine.config import load_config
from unidet2.evaluation.contract import test_time_preprocessing
from unidet2.modeling import find_text_classifiers, set_vocabulary

logger = logging.getLogger("unidet2.demo")


def parse_vocabulary(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise ValueError(f"--vocabulary must be a comma-separated list of non-empty names, got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--vocabulary has duplicate names: {text!r}")
    return names


def predict(model, image: np.ndarray, augmentations: list) -> Instances:
    """One image (H, W, 3) uint8 in the model's input format -> detectron2 Instances in the image's own size.

    ``augmentations`` are the config's test-time ones (:func:`unidet2.evaluation.test_time_preprocessing`).
    """
    aug_input = T.AugInput(image)
    T.AugmentationList(augmentations)(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    with torch.no_grad():
        (output,) = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
    return output["instances"].to("cpu")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--vocabulary", required=True, help='comma-separated class names, e.g. "cat,dog,traffic cone"')
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", type=Path, default=Path("output/demo_predictions"))
    parser.add_argument("--encoder", default="minilm", help="text encoder: minilm (offline), openclip, ...")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    reject_renamed_flags(parser, {"--min-size": "the config's test mapper (key=value overrides)",
                                  "--max-size": "the config's test mapper (key=value overrides)"})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    vocabulary = parse_vocabulary(args.vocabulary)
    cfg = load_config(args.config_file, args.overrides)
    model = instantiate(cfg.model).eval()
    if not find_text_classifiers(model):
        raise SystemExit(f"{args.config_file}: the model has no text-embedding classifier to take a vocabulary")
    Checkpointer(model).load(args.checkpoint)
    set_vocabulary(model, vocabulary, encoder=args.encoder)
    metadata = MetadataCatalog.get("__unidet2_demo__").set(thing_classes=vocabulary)
    augmentations, image_format = test_time_preprocessing(cfg)

    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.input:
        image = read_image(path, format=image_format)
        instances = predict(model, image, augmentations)
        instances = instances[instances.scores >= args.score_threshold]
        rgb = read_image(path, format="RGB")
        drawn = Visualizer(rgb, metadata).draw_instance_predictions(instances).get_image()
        stem = Path(path).stem
        Image.fromarray(drawn).save(args.output / f"{stem}.png")
        detections = [
            {"box_xyxy": [round(float(v), 1) for v in box], "class": vocabulary[int(c)], "score": round(float(s), 4)}
            for box, c, s in zip(instances.pred_boxes.tensor.tolist(), instances.pred_classes, instances.scores)
        ]
        (args.output / f"{stem}.json").write_text(json.dumps(detections, indent=1))
        logger.info("%s: %d detections -> %s", path, len(detections), args.output / f"{stem}.png")
        results.append({"image": path, "detections": detections})
    return results


if __name__ == "__main__":
    main()
