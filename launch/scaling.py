"""A data-parallel scaling model: measured model sizes and all-reduce bandwidth in, predicted images/s out.

    python -m launch.scaling models --config-file CFG [CFG ...]      gradient bytes (and CPU step time of R50)
    python -m launch.scaling allreduce --megabytes 64               run under srun on N tasks: bus bandwidth
    python -m launch.scaling predict --gradient-mb G ...            images/s for 1..64 nodes, table + PNG

The model (see launch/README.md): each GPU takes ``step_s`` seconds for forward + backward on its images; DDP
all-reduces the gradients in buckets while the backward pass still runs, so only the part of the all-reduce
that does not fit under the backward pass (``backward_fraction`` of the step), plus the last bucket, which can
only start once backward is done, adds to the step. A ring all-reduce over ``n`` GPUs moves ``2 (n - 1) / n``
times the gradient bytes through the slowest link of the ring: NVLink inside one node, the network between nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

__all__ = ["predict_images_per_s", "ring_allreduce_s"]


def ring_allreduce_s(gradient_bytes: float, num_gpus: int, bandwidth_bytes_s: float) -> float:
    """Seconds of one ring all-reduce of ``gradient_bytes`` over ``num_gpus`` at ``bandwidth_bytes_s`` per link."""
    if num_gpus <= 1:
        return 0.0
    return 2 * (num_gpus - 1) / num_gpus * gradient_bytes / bandwidth_bytes_s


def predict_images_per_s(
    *,
    nodes: int,
    gpus_per_node: int,
    images_per_gpu: int,
    step_s: float,
    gradient_bytes: float,
    intra_node_bytes_s: float,
    inter_node_bytes_s: float,
    backward_fraction: float = 2 / 3,
    bucket_bytes: float = 25 * 2**20,
) -> dict[str, float]:
    """Step time and images/s of ``nodes`` x ``gpus_per_node`` GPUs under the model of this module's docstring."""
    num_gpus = nodes * gpus_per_node
    bandwidth = intra_node_bytes_s if nodes == 1 else inter_node_bytes_s
    allreduce = ring_allreduce_s(gradient_bytes, num_gpus, bandwidth)
    last_bucket = ring_allreduce_s(min(bucket_bytes, gradient_bytes), num_gpus, bandwidth)
    exposed = max(0.0, allreduce - backward_fraction * step_s) + last_bucket if num_gpus > 1 else 0.0
    step = step_s + exposed
    return {
        "nodes": nodes,
        "gpus": num_gpus,
        "allreduce_s": allreduce,
        "exposed_comm_s": exposed,
        "step_s": step,
        "images_per_s": num_gpus * images_per_gpu / step,
        "efficiency": step_s / step,
    }


def _models(args: argparse.Namespace) -> None:
    import torch
    from detectron2.config import instantiate

    from unidet2.engine.config import load_config

    torch.set_num_threads(1)
    rows = []
    for config_file in args.config_file:
        cfg = load_config(config_file, [])
        try:
            model = instantiate(cfg.model)
        except Exception as error:  # a config that needs files this machine lacks: say so, go on
            rows.append({"config": config_file, "error": f"{type(error).__name__}: {error}"[:200]})
            continue
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"config": config_file, "trainable_params": trainable, "gradient_bytes_fp32": 4 * trainable})
    # CPU step time of the shared part, the ResNet-50 backbone (forward + backward).
    from detectron2.modeling.backbone import BasicStem, ResNet

    stem = BasicStem(in_channels=3, out_channels=64, norm="BN")
    stages = ResNet.make_default_stages(50, norm="BN")
    backbone = ResNet(stem, stages, out_features=["res5"])
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        backbone(images)["res5"].mean().backward()
        times.append(time.perf_counter() - start)
    step = {
        "what": "ResNet-50 forward + backward, CPU, 1 thread (measured)",
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "step_s": sorted(times[1:])[len(times[1:]) // 2],
        "cpu": os.uname().machine,
    }
    print(json.dumps({"models": rows, "backbone_step": step}, indent=2))


def _allreduce(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    master = os.environ.get("MASTER_ADDR") or os.environ["SLURM_JOB_NODELIST"].split(",")[0]
    dist.init_process_group("gloo", init_method=f"tcp://{master}:{args.port}", rank=rank, world_size=world)
    tensor = torch.ones(int(args.megabytes * 2**20 / 4))
    dist.all_reduce(tensor)  # warm-up: connections
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(tensor)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    size = tensor.numel() * 4
    if rank == 0:
        print(json.dumps({
            "tasks": world, "bytes": size, "median_s": seconds,
            # Bus bandwidth: what each link carries per second in a ring all-reduce.
            "bus_bandwidth_bytes_s": 2 * (world - 1) / world * size / seconds,
        }))
    dist.destroy_process_group()


def _predict(args: argparse.Namespace) -> None:
    curves = {}
    for inter_node_gbs in args.inter_node_gbs:
        curves[inter_node_gbs] = [
            predict_images_per_s(
                nodes=nodes, gpus_per_node=args.gpus_per_node, images_per_gpu=args.images_per_gpu,
                step_s=args.step_s, gradient_bytes=args.gradient_mb * 2**20,
                intra_node_bytes_s=args.intra_node_gbs * 1e9, inter_node_bytes_s=inter_node_gbs * 1e9,
                backward_fraction=args.backward_fraction,
            )
            for nodes in (1, 2, 4, 8, 16, 32, 64)
        ]
    for inter_node_gbs, rows in curves.items():
        print(f"\nbetween nodes {inter_node_gbs:g} GB/s, inside a node {args.intra_node_gbs:g} GB/s\n")
        print("| nodes | GPUs | all-reduce (s) | exposed (s) | step (s) | images/s | efficiency |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['nodes']} | {row['gpus']} | {row['allreduce_s']:.3f} | {row['exposed_comm_s']:.3f} | "
                  f"{row['step_s']:.3f} | {row['images_per_s']:.0f} | {row['efficiency']:.2f} |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for inter_node_gbs, rows in curves.items():
            ax.plot([r["nodes"] for r in rows], [r["images_per_s"] for r in rows], "o-",
                    label=f"{inter_node_gbs:g} GB/s between nodes")
        rows = next(iter(curves.values()))
        ax.plot([r["nodes"] for r in rows], [rows[0]["images_per_s"] * r["nodes"] for r in rows], "k--",
                label="linear from 1 node")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"nodes ({args.gpus_per_node} GPUs each)")
        ax.set_ylabel("images / s (predicted)")
        ax.set_title(args.title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m launch.scaling", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="gradient bytes of configs; CPU step time of a ResNet-50")
    models.add_argument("--config-file", nargs="+", required=True)
    models.add_argument("--batch-size", type=int, default=2)
    models.add_argument("--image-size", type=int, default=256)
    models.add_argument("--repeats", type=int, default=3)
    allreduce = sub.add_parser("allreduce", help="gloo all-reduce bus bandwidth (run under srun)")
    allreduce.add_argument("--megabytes", type=float, default=64)
    allreduce.add_argument("--repeats", type=int, default=5)
    allreduce.add_argument("--port", type=int, default=29517)
    predict = sub.add_parser("predict", help="images/s for 1..64 nodes")
    predict.add_argument("--gradient-mb", type=float, required=True)
    predict.add_argument("--step-s", type=float, required=True, help="forward + backward of one GPU")
    predict.add_argument("--images-per-gpu", type=int, default=2)
    predict.add_argument("--gpus-per-node", type=int, default=8)
    predict.add_argument("--intra-node-gbs", type=float, default=150.0, help="NVLink bus bandwidth, GB/s")
    predict.add_argument("--inter-node-gbs", type=float, nargs="+", default=[20.0],
                         help="network bus bandwidth(s), GB/s: one curve each")
    predict.add_argument("--backward-fraction", type=float, default=2 / 3)
    predict.add_argument("--png")
    predict.add_argument("--title", default="predicted data-parallel throughput")
    args = parser.parse_args(argv)
    {"models": _models, "allreduce": _allreduce, "predict": _predict}[args.command](args)


if __name__ == "__main__":
    main()
