#!/usr/bin/env python
"""Convert OpenImages' official CSVs to the COCO-format jsons the ``openimages_<version>_<split>`` datasets read.

    python tools/datasets/convert_openimages.py --version challenge2019 --split train val
    python tools/datasets/convert_openimages.py --version v6 --split train val test --root /data/datasets

Inputs and output follow DATASETS.md (OpenImages): images under ``<root>/openimages/{train,validation,test}/``,
the CSVs under ``<root>/openimages/annotations/``; each split is written to
``<root>/openimages/annotations/openimages_<version>_<split>_bbox.json`` (image sizes are read from the images,
so the conversion reads every image header once; the ``..._csv`` datasets read the CSVs directly instead).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from unidet2.data.datasets.common import get_datasets_root, resolve_path
from unidet2.data.datasets.openimages import (
    OPENIMAGES_VERSIONS,
    convert_openimages_csv_to_coco_json,
    openimages_json_relpath,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, choices=sorted(OPENIMAGES_VERSIONS))
    parser.add_argument("--split", nargs="+", required=True, help="splits to convert (train, val, test)")
    parser.add_argument("--root", default=None, help="dataset root (default: $UNIDET2_DATASETS or ./datasets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = OPENIMAGES_VERSIONS[args.version]
    unknown = [s for s in args.split if s not in spec["splits"]]
    if unknown:
        parser.error(f"version {args.version} has splits {sorted(spec['splits'])}, not {unknown}")
    root = args.root or get_datasets_root()
    for split in args.split:
        image_dir, bbox_csv, image_ids_csv, labels_csv = spec["splits"][split]
        counts = convert_openimages_csv_to_coco_json(
            resolve_path(root, openimages_json_relpath(args.version, split)),
            resolve_path(root, bbox_csv),
            resolve_path(root, spec["classes"]),
            resolve_path(root, image_dir),
            image_ids_csv=resolve_path(root, image_ids_csv) if image_ids_csv else None,
            image_labels_csv=resolve_path(root, labels_csv) if labels_csv else None,
        )
        print(f"openimages_{args.version}_{split}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
