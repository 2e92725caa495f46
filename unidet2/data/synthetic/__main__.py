"""CLI: python -m unidet2.data.synthetic --out DIR --seed N --preset {test,demo,longtail,panoptic}."""

from __future__ import annotations

import argparse
import logging

from .generate import generate_synthetic
from .specs import PRESETS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m unidet2.data.synthetic",
        description="Write synthetic multi-dataset detection/segmentation data in COCO, LVIS, COCO-panoptic and "
        "semantic-PNG formats, plus a manifest.json for register_synthetic().",
    )
    parser.add_argument("--out", required=True, help="output directory (empty or absent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset",
        default="test",
        choices=sorted(PRESETS),
        help="; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()),
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a previous synthetic output in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    generate_synthetic(args.out, seed=args.seed, preset=args.preset, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
