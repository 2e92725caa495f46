#!/usr/bin/env python
"""Make the ADE20K (SceneParsing, 150 classes) label PNGs that ``ade20k_sem_seg_{train,val}`` read.

    python tools/datasets/prepare_ade20k_sem_seg.py [--root /data/datasets] [--workers 4]

ADEChallengeData2016's ``annotations/{training,validation}/*.png`` store 0 = "other" and 1..150 = the classes;
the datasets read ``annotations_detectron2/{training,validation}/*.png`` with 0..149 = the classes and 255 =
ignore (the convention of detectron2 and Mask2Former): every value v becomes v - 1, 0 becomes 255.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from unidet2.data.datasets.common import get_datasets_root


def convert_label(source: str, target: str) -> None:
    """One ADE20K label PNG -> the 0..149 / 255 PNG (written to a temporary name, then renamed)."""
    with Image.open(source) as image:
        labels = np.asarray(image)
    if labels.ndim != 2 or labels.dtype != np.uint8 or labels.max() > 150:
        raise ValueError(f"'{source}' is not an ADE20K label PNG (single channel, values 0..150)")
    converted = (labels.astype(np.int16) - 1).astype(np.uint8)  # 0 -> 255 (ignore)
    temporary = target + ".tmp.png"
    Image.fromarray(converted).save(temporary)
    os.replace(temporary, target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="dataset root (default: $UNIDET2_DATASETS or ./datasets)")
    parser.add_argument("--workers", type=int, default=4, help="processes (0 or 1: this one)")
    args = parser.parse_args(argv)
    base = os.path.join(args.root or get_datasets_root(), "ADEChallengeData2016")
    jobs = []
    for split in ("training", "validation"):
        source_dir = os.path.join(base, "annotations", split)
        if not os.path.isdir(source_dir):
            parser.error(f"'{source_dir}' does not exist (unpack ADEChallengeData2016.zip under the dataset root)")
        target_dir = os.path.join(base, "annotations_detectron2", split)
        os.makedirs(target_dir, exist_ok=True)
        jobs += [
            (os.path.join(source_dir, name), os.path.join(target_dir, name))
            for name in sorted(os.listdir(source_dir))
            if name.endswith(".png")
        ]
    if args.workers > 1 and jobs:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(convert_label, *zip(*jobs), chunksize=64))
    else:
        for source, target in jobs:
            convert_label(source, target)
    print(f"wrote {len(jobs)} label PNGs under {os.path.join(base, 'annotations_detectron2')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
