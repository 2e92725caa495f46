"""The install step: the patch is strict and idempotent, and the installed detectron2 is the patched build
with its model-zoo configs, importable in a fresh interpreter with no import-order rule."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "d2_build" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


patch = _load("patch_detectron2")


def test_apply_edits_is_strict_and_idempotent(tmp_path):
    target = tmp_path / "pkg" / "mod.py"
    target.parent.mkdir()
    target.write_text("a = np.float(1)\nb = np.float(2)\n")
    edits = (patch.Edit("pkg/mod.py", "np.float(", "float(", 2, "numpy 2"),)
    assert patch.apply_edits(tmp_path, edits) == ["pkg/mod.py"]
    assert target.read_text() == "a = float(1)\nb = float(2)\n"
    assert patch.apply_edits(tmp_path, edits) == []  # second run: nothing to do
    target.write_text("a = np.float(1)\n")  # one occurrence where two are expected: a different file
    with pytest.raises(patch.PatchError, match=r"mod\.py: expected 2 occurrence"):
        patch.apply_edits(tmp_path, edits)
    with pytest.raises(patch.PatchError, match="not found"):
        patch.apply_edits(tmp_path, (patch.Edit("pkg/missing.py", "x", "y"),))


def test_installed_detectron2_is_the_patched_build_with_model_zoo():
    import detectron2
    from detectron2 import _C, model_zoo

    if not getattr(_C, "IS_PURE_PYTHON", False):
        pytest.skip("a compiled detectron2 (DETECTRON2_SOURCE) is installed; the pure build is not in use")
    assert detectron2.__version__ == patch.PATCH_VERSION
    zoo = Path(model_zoo.__file__).parent / "configs"
    assert len(list(zoo.glob("**/*.yaml"))) + len(list(zoo.glob("**/*.py"))) >= 120
    assert Path(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")).is_file()


def test_fresh_interpreter_imports_everything():
    code = (
        "import detectron2.layers, detectron2.modeling, detectron2.evaluation, detectron2.export, "
        "detectron2.utils.analysis, detectron2.model_zoo, torch; "
        "print(torch.ops.detectron2.nms_rotated)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "nms_rotated" in result.stdout


def test_lvis_package_is_fixed_for_numpy2():
    import lvis.eval

    source = Path(lvis.eval.__file__).read_text()
    assert "np.float)" not in source and "astype(dtype=np.float64)" in source


def test_env_report_names_the_build():
    result = subprocess.run([sys.executable, "-m", "unidet2.env"], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "detectron2 version" in result.stdout and "torch" in result.stdout
    assert "CUDA available" in result.stdout
