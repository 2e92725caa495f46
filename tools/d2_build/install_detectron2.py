"""Install detectron2 into the running Python environment (called by ``make install``).

Two sources:

1. ``DETECTRON2_SOURCE`` names a git URL (``git+https://github.com/facebookresearch/detectron2.git@<rev>``)
   or a local checkout: pip builds it with its compiled C++/CUDA ops (the way to install on a GPU
   cluster). The installed tree is used untouched.
2. Otherwise: PyPI's ``pb1-detectron2==0.6`` sdist (the detectron2 v0.6 Python tree without
   ``layers/csrc``) is downloaded by pip, checked by sha256, patched by ``patch_detectron2.py`` (source
   fixes plus the pure PyTorch ``_C.py``), built into a wheel that is cached under ``.cache/detectron2/``
   and installed. A second run finds the wheel installed and returns at once.

Either way, the lvis package's ``np.float`` use is fixed in its installed source (see ``LVIS_EDITS``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from patch_detectron2 import LVIS_EDITS, PATCH_VERSION, PatchError, apply_edits, patch_tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# pip 26.1+ refuses to download this sdist (its `all` extra holds a direct URL dependency)
MAX_PIP_FOR_DOWNLOAD = (26, 0)


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_key() -> str:
    """Hash of everything that shapes the wheel: a change to the patch rebuilds it."""
    digest = hashlib.sha256(SDIST_SHA256.encode())
    for name in ("_C.py", "patch_detectron2.py", "setup_purepy.py"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def installed_detectron2() -> dict | None:
    try:
        version = importlib.metadata.version("pb1-detectron2")
        return {"distribution": "pb1-detectron2", "version": version}
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return {"distribution": "detectron2", "version": importlib.metadata.version("detectron2")}
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_version() -> tuple[int, ...]:
    import pip

    return tuple(int(p) for p in pip.__version__.split(".")[:2] if p.isdigit())


def download_sdist(dest: Path) -> Path:
    """Download the sdist with pip (<= 26.0; a newer pip gets an older one in a scratch folder)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", str(dest), SDIST]
    env = dict(os.environ)
    if pip_version() > MAX_PIP_FOR_DOWNLOAD:
        old_pip = dest / "_pip"
        run([sys.executable, "-m", "pip", "install", "-q", "--target", str(old_pip), "pip>=24,<26.1"])
        env["PYTHONPATH"] = str(old_pip) + os.pathsep + env.get("PYTHONPATH", "")
    run(cmd, env=env)
    sdist = dest / SDIST_FILE
    if not sdist.is_file():
        raise FileNotFoundError(f"pip did not produce {sdist}")
    got = sha256(sdist)
    if got != SDIST_SHA256:
        raise RuntimeError(f"{sdist}: sha256 {got} does not match the expected {SDIST_SHA256}; refusing to build")
    return sdist


def build_wheel(cache: Path) -> Path:
    """Download, check, patch and build; returns the cached wheel."""
    with tempfile.TemporaryDirectory(prefix="unidet2-d2-") as tmp:
        tmp = Path(tmp)
        sdist = download_sdist(tmp)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        tree = tmp / "pb1-detectron2-0.6"
        changed = patch_tree(tree)
        log(f"patched {len(changed)} files, added detectron2/_C.py")
        staging = tmp / "dist"
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(staging),
             str(tree)])
        wheels = list(staging.glob("pb1_detectron2-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel in {staging}, found {wheels}")
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / wheels[0].name
        os.replace(wheels[0], target)  # same file system or not, the cache only ever sees a whole wheel
        return target


def fix_lvis() -> None:
    try:
        import lvis
    except ImportError:
        log("lvis not installed: nothing to fix")
        return
    site = Path(lvis.__file__).resolve().parents[1]
    try:
        changed = apply_edits(site, LVIS_EDITS)
    except PatchError as e:
        raise SystemExit(f"cannot fix the installed lvis package: {e}") from e
    if changed:
        log(f"fixed np.float in {site / 'lvis/eval.py'}")


def install_from_source(source: str) -> None:
    log(f"installing detectron2 from DETECTRON2_SOURCE={source} (builds its compiled ops)")
    run([sys.executable, "-m", "pip", "install", "--no-build-isolation", source])


def install_from_sdist(cache_root: Path, force: bool) -> None:
    key = build_key()
    cache = cache_root / key
    marker = cache_root / "installed.json"
    current = installed_detectron2()
    if not force and current and marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded.get("key") == key and recorded.get("version") == current["version"]:
            log(f"detectron2 {current['version']} (build {key}) already installed")
            return
    wheels = sorted(cache.glob("pb1_detectron2-*.whl")) if cache.is_dir() else []
    wheel = wheels[-1] if wheels else build_wheel(cache)
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)])
    marker.write_text(json.dumps({"key": key, "version": PATCH_VERSION, "wheel": str(wheel)}))
    log(f"installed {wheel.name}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "detectron2")
    parser.add_argument("--force", action="store_true", help="rebuild and reinstall even when up to date")
    args = parser.parse_args(argv)
    source = os.environ.get("DETECTRON2_SOURCE", "").strip()
    if source:
        install_from_source(source)
    else:
        install_from_sdist(args.cache, args.force)
    fix_lvis()


if __name__ == "__main__":
    main()
