"""Environment report: ``python -m unidet2.env`` (also ``make env``).

Prints the versions that matter, which detectron2 is installed (a git build with compiled ops, or the
patched 0.6 Python tree with unidet2's pure PyTorch ``_C``), which ops are compiled and which fall back,
and the CUDA devices.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys

PACKAGES = (
    "torch", "torchvision", "numpy", "Pillow", "opencv-python-headless", "fvcore", "iopath", "pycocotools",
    "lvis", "faster-coco-eval", "open_clip_torch", "sentence-transformers", "submitit", "scipy", "torchmetrics",
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def detectron2_info() -> dict:
    """Where detectron2 comes from and whether its ops are compiled."""
    info: dict = {"installed": False}
    try:
        import detectron2
    except ImportError as e:
        info["error"] = str(e)
        return info
    info.update(installed=True, version=detectron2.__version__, path=detectron2.__path__[0])
    for dist_name in ("detectron2", "pb1-detectron2"):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        info["distribution"] = f"{dist_name} {dist.version}"
        direct_url = dist.read_text("direct_url.json")
        if direct_url:
            url = json.loads(direct_url)
            vcs = url.get("vcs_info", {})
            info["source"] = url.get("url", "")
            if vcs:
                info["git_commit"] = vcs.get("commit_id", "")
        break
    try:
        from detectron2 import _C
    except ImportError as e:
        info["ops"] = f"missing: {e}"
        return info
    pure = getattr(_C, "IS_PURE_PYTHON", False)
    info["ops"] = (
        "pure PyTorch fallbacks (unidet2 detectron2/_C.py): deform conv via torchvision, rotated IoU via "
        "torchvision, rotated NMS and ROIAlignRotated in PyTorch, fast COCOeval via faster-coco-eval"
        if pure
        else f"compiled extension {getattr(_C, '__file__', '?')}"
    )
    info["tree"] = "detectron2 0.6 Python tree, patched by unidet2" if pure else "full build (git source)"
    return info


def ops_info() -> dict:
    """unidet2's own ops: compiled/accelerated path available, or the PyTorch fallback."""
    report = {}
    try:
        ms_deform = importlib.import_module("unidet2.modeling.ms_deform_attn")
    except ImportError:
        return report
    describe = getattr(ms_deform, "available_backends", None)
    if describe is not None:
        report["ms_deform_attn"] = describe()
    return report


def cuda_info() -> dict:
    import torch

    info = {"available": torch.cuda.is_available(), "torch_cuda_build": torch.version.cuda}
    if info["available"]:
        info["devices"] = []
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            info["devices"].append(f"{i}: {torch.cuda.get_device_name(i)} (capability {major}.{minor})")
    return info


def collect() -> dict:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "packages": {name: _version(name) for name in PACKAGES},
        "detectron2": detectron2_info(),
        "unidet2_ops": ops_info(),
        "cuda": cuda_info(),
    }


def format_report(report: dict) -> str:
    lines = [f"{'python':<28}{report['python']}", f"{'platform':<28}{report['platform']}",
             f"{'torch CPU threads':<28}{report['cpu_threads']}"]
    lines += [f"{name:<28}{version}" for name, version in report["packages"].items()]
    for key, value in report["detectron2"].items():
        lines.append(f"{'detectron2 ' + key:<28}{value}")
    for key, value in report["unidet2_ops"].items():
        lines.append(f"{'unidet2 op ' + key:<28}{value}")
    cuda = report["cuda"]
    lines.append(f"{'CUDA available':<28}{cuda['available']} (torch built with CUDA {cuda['torch_cuda_build']})")
    lines += [f"{'  GPU':<28}{d}" for d in cuda.get("devices", [])]
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="unidet2 environment report")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))


if __name__ == "__main__":
    main()
