"""The main job (`make demo`): ScaleDet trained on several synthetic datasets at once, on the CPU.

Generates the synthetic ``demo`` preset, builds the unified label space and its offline text embeddings,
trains ScaleDet, evaluates each upstream set with its own vocabulary and the downstream sets zero-shot, fine-tunes
it on each downstream set (full train split and 10 shots per class, ``--finetune``) and evaluates again, and
writes the AP table (markdown + JSON), images with predicted boxes and names, and the training curves to
``--output``. Extra ``key=value`` arguments override the config, e.g. ``train.max_iter=300`` for a quick run.
See projects/ScaleDet/scaledet/main_job.py.
"""

import argparse
from pathlib import Path

from projects.ScaleDet.scaledet.main_job import DEMO_CONFIG, run_main_job
from unidet2.evaluation.odinw import parse_finetune_settings


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("output/scaledet_demo"))
    parser.add_argument("--data-root", type=Path, default=Path("datasets/synthetic_demo"))
    parser.add_argument("--preset", default="demo", help="synthetic preset generated into --data-root if missing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default="minilm", help="text encoder (minilm offline; openclip on a cluster)")
    parser.add_argument("--images", type=int, default=2, help="visualised images per test dataset")
    parser.add_argument("--config", default=DEMO_CONFIG)
    parser.add_argument("--finetune", nargs="*", default=["full", "10"], metavar="SETTING",
                        help="downstream fine-tuning settings: 'full' and/or shots per class (none: skip)")
    parser.add_argument("--finetune-epochs", type=float, default=3, help="passes over each downstream train set")
    parser.add_argument("--finetune-seeds", type=int, nargs="+", default=[3], help="seeds of the k-shot settings")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    try:
        finetune = parse_finetune_settings(args.finetune)
    except ValueError as error:
        parser.error(f"--finetune: {error}")
    result = run_main_job(args.output, args.data_root, seed=args.seed, preset=args.preset, encoder=args.encoder,
                          images_per_dataset=args.images, config=args.config, overrides=args.overrides,
                          finetune=finetune, finetune_seeds=args.finetune_seeds, finetune_epochs=args.finetune_epochs)
    print(f"\n{result['table']}\n")
    print(f"Wrote {args.output}/ap_table.md, ap_table.json, training_curves.png and visualizations/ "
          f"in {result['wall_seconds'] / 60:.1f} min (training process peak RSS {result['peak_rss_gib']:.2f} GiB).")
    return result


if __name__ == "__main__":
    main()
