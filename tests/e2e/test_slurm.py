"""scripts/slurm/ launchers on a one-node slurm cluster started here (Debian's slurm-wlm and munge).

The fixture writes a slurm.conf naming this host (2 CPUs, ports of its own, every file under a temp
folder), starts munged, slurmctld and slurmd, and stops them by their pid files. Where slurm is not
installed or does not start, the tests are skipped and say why (apt-get install slurm-wlm munge;
scripts/test.sh installs them when it can).

The job: multi_node.sbatch with two tasks on the one node (each a "node" of one process, meeting
at the rendezvous slurm's variables give), training the tiny Qwen3.5-MoE recipe with expert
parallelism 2; and one_node.sbatch running the same recipe with one process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/demo.jsonl"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: Path, host: str) -> Path:
    ctl, node = _free_port(), _free_port()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=qwenvlft",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={ctl}",
                f"SlurmdPort={node}",
                "AuthType=auth/munge",
                f"AuthInfo=socket={root}/munge.socket",
                f"StateSaveLocation={root}/state",
                f"SlurmdSpoolDir={root}/spool",
                f"SlurmctldPidFile={root}/slurmctld.pid",
                f"SlurmdPidFile={root}/slurmd.pid",
                f"SlurmctldLogFile={root}/slurmctld.log",
                f"SlurmdLogFile={root}/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SchedulerType=sched/builtin",
                "ReturnToService=2",
                "MpiDefault=none",
                f"NodeName={host} CPUs=2 State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    return conf


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(
            f"slurm is not installed here ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
        )
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    conf = _conf(root, host)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = []
    try:
        # munged of our own: its socket, log, pid and seed under the temp folder (slurm.conf's AuthInfo
        # points the daemons and the clients at the socket), the installed key.
        key = Path("/etc/munge/munge.key")
        run = subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={root}/munge.socket",
                f"--log-file={root}/munged.log",
                f"--pid-file={root}/munged.pid",
                f"--seed-file={root}/munged.seed",
            ],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            pytest.skip(f"munged does not start here: {run.stderr.strip()[-300:]}")
        started.append(root / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            run = subprocess.run([daemon, "-f", str(conf)], capture_output=True, text=True, env=env)
            if run.returncode != 0:
                pytest.skip(f"{daemon} does not start here: {run.stderr.strip()[-300:]}")
            started.append(root / f"{daemon}.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if info.returncode == 0 and info.stdout.strip() in ("idle", "mixed"):
                break
            time.sleep(1)
        else:
            log = (root / "slurmctld.log").read_text()[-1000:] if (root / "slurmctld.log").exists() else ""
            pytest.skip(f"the one-node slurm cluster did not come up: {info.stdout.strip()} {log}")
        yield env
    finally:
        for pid_file in started:
            if pid_file.exists():
                subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)


def sbatch(env: dict, script: str, *args: str, options: tuple[str, ...] = ()) -> str:
    """Submit, wait for the job, return its output file; fails with that output if the job failed."""
    venv = str(Path(sys.executable).parent)
    job_env = {**env, "PATH": f"{venv}:{env['PATH']}", "NPROC_PER_NODE": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["sbatch", "--wait", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", *options]
    cmd += [f"--output={env['OUT']}/%j.out", script, *args]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=job_env, timeout=1200)
    job = run.stdout.strip().split(";")[0]
    output = Path(env["OUT"]) / f"{job}.out"
    text = output.read_text() if output.exists() else ""
    assert run.returncode == 0, f"{run.stderr[-2000:]}\n{text[-6000:]}"
    return text


def test_multi_node_launcher_runs_a_two_task_expert_parallel_job(slurm, tiny_model, tmp_path):
    out = tmp_path / "run"
    env = {**slurm, "OUT": str(tmp_path)}
    text = sbatch(
        env,
        "scripts/slurm/multi_node.sbatch",
        "recipes/tiny/qwen3_5_moe_lora.yaml",
        f"model.path={tiny_model('qwen3_5_moe')}",
        f"output.dir={out}",
        f"data.train=[{{path: {DEMO}}}]",
        "data.num_workers=0",
        "train.max_steps=2",
        "train.expert_parallel=2",
        "train.per_device_batch_size=1",
        options=("--nodes=1", "--ntasks=2", "--ntasks-per-node=2"),
    )
    assert "2 task(s), rendezvous at" in text
    for noise in ("returned a view tensor", "While redistributing", "match nothing in"):  # a quiet CLI
        assert noise not in text, noise
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2]
    assert (out / "adapter_model.safetensors").exists()


def test_one_node_launcher_trains(slurm, tiny_model, tmp_path):
    out = tmp_path / "run"
    env = {**slurm, "OUT": str(tmp_path)}
    sbatch(
        env,
        "scripts/slurm/one_node.sbatch",
        "recipes/tiny/qwen3_5_moe_lora.yaml",
        f"model.path={tiny_model('qwen3_5_moe')}",
        f"output.dir={out}",
        f"data.train=[{{path: {DEMO}}}]",
        "data.num_workers=0",
        "train.max_steps=1",
    )
    assert (out / "adapter_model.safetensors").exists()
