"""Train or evaluate a unidet2 LazyConfig on this machine, in one or several processes.

    python tools/train_net.py --config-file projects/<Method>/configs/<cfg>.py [key=value ...]
    python tools/train_net.py --config-file CFG --num-gpus 8                  # 8 processes (gloo on CPU)
    python tools/train_net.py --config-file CFG --resume                      # continue in train.output_dir
    python tools/train_net.py --config-file CFG --eval-only train.init_checkpoint=model_final.pth

Overrides use Hydra syntax and must name existing keys (``+key=value`` adds one). The work is done by
``unidet2.engine.run.main``, which the SLURM launcher (``python -m launch.submit``) calls in-process.
"""

from __future__ import annotations

import argparse

from detectron2.engine import default_argument_parser

from unidet2.engine.cli import reject_renamed_flags
from unidet2.engine.run import launch_from_args
from unidet2.engine.run import main as run_main


def main(args: argparse.Namespace) -> dict:
    return run_main(args.config_file, args.opts, resume=args.resume, eval_only=args.eval_only, args=args)


def cli() -> None:
    parser = default_argument_parser()
    reject_renamed_flags(parser)
    launch_from_args(main, parser, parser.parse_args())


if __name__ == "__main__":
    cli()
