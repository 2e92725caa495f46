"""setup.py of the pure-Python detectron2 wheel (written into the patched pb1-detectron2 0.6 tree).

Differences from the sdist's own setup.py: no C++/CUDA extension (``detectron2/_C.py`` replaces it), the
model-zoo configs are collected from ``detectron2/model_zoo/configs`` (the sdist's globbing of ``configs/``
found none of them), and the requirements drop black==21.4b2, future and pydot (caffe2 export only) and
let iopath 0.1.10 in.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
VERSION = (ROOT / "detectron2" / "__init__.py").read_text().split('__version__ = "')[1].split('"')[0]

# detectron2 installs these small projects as detectron2.projects.*, as its own setup.py does
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}
ZOO = ROOT / "detectron2" / "model_zoo"
CONFIGS = sorted(str(p.relative_to(ZOO)) for p in ZOO.glob("configs/**/*") if p.suffix in (".yaml", ".py"))

setup(
    name="pb1-detectron2",
    version=VERSION,
    description="detectron2 0.6 Python tree patched by unidet2 for torch 2 / numpy 2 (pure PyTorch ops)",
    license="Apache-2.0",
    packages=find_packages(exclude=("configs", "tests*", "tools*")) + list(PROJECTS),
    package_dir=PROJECTS,
    package_data={"detectron2.model_zoo": CONFIGS},
    python_requires=">=3.8",
    install_requires=[
        "torch>=1.8",
        "torchvision>=0.23",  # native rotated-box IoU
        "Pillow>=7.1",
        "matplotlib",
        "pycocotools>=2.0.2",
        "termcolor>=1.1",
        "yacs>=0.1.8",
        "tabulate",
        "cloudpickle",
        "tqdm>4.29.0",
        "tensorboard",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.11",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
    ],
    extras_require={"all": ["shapely", "psutil", "black", "lvis", "faster-coco-eval"]},
)
