"""The main job (`make demo`, `make demo-full`): ScaleDet trained on several synthetic datasets at once, on the CPU.

Generates a synthetic preset, builds the unified label space and its offline text embeddings, trains ScaleDet,
evaluates each upstream set with its own vocabulary and the downstream sets zero-shot, fine-tunes it on each
downstream set and evaluates again, and writes the AP table (markdown + JSON), images with predicted boxes and
names, and the training curves to ``--output``.

    python tools/scaledet_demo.py                      # quick: minutes (quickstart preset, 300 iterations)
    python tools/scaledet_demo.py --full               # the long run (demo preset, 1000 iterations)
    python tools/scaledet_demo.py --no-finetune train.max_iter=100
    python tools/scaledet_demo.py --finetune-settings full,10 --finetune-seeds 3,30

Extra ``key=value`` arguments override the config. See projects/ScaleDet/scaledet/main_job.py.
"""

import argparse
from pathlib import Path

from projects.ScaleDet.scaledet.main_job import DEMO_CONFIG, QUICKSTART_CONFIG, run_main_job
from unidet2.engine.cli import reject_renamed_flags
from unidet2.evaluation.odinw import parse_finetune_settings

# the two runs of the main job
PROFILES = {
    "quick": {"config": QUICKSTART_CONFIG, "preset": "quickstart", "data_root": "datasets/synthetic_quickstart",
              "output": "output/scaledet_quickstart", "finetune": "10", "finetune_epochs": 3.0},
    "full": {"config": DEMO_CONFIG, "preset": "demo", "data_root": "datasets/synthetic_demo",
             "output": "output/scaledet_demo", "finetune": "full,10", "finetune_epochs": 3.0},
}


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the long run (`make demo-full`) instead of the quick one")
    parser.add_argument("--config-file", default=None, help="LazyConfig (default: the profile's)")
    parser.add_argument("--output", type=Path, default=None, help="default: the profile's output folder")
    parser.add_argument("--data-root", type=Path, default=None, help="synthetic data, generated there if missing")
    parser.add_argument("--preset", default=None, help="synthetic preset generated into --data-root if missing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default="minilm", help="text encoder (minilm offline; openclip on a cluster)")
    parser.add_argument("--images", type=int, default=2, help="visualised images per test dataset")
    parser.add_argument("--finetune-settings", default=None, metavar="S[,S...]",
                        help="downstream fine-tuning settings, comma-separated: 'full' and/or shots per class "
                             "(quick default '10', full default 'full,10')")
    parser.add_argument("--no-finetune", action="store_true", help="skip the downstream fine-tuning step")
    parser.add_argument("--finetune-epochs", type=float, default=None, help="passes over each downstream train set")
    parser.add_argument("--finetune-seeds", default="3", metavar="N[,N...]", help="seeds of the k-shot settings")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    reject_renamed_flags(parser, {"--config": "--config-file",
                                  "--finetune": "--finetune-settings S[,S...] (or --no-finetune to skip)"})
    return parser


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    profile = PROFILES["full" if args.full else "quick"]
    finetune = []
    if not args.no_finetune:
        try:
            finetune = parse_finetune_settings(_comma_list(args.finetune_settings or profile["finetune"]))
            seeds = [int(seed) for seed in _comma_list(args.finetune_seeds)]
        except ValueError as error:
            parser.error(f"--finetune-settings / --finetune-seeds: {error}")
    else:
        seeds = []
    output = args.output or Path(profile["output"])
    result = run_main_job(output, args.data_root or Path(profile["data_root"]), seed=args.seed,
                          preset=args.preset or profile["preset"], encoder=args.encoder,
                          images_per_dataset=args.images, config=args.config_file or profile["config"],
                          overrides=args.overrides, finetune=finetune, finetune_seeds=seeds or (3,),
                          finetune_epochs=args.finetune_epochs or profile["finetune_epochs"])
    print(f"\n{result['table']}\n")
    print(f"Wrote {output}/ap_table.md, ap_table.json, training_curves.png and visualizations/ "
          f"in {result['wall_seconds'] / 60:.1f} min (training process peak RSS {result['peak_rss_gib']:.2f} GiB).")
    return result


if __name__ == "__main__":
    main()
