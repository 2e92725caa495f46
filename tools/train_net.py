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

from unidet2.engine import launch, load_config
from unidet2.engine.run import main as run_main
from unidet2.engine.run import resolve_device


def main(args: argparse.Namespace) -> dict:
    return run_main(args.config_file, args.opts, resume=args.resume, eval_only=args.eval_only, args=args)


def cli() -> None:
    parser = default_argument_parser()
    args = parser.parse_args()
    if not args.config_file:
        parser.error("--config-file is required")
    # Load once before spawning workers, so a wrong key or value fails here with a single clear message.
    try:
        cfg = load_config(args.config_file, args.opts)
    except (KeyError, ValueError) as error:
        parser.error(error.args[0] if error.args else str(error))
    backend = "nccl" if resolve_device(cfg.train.device).startswith("cuda") else "gloo"
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=backend,
    )


if __name__ == "__main__":
    cli()
