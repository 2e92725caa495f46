"""Real SLURM clusters for the launcher tests, each started once per test session.

Debian's slurmctld/slurmd/munge are installed with apt if missing (the tests skip, with the reason, where
that is impossible: not root, no apt, no package index), then ``launch/slurm_local/start.sh`` starts munged,
slurmctld and slurmd with all state in a temporary directory and ``stop.sh`` stops them at the end.

* ``slurm_cluster``: one node, ``localhost``; it is this session's default cluster (``SLURM_CONF``).
* ``two_node_cluster``: ``start.sh --nodes 2``, two slurmd hosts ``node1``/``node2`` in network namespaces on a
  bridge. Its tests get its ``SLURM_CONF``/``PATH`` for their duration; its job ids start at 50000 so that
  submitit's job-state cache never mixes the two clusters' jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
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


def _start_cluster(root: Path, *options: str) -> None:
    """start.sh with ``options``, or skip/fail with the reason (after stopping whatever did start)."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs munged/slurmd as root; not root here")
    if any(shutil.which(binary) is None for binary in BINARIES):
        reason = _install_slurm()
        if reason:
            pytest.skip(reason)
    started = subprocess.run(
        [str(SCRIPTS / "start.sh"), str(root), *options], capture_output=True, text=True, timeout=120
    )
    if started.returncode != 0:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(root)], timeout=120)
        pytest.fail(f"local SLURM cluster did not start:\n{started.stdout}\n{started.stderr}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    root = tmp_path_factory.mktemp("slurm")
    _start_cluster(root)
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


@dataclasses.dataclass
class TwoNodeCluster(SlurmCluster):
    """``start.sh --nodes 2``: hosts node1 and node2, each with its own network namespace, name and /etc/hosts."""

    def env(self) -> dict[str, str]:
        """``SLURM_CONF`` and ``PATH`` (the cluster's command wrappers first, then the sacct stand-in)."""
        return {"SLURM_CONF": self.conf, "PATH": f"{self.root / 'bin'}{os.pathsep}{SCRIPTS / 'bin'}{os.pathsep}"
                f"{os.environ['PATH']}"}

    def node(self, action: str, name: str) -> str:
        """``node.sh DIR start|kill|pids NAME``; returns its output."""
        return subprocess.run(
            [str(SCRIPTS / "node.sh"), str(self.root), action, name], capture_output=True, text=True, check=True,
            timeout=60,
        ).stdout

    def node_state(self, name: str) -> str:
        return subprocess.run(
            ["sinfo", "-h", "-n", name, "-o", "%T"], capture_output=True, text=True, check=True
        ).stdout.strip()

    def wait_for_node(self, name: str, states: set[str], timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while (state := self.node_state(name)) not in states:
            if time.time() > deadline:
                raise TimeoutError(f"node {name} still {state} after {timeout} s, wanted {states}")
            time.sleep(0.5)
        return state

    @contextlib.contextmanager
    def own_name_resolving_to_loopback(self) -> Iterator[None]:
        """Each node's /etc/hosts maps its own name to 127.0.1.1, as Debian's installer writes it.

        The files are bound onto the nodes' /etc/hosts, so they are rewritten in place (same inode) and restored.
        """
        files = sorted(self.root.glob("nodes/node*/hosts"))
        saved = {path: path.read_text() for path in files}
        try:
            for path, text in saved.items():
                name = path.parent.name
                lines = [line for line in text.splitlines() if line.split()[1:] != [name]]
                with open(path, "r+") as f:  # in place: a new file would not be the one bound on /etc/hosts
                    f.write("\n".join([f"127.0.1.1 {name}", *lines]) + "\n")
                    f.truncate()
            yield
        finally:
            for path, text in saved.items():
                with open(path, "r+") as f:
                    f.write(text)
                    f.truncate()


@pytest.fixture(scope="session")
def _two_node_cluster_session(tmp_path_factory) -> Iterator[TwoNodeCluster]:
    root = tmp_path_factory.mktemp("slurm2")
    # CPUs per node 2: one node also runs a 2-task job. SlurmdTimeout 8 s: a lost node is declared DOWN in ~15 s.
    _start_cluster(root, "--nodes", "2", "--cpus-per-node", "2", "--slurmd-timeout", "8", "--first-job-id", "50000")
    cluster = TwoNodeCluster(root, str(root / "etc" / "slurm.conf"))
    try:
        yield cluster
    finally:
        env = {**os.environ, **cluster.env()}
        subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=60, env=env)
        subprocess.run([str(SCRIPTS / "stop.sh"), str(root)], timeout=120)


@pytest.fixture
def two_node_cluster(_two_node_cluster_session, monkeypatch) -> TwoNodeCluster:
    """The 2-node cluster, with its ``SLURM_CONF``/``PATH`` set for this test."""
    for key, value in _two_node_cluster_session.env().items():
        monkeypatch.setenv(key, value)
    return _two_node_cluster_session
