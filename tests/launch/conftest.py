"""A real single-node SLURM cluster for the launcher tests, started once per test session.

Debian's slurmctld/slurmd/munge are installed with apt if missing (the tests skip, with the reason, where
that is impossible: not root, no apt, no package index), then ``launch/slurm_local/start.sh`` starts munged,
slurmctld and slurmd with all state in a temporary directory and ``stop.sh`` stops them at the end.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "launch" / "slurm_local"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "munged", "mungekey"]


@dataclasses.dataclass
class SlurmCluster:
    root: Path
    conf: str

    def scontrol_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ...)."""
        text = subprocess.run(
            ["scontrol", "show", "job", str(job_id)], capture_output=True, text=True, check=True
        ).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for_state(self, job_id: str, states: set[str], timeout: float = 120) -> dict[str, str]:
        deadline = time.time() + timeout
        while True:
            info = self.scontrol_job(job_id)
            if info.get("JobState") in states:
                return info
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout} s, wanted {states}")
            time.sleep(0.5)


def _install_slurm() -> str | None:
    """Install the packages with apt; returns why that was impossible, or None."""
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=900)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs munged/slurmd as root; not root here")
    if any(shutil.which(binary) is None for binary in BINARIES):
        reason = _install_slurm()
        if reason:
            pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(SCRIPTS / "start.sh"), str(root)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(root)], timeout=60)
        pytest.fail(f"local SLURM cluster did not start:\n{started.stdout}\n{started.stderr}")
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PATH")}
    os.environ["SLURM_CONF"] = str(root / "etc" / "slurm.conf")
    # The sacct stand-in: without slurmdbd, submitit could not see that a job was cancelled.
    os.environ["PATH"] = f"{SCRIPTS / 'bin'}{os.pathsep}{os.environ['PATH']}"
    try:
        yield SlurmCluster(root, os.environ["SLURM_CONF"])
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=60)
        subprocess.run([str(SCRIPTS / "stop.sh"), str(root)], timeout=120)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
