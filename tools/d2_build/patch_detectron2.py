"""Make detectron2 0.6's Python tree (PyPI ``pb1-detectron2==0.6``) work on torch 2.x, numpy 2, Pillow >= 10,
setuptools without ``pkg_resources`` and Python 3.11.

Each edit is a literal replacement with the number of places it must match, so an edit that no longer
fits (another detectron2 version, say) fails loudly with the file and the text it looked for. Applying
the edits twice is a no-op. Usage::

    python tools/d2_build/patch_detectron2.py TREE      # TREE holds detectron2/
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Written into the tree so that `detectron2.__version__` and the environment report tell this build apart.
PATCH_VERSION = "0.6+purepy.unidet2.1"


class PatchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Edit:
    path: str  # relative to the tree root
    old: str
    new: str
    count: int = 1  # how many times `old` must occur in an unpatched file
    why: str = ""


_DEFORM_CONV_VIA_TORCHVISION = '''def deform_conv(input, offset, weight, stride=1, padding=0, dilation=1, groups=1,
                deformable_groups=1, im2col_step=64):
    # unidet2: torchvision's op has autograd on CPU and CUDA and reads groups and offset groups from the
    # tensor shapes; v0.6's CPU path refused deformable_groups != 1 and had no CPU backward.
    if input is not None and input.dim() != 4:
        raise ValueError("Expected 4D tensor as input, got {}D tensor instead.".format(input.dim()))
    return deform_conv2d(input, offset, weight, stride=stride, padding=padding, dilation=dilation)


def modulated_deform_conv(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1,
                          groups=1, deformable_groups=1):
    return deform_conv2d(input, offset, weight, bias=bias, stride=stride, padding=padding,
                         dilation=dilation, mask=mask)
'''

EDITS: tuple[Edit, ...] = (
    # --- numpy >= 1.24 removed the np.int / np.float / np.str / np.bool aliases
    Edit("detectron2/evaluation/sem_seg_evaluation.py", "pred = np.array(output, dtype=np.int)",
         "pred = output.numpy().astype(np.int64)", 1, "numpy 2 (np.int; __array__ without copy keyword)"),
    Edit("detectron2/evaluation/sem_seg_evaluation.py", "dtype=np.int)", "dtype=np.int64)", 1, "numpy 2"),
    Edit("detectron2/evaluation/sem_seg_evaluation.py", "dtype=np.float)", "dtype=np.float64)", 2, "numpy 2"),
    Edit("detectron2/evaluation/sem_seg_evaluation.py", ".astype(np.float)", ".astype(np.float64)", 3, "numpy 2"),
    Edit("detectron2/data/datasets/pascal_voc.py", "dtype=np.str)", "dtype=str)", 1, "numpy 2"),
    Edit("detectron2/data/build.py", "dtype=np.int)", "dtype=np.int64)", 1, "numpy 2"),
    Edit("detectron2/data/build.py", "dtype=np.int\n", "dtype=np.int64\n", 1,
         "numpy 2: the class histogram silently vanished (AttributeError caught by its caller)"),
    Edit("detectron2/structures/masks.py", ".astype(np.bool)", ".astype(bool)", 2, "numpy 1.24-1.26"),
    Edit("detectron2/structures/masks.py", "dtype=np.bool)", "dtype=bool)", 1, "numpy 1.24-1.26"),
    Edit("detectron2/utils/visualizer.py", ".astype(np.bool)", ".astype(bool)", 3, "numpy 1.24-1.26"),
    Edit("detectron2/utils/video_visualizer.py", "dtype=np.bool)", "dtype=bool)", 1, "numpy 1.24-1.26"),
    Edit("detectron2/evaluation/pascal_voc_evaluation.py", ".astype(np.bool)", ".astype(bool)", 2,
         "numpy 1.24-1.26"),
    Edit("detectron2/evaluation/coco_evaluation.py", 'np.array(mask[:, :, None], order="F", dtype="uint8")',
         'np.asfortranarray(mask[:, :, None].numpy().astype("uint8"))', 1,
         "numpy 2 deprecates __array__ without the copy keyword"),
    # --- Pillow >= 10 removed Image.LINEAR (evaluated at import time as a default argument)
    Edit("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR", 1, "Pillow 10"),
    # --- setuptools >= 81 ships no pkg_resources
    Edit("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "import importlib.resources\n", 1,
         "setuptools without pkg_resources"),
    Edit("detectron2/model_zoo/model_zoo.py",
         'cfg_file = pkg_resources.resource_filename(\n'
         '        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
         'cfg_file = str(importlib.resources.files("detectron2.model_zoo").joinpath("configs", config_path))',
         1, "setuptools without pkg_resources"),
    # --- torch 2 ships no caffe2: import the caffe2 exporter only where caffe2 exists
    Edit("detectron2/export/__init__.py", "from .api import *\n",
         "try:\n    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401\n"
         "except ImportError:  # torch >= 2 has no caffe2: keep TracingAdapter and scripting usable\n"
         "    pass\nelse:\n    from .api import *\n", 1, "torch 2: no caffe2"),
    # --- torch 2 schedulers derive from LRScheduler: their state was silently not checkpointed
    Edit("detectron2/engine/hooks.py", "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
         "isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler)", 2,
         "torch 2: scheduler state in checkpoints"),
    Edit("detectron2/engine/train_loop.py",
         "from torch.cuda.amp import GradScaler\n\n            grad_scaler = GradScaler()",
         "grad_scaler = torch.amp.GradScaler(\"cuda\")", 1, "torch 2 deprecation"),
    Edit("detectron2/engine/train_loop.py", "from torch.cuda.amp import autocast\n", "", 1, "torch 2 deprecation"),
    Edit("detectron2/engine/train_loop.py", "with autocast():", 'with torch.autocast("cuda"):', 1,
         "torch 2 deprecation"),
    Edit("detectron2/modeling/anchor_generator.py", "torch.meshgrid(shifts_y, shifts_x)",
         'torch.meshgrid(shifts_y, shifts_x, indexing="ij")', 1, "torch 2 deprecation"),
    # --- Python 3.11: random.sample() no longer takes a set (MapDataset's retry path after a None)
    Edit("detectron2/data/common.py", "self._rng.sample(self._fallback_candidates, k=1)",
         "self._rng.sample(sorted(self._fallback_candidates), k=1)", 1, "Python 3.11"),
    # --- deformable convolution through torchvision (the _C functions stay for direct callers)
    Edit("detectron2/layers/deform_conv.py",
         "deform_conv = _DeformConv.apply\nmodulated_deform_conv = _ModulatedDeformConv.apply\n",
         _DEFORM_CONV_VIA_TORCHVISION, 1, "no compiled DCN; CPU training"),
    # --- logger.warn is deprecated
    Edit("detectron2/evaluation/coco_evaluation.py", "logger.warn(", "logger.warning(", 2, "deprecation"),
    Edit("detectron2/evaluation/lvis_evaluation.py", "logger.warn(", "logger.warning(", 2, "deprecation"),
    Edit("detectron2/evaluation/sem_seg_evaluation.py", "logger.warn(", "logger.warning(", 2, "deprecation"),
    Edit("detectron2/engine/defaults.py", "logger.warn(", "logger.warning(", 1, "deprecation"),
    # --- version string
    Edit("detectron2/__init__.py", '__version__ = "0.6"', f'__version__ = "{PATCH_VERSION}"', 1, "identify the build"),
)

# lvis-api 0.5.3 (the latest release) calls np.float in LVISEval.accumulate. The install step fixes the
# installed package's source with this edit (contained to that file; no global numpy alias).
LVIS_EDITS: tuple[Edit, ...] = (
    Edit("lvis/eval.py", ".astype(dtype=np.float)", ".astype(dtype=np.float64)", 2, "numpy 2"),
)


def apply_edits(root: Path, edits=EDITS) -> list[str]:
    """Apply ``edits`` under ``root``; returns the files changed. Raises PatchError on any mismatch."""
    changed = []
    by_file: dict[str, list[Edit]] = {}
    for edit in edits:
        by_file.setdefault(edit.path, []).append(edit)
    for rel, file_edits in by_file.items():
        path = root / rel
        if not path.is_file():
            raise PatchError(f"{path}: file to patch not found (is {root} a detectron2 0.6 tree?)")
        text = original = path.read_text()
        for edit in file_edits:
            found = text.count(edit.old)
            if found == edit.count:
                text = text.replace(edit.old, edit.new)
            elif found == 0 and edit.new and edit.new in text:
                continue  # applied before
            else:
                raise PatchError(
                    f"{path}: expected {edit.count} occurrence(s) of {edit.old!r} ({edit.why}), found {found}"
                )
        if text != original:
            path.write_text(text)
            changed.append(rel)
    return changed


def patch_tree(root: Path) -> list[str]:
    """Patch a detectron2 0.6 tree in place: source edits, the pure PyTorch ``_C.py``, the wheel's setup.py."""
    root = Path(root)
    changed = apply_edits(root)
    shutil.copyfile(HERE / "_C.py", root / "detectron2" / "_C.py")
    shutil.copyfile(HERE / "setup_purepy.py", root / "setup.py")
    # the sdist's egg-info carries the original requirements (black==21.4b2, future, pydot, ...)
    shutil.rmtree(root / "pb1_detectron2.egg-info", ignore_errors=True)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", type=Path, help="extracted pb1-detectron2-0.6 folder (holds detectron2/)")
    args = parser.parse_args(argv)
    changed = patch_tree(args.tree)
    print(f"patched {len(changed)} files in {args.tree}")


if __name__ == "__main__":
    main()
