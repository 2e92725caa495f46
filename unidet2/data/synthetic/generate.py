"""Top-level generation of a synthetic preset into a directory with a manifest.json."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from .builders import build_dataset
from .specs import PRESETS

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1


def generate_synthetic(out_dir: str | Path, seed: int = 0, preset: str = "test", overwrite: bool = False) -> Path:
    """Render every dataset of a preset into `out_dir` and write `out_dir/manifest.json`.

    Same (seed, preset) -> byte-identical files, wherever `out_dir` is (all manifest paths are relative).

    Args:
        out_dir: output directory; must be empty or absent, unless `overwrite` and it holds a previous manifest.
        seed: generation seed (pixels, layouts, which images hold which class; not the vocabularies).
        preset: one of PRESETS ("test", "demo", "longtail", "panoptic").
        overwrite: clear a previous synthetic output (a directory that holds manifest.json) first.

    Returns:
        Path of the manifest.
    """
    if preset not in PRESETS:
        raise KeyError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace a previous output")
        if not (out / MANIFEST_NAME).is_file():
            raise FileExistsError(
                f"refusing to clear {out}: it holds no {MANIFEST_NAME}, so it is not a synthetic output"
            )
        for child in sorted(out.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    entries: list[dict] = []
    for spec in tqdm(PRESETS[preset].datasets, desc=f"generating synthetic preset {preset!r}", unit="dataset",
                     dynamic_ncols=True):
        spec_start = time.perf_counter()
        new_entries = build_dataset(spec, out, seed)
        entries += new_entries
        logger.info(
            "%s: %s in %.1f s",
            spec.name,
            ", ".join(f"{e['name']} ({e['num_images']} images)" for e in new_entries),
            time.perf_counter() - spec_start,
        )
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "generator": "unidet2.data.synthetic",
        "preset": preset,
        "description": PRESETS[preset].description,
        "seed": int(seed),
        "paths": "relative to the directory holding this manifest",
        "datasets": entries,
    }
    manifest_path = out / MANIFEST_NAME
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    logger.info("preset %r (seed %d) written to %s in %.1f s", preset, seed, out, time.perf_counter() - start)
    return manifest_path


def load_manifest(manifest_path_or_dir: str | Path) -> tuple[dict, Path]:
    """Read a manifest. Returns (manifest dict, directory its relative paths are based on)."""
    path = Path(manifest_path_or_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no synthetic manifest at {path}; run `python -m unidet2.data.synthetic --out DIR`")
    with open(path) as f:
        manifest = json.load(f)
    version = manifest.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        raise ValueError(f"{path}: manifest format_version {version!r}, this code reads {MANIFEST_FORMAT_VERSION}")
    return manifest, path.parent
