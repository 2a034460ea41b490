"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's
packages, started as root without systemd in a temporary folder of their own (key, config,
state, spool, logs, sockets, ports), stopped at the end. No accounting (submitit works
without it). Where it cannot start (not root, packages missing, a daemon that will not come
up) the tests that need it skip, with the reason.

``slurm`` (session fixture) yields a ``Cluster``: its ``env`` (SLURM_CONF set) is also put
into ``os.environ`` while the session runs, so that submitit, squeue and the study command see
this cluster."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PROGRAMS = ("munged", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch", "scancel")


@dataclass
class Cluster:
    folder: Path
    conf: Path
    node: str
    partition: str
    env: dict

    def run(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout


def why_not() -> str | None:
    """Why no Slurm can be started here, or None."""
    if os.geteuid() != 0:
        return "starting Slurm's daemons needs root"
    missing = [p for p in PROGRAMS if not shutil.which(p) and not Path("/usr/sbin", p).exists()]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): "
                "apt-get install slurmctld slurmd slurm-client munge")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    return 1024


def write_config(folder: Path) -> Cluster:
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log", "run"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=collabtest",
        f"SlurmctldHost={node}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"AuthInfo=socket={folder / 'run' / 'munge.socket'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "KillWait=5",
        "MinJobAge=30",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        f"SlurmctldPidFile={folder / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'run' / 'slurmd.pid'}",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        f"NodeName={node} CPUs={os.cpu_count()} RealMemory={memory_mb()} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
    ]) + "\n")
    env = dict(os.environ, SLURM_CONF=str(conf))
    return Cluster(folder, conf, node, "debug", env)


def start(folder: Path) -> tuple[Cluster, list[subprocess.Popen]]:
    """Start munged, slurmctld and slurmd; raise RuntimeError (with their logs) when the node
    is not idle within a minute."""
    cluster = write_config(folder)
    run = folder / "run"
    subprocess.run([program("munged"), "--force", f"--key-file={folder / 'munge.key'}",
                    f"--socket={run / 'munge.socket'}", f"--pid-file={run / 'munged.pid'}",
                    f"--seed-file={run / 'munge.seed'}", f"--log-file={folder / 'log' / 'munged.log'}"],
                   check=True, capture_output=True, timeout=30)
    daemons = [subprocess.Popen([program(d), "-D", "-f", str(cluster.conf)], env=cluster.env,
                                stdout=subprocess.DEVNULL, stderr=open(folder / "log" / f"{d}.stderr", "wb"),
                                start_new_session=True)
               for d in ("slurmctld", "slurmd")]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%T").split()
        except subprocess.SubprocessError:
            state = []
        if state and all(s in ("idle", "mixed", "allocated") for s in state):
            return cluster, daemons
        time.sleep(0.5)
    stop(folder, daemons)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted((folder / "log").iterdir()))
    raise RuntimeError(f"the Slurm node did not come up idle in 60 s:\n{logs}")


def stop(folder: Path, daemons: list[subprocess.Popen]) -> None:
    for d in reversed(daemons):
        d.terminate()
    for d in reversed(daemons):
        try:
            d.wait(timeout=30)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
    pid_file = folder / "run" / "munged.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
        except (ValueError, ProcessLookupError):
            pass


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(f"no Slurm cluster: {reason}")
    folder = Path(tmp_path_factory.mktemp("slurm"))
    try:
        cluster, daemons = start(folder)
    except (RuntimeError, subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"no Slurm cluster: it could not be started here: {err}")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=cluster.env, capture_output=True)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        stop(folder, daemons)
