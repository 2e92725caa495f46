"""One stage of the local launcher, in its own process (``projects.LongTail.longtail.stages`` starts it).

    python -m projects.LongTail.longtail.run_stage --config CFG --marker DIR/STAGE_COMPLETE.json \
        [--eval-only] [--num-gpus N] -- key=value ...

Runs ``unidet2.engine.run.main`` with ``resume=True`` (an interrupted stage continues from its last checkpoint)
on ``--num-gpus`` processes, then writes the marker with the run's summary (what a SLURM stage job writes). A
process per stage keeps the stages independent: loggers, registered datasets and random states start afresh.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from unidet2.engine.checkpoint import atomic_write_text

__all__ = ["main"]

PROJECT_LOGGER = "projects.LongTail"


def _run(config: str, overrides: list[str], eval_only: bool, marker: str) -> dict[str, Any]:
    from detectron2.utils import comm

    from unidet2.engine.run import main as run_main

    # The engine routes the unidet2 / launch / detectron2 loggers into <output_dir>/log.txt; this project's too.
    if comm.is_main_process():
        handler = logging.FileHandler(os.path.join(os.path.dirname(marker), "log.txt"))
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S"))
        logging.getLogger(PROJECT_LOGGER).addHandler(handler)
    result = run_main(config, overrides, resume=True, eval_only=eval_only)
    if comm.is_main_process():
        atomic_write_text(marker, json.dumps(result, indent=2, default=float))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projects.LongTail.longtail.run_stage", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--marker", required=True, help="STAGE_COMPLETE.json to write on success")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger(PROJECT_LOGGER).setLevel(logging.INFO)

    from unidet2.engine import launch, load_config
    from unidet2.engine.run import resolve_device

    device = resolve_device(load_config(args.config, args.overrides).train.device)
    launch(
        _run,
        args.num_gpus,
        args=(args.config, list(args.overrides), args.eval_only, args.marker),
        backend="nccl" if device.startswith("cuda") else "gloo",
    )


if __name__ == "__main__":
    main()
