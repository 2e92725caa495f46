#!/usr/bin/env python
"""Build the text-embedding classifier (and optionally the unified label space and its similarity matrix).

Examples:
    # registered datasets, ScaleDet concatenated label space, MiniLM (offline default)
    python tools/build_text_embeddings.py --datasets coco_2017_train lvis_v1_train --out out/coco_lvis.npy \
        --label-space out/coco_lvis_labels.json --similarity out/coco_lvis_sim.npy
    # a COCO/LVIS-format json (categories sorted by id; LVIS "synonyms" are averaged), CLIP prompt ensemble
    python tools/build_text_embeddings.py --json annotations/instances_val2017.json --encoder openclip \
        --model ViT-B-32 --pretrained laion2b_s34b_b79k --prompt-ensemble --out coco_clip.npy
    # an ad-hoc vocabulary
    python tools/build_text_embeddings.py --vocabulary "person,car,traffic_light" --out custom.npy
    # several jsons: name each dataset (a bare path is named after its file stem; equal names are refused)
    python tools/build_text_embeddings.py --json coco=coco/train.json lvis=lvis/train.json --out coco_lvis.npy
    # the training sets of a config (its dataset_registration runs first); --out / --label-space default to the
    # config's embeddings_file / label-map path, the encoder to its dataloader.vocabulary
    python tools/build_text_embeddings.py --config-file projects/ScaleDet/configs/scaledet_tiny_synthetic.py

Writes FILE.npy (float32 C×D, unit rows, row = unified id) and FILE.json (sidecar: encoder, prompts, names,
content hash). Embeddings are cached (--cache-dir, default $UNIDET2_CACHE/text_embeddings or
./.cache/text_embeddings), so re-running on the same vocabulary does not encode again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unidet2.data.label_space import LABEL_SPACE_MODES, SIMILARITY_NORMALIZATIONS, UnifiedLabelSpace
from unidet2.data.text_embeddings import (
    DEFAULT_PROMPT,
    PROMPT_ENSEMBLE,
    TextEncoderUnavailableError,
    available_text_encoders,
    get_text_embeddings,
    save_text_embeddings,
)
from unidet2.modeling.similarity import similarity_options_record

logger = logging.getLogger("build_text_embeddings")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--datasets", nargs="+", metavar="NAME", help="registered dataset names (in order)")
    source.add_argument("--vocabulary", help='comma-separated class names, e.g. "person,car,traffic_light"')
    source.add_argument(
        "--json",
        nargs="+",
        metavar="[NAME=]FILE",
        help="COCO/LVIS-format annotation json(s), each optionally named NAME=FILE (default name: the file stem)",
    )
    source.add_argument(
        "--config-file",
        metavar="CFG",
        help="a LazyConfig: register its datasets and build the label space of its training sets "
        "(dataloader.train.dataset_names); key=value overrides may follow",
    )
    parser.add_argument("--names", nargs="+", metavar="NAME", help="dataset names for the --json files, in order")
    parser.add_argument("--name", default="custom", help="dataset name for --vocabulary (default: custom)")
    parser.add_argument("--mode", default="concat", choices=[m for m in LABEL_SPACE_MODES if m != "custom"])
    parser.add_argument(
        "--encoder",
        choices=available_text_encoders(),
        help="default: the config's dataloader.vocabulary encoder with --config-file, else minilm",
    )
    parser.add_argument("--model", help="encoder model (openclip: e.g. ViT-B-32; minilm: a local model dir)")
    parser.add_argument("--pretrained", help="openclip pretrained tag (e.g. laion2b_s34b_b79k) or checkpoint file")
    parser.add_argument("--seed", type=int, default=0, help="openclip_random initialisation seed")
    parser.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt",
        action="append",
        metavar="TEMPLATE",
        help=f'prompt template(s) with "{{}}" (default "{DEFAULT_PROMPT}")',
    )
    prompt.add_argument(
        "--prompt-ensemble",
        action="store_true",
        help=f"average over the {len(PROMPT_ENSEMBLE)}-template ensemble",
    )
    parser.add_argument("--no-synonyms", action="store_true", help="ignore dataset synonyms")
    parser.add_argument(
        "--out",
        help="output .npy (a sidecar .json is written next to it); with --config-file default: the config's "
        "*embeddings_file",
    )
    parser.add_argument("--label-space", metavar="JSON", help="also write the unified label-space json")
    parser.add_argument("--similarity", metavar="NPY", help="also write the label similarity matrix S (float32)")
    parser.add_argument("--similarity-normalization", default="minmax_row", choices=SIMILARITY_NORMALIZATIONS)
    parser.add_argument("--temperature", type=float, default=0.05, help="softmax_row temperature")
    parser.add_argument(
        "--symmetrize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="symmetrise S as (S+S^T)/2 (default: the rule a model deriving S uses: yes for minmax_row, no otherwise)",
    )
    parser.add_argument("--topk", type=int, help="keep the k most similar other labels per row of S")
    parser.add_argument("--threshold", type=float, help="zero entries of S below this value")
    parser.add_argument("--cache-dir", help="embedding cache directory")
    parser.add_argument(
        "--weights-cache-dir", help="openclip: where hub weights are cached/downloaded (default: the HF cache)"
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides of --config-file")
    args = parser.parse_args(argv)
    if args.opts and not args.config_file:
        parser.error(f"key=value overrides {args.opts} need --config-file")
    if args.names and not args.json:
        parser.error("--names names the --json files; use --name for --vocabulary")
    if args.config_file:
        _apply_config_defaults(args)
    elif args.encoder is None:
        args.encoder = "minilm"
    if args.out is None:
        parser.error("--out is required (with --config-file only when the config names no embeddings_file)")
    if not args.out.endswith(".npy"):
        parser.error(f"--out must end with .npy, got {args.out}")
    if args.encoder != "openclip_random" and args.seed != 0:
        parser.error("--seed only applies to --encoder openclip_random")
    if args.encoder != "openclip" and args.weights_cache_dir:
        parser.error("--weights-cache-dir only applies to --encoder openclip")
    return args


def _load_config(args: argparse.Namespace):
    """The config of --config-file with its overrides, its datasets registered (as the training tools do)."""
    if getattr(args, "_config", None) is None:
        from unidet2.engine.config import load_config
        from unidet2.engine.run import register_config_datasets

        try:
            cfg = load_config(args.config_file, args.opts)
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"error: {exc.args[0] if exc.args else exc}") from exc
        register_config_datasets(cfg)
        args._config = cfg
    return args._config


def _apply_config_defaults(args: argparse.Namespace) -> None:
    """--out, --label-space and the encoder from the config, where not given on the command line."""
    from omegaconf import OmegaConf

    from unidet2.data.check import config_embeddings_files

    cfg = _load_config(args)
    plain = OmegaConf.to_container(cfg, resolve=True)
    if args.out is None:
        paths = sorted(set(config_embeddings_files(plain).values()))
        if len(paths) == 1:
            args.out = paths[0]
            logger.info("--out from the config: %s", args.out)
        elif paths:
            raise SystemExit(f"error: the config names several embeddings files {paths}; pick one with --out")
    if args.label_space is None:
        label_map = (((plain.get("dataloader") or {}).get("train") or {}).get("mapper") or {}).get("label_map")
        if isinstance(label_map, dict) and isinstance(label_map.get("path"), str):
            args.label_space = label_map["path"]
            logger.info("--label-space from the config: %s", args.label_space)
    vocabulary = (plain.get("dataloader") or {}).get("vocabulary") or {}
    if args.encoder is None:
        args.encoder = vocabulary.get("encoder", "minilm")
        if args.model is None and vocabulary.get("model"):
            args.model = vocabulary["model"]
        if args.pretrained is None and vocabulary.get("pretrained"):
            args.pretrained = vocabulary["pretrained"]
        prompts = vocabulary.get("prompts")
        if prompts == "ensemble" and not args.prompt:
            args.prompt_ensemble = True
        elif isinstance(prompts, str) and prompts and not args.prompt and not args.prompt_ensemble:
            args.prompt = [prompts]
        logger.info("encoder from the config's dataloader.vocabulary: %s", vocabulary or {"encoder": "minilm"})


def _named_json_sources(entries: Sequence[str], names: Sequence[str] | None) -> list[tuple[str, str]]:
    """(dataset name, json path) per --json entry: NAME=FILE, --names, or the file stem; names must be unique."""
    if names is not None and len(names) != len(entries):
        raise SystemExit(f"error: --names has {len(names)} names for {len(entries)} --json files")
    sources = []
    for index, entry in enumerate(entries):
        name, sep, path = entry.partition("=")
        if not sep or not name or os.path.isfile(entry):
            name, path = Path(entry).stem, entry
        elif names is not None:
            raise SystemExit(f"error: --json {entry!r} is named with NAME=FILE and by --names; use one of them")
        if names is not None:
            name = names[index]
        sources.append((name, path))
    seen: dict[str, str] = {}
    for name, path in sources:
        if name in seen:
            raise SystemExit(
                f"error: --json files {seen[name]!r} and {path!r} would both be dataset {name!r}; name them, "
                f"e.g. --json coco={seen[name]} lvis={path} (or --names coco lvis)"
            )
        seen[name] = path
    return sources


def _read_categories_json(path: str, name: str | None = None) -> tuple[str, list[str], list[list[str]] | None]:
    """(dataset name (default: the file stem), names sorted by category id, LVIS synonyms or None)."""
    try:
        with open(path) as f:
            categories = json.load(f)["categories"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: cannot read a 'categories' list ({exc!r})") from exc
    try:
        categories = sorted(categories, key=lambda c: c["id"])
        names = [c["name"] for c in categories]
    except (KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: every category needs 'id' and 'name' ({exc!r})") from exc
    has_synonyms = any("synonyms" in c for c in categories)
    synonyms = [list(c.get("synonyms", [])) for c in categories] if has_synonyms else None
    return name or Path(path).stem, names, synonyms


def build_label_space(args: argparse.Namespace) -> UnifiedLabelSpace:
    if args.datasets or args.config_file:
        import unidet2.data.datasets  # noqa: F401  (registers the built-in datasets)
    if args.datasets:
        space = UnifiedLabelSpace.from_dataset_names(args.datasets, mode=args.mode)
    elif args.json:
        sources = _named_json_sources(args.json, args.names)
        space = UnifiedLabelSpace([_read_categories_json(p, n) for n, p in sources], mode=args.mode)
    elif args.config_file:
        from unidet2.data.check import config_dataset_names

        train, _ = config_dataset_names(_load_config(args))
        if not train:
            raise SystemExit(f"error: {args.config_file} has no dataloader.train.dataset_names")
        space = UnifiedLabelSpace.from_dataset_names(train, mode=args.mode)
    else:
        names = [n.strip() for n in args.vocabulary.split(",") if n.strip()]
        if not names:
            raise SystemExit("--vocabulary has no class names")
        space = UnifiedLabelSpace([(args.name, names)], mode=args.mode)
    if args.no_synonyms:
        space = UnifiedLabelSpace(
            [(d, list(space.dataset(d).vocabulary)) for d in space.dataset_names], mode=space.mode
        )
    return space


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    space = build_label_space(args)
    logger.info("label space: %r", space)

    prompts = "ensemble" if args.prompt_ensemble else (args.prompt or None)
    encoder_options = {"seed": args.seed} if args.encoder == "openclip_random" else {}
    if args.weights_cache_dir:
        encoder_options["cache_dir"] = args.weights_cache_dir
    try:
        embeddings, metadata = get_text_embeddings(
            space.names,
            encoder=args.encoder,
            prompts=prompts,
            synonyms=space.synonyms,
            cache_dir=args.cache_dir,
            model=args.model,
            pretrained=args.pretrained,
            device=args.device,
            use_cache=not args.no_cache,
            return_metadata=True,
            **encoder_options,
        )
    except TextEncoderUnavailableError as exc:
        raise SystemExit(f"error: {exc}") from exc
    metadata = {**metadata, "label_space": {d: space.num_classes_of(d) for d in space.dataset_names}}
    save_text_embeddings(args.out, embeddings, metadata)
    logger.info("wrote %s %s (content hash %s)", args.out, embeddings.shape, metadata["content_hash"][:16])

    if args.label_space:
        space.save_json(args.label_space)
        logger.info("wrote label space %s", args.label_space)
    if args.similarity:
        similarity = space.similarity(
            embeddings,
            normalization=args.similarity_normalization,
            temperature=args.temperature,
            symmetrize=args.symmetrize,
            topk=args.topk,
            threshold=args.threshold,
        )
        similarity_path = Path(args.similarity)
        similarity_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = similarity_path.with_name(f".{similarity_path.stem}.tmp.npy")
        np.save(tmp, similarity)
        os.replace(tmp, similarity_path)
        similarity_path.with_suffix(".json").write_text(
            json.dumps(
                {
                    "embeddings_content_hash": metadata["content_hash"],
                    "names": space.names,
                    # the options resolved as a model resolves its own (symmetrize: the one rule of
                    # resolve_symmetrize), so that a model given this file can check that they agree
                    **similarity_options_record(
                        args.similarity_normalization,
                        symmetrize=args.symmetrize,
                        temperature=args.temperature,
                        topk=args.topk,
                        threshold=args.threshold,
                    ),
                    "shape": list(similarity.shape),
                    "dtype": "float32",
                },
                indent=1,
            )
        )
        logger.info("wrote similarity %s %s", args.similarity, similarity.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
