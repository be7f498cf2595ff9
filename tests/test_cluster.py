"""A real two-node Ray cluster on loopback (two `ray start` nodes, one CPU each, the
worker on its own address 127.0.0.2): `study/run.py --address` joins it, its trials run
on both nodes, and MLflow still holds exactly one run per trial."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_study_e2e import ENV, REPO, RUN, check_structure

RAY = str(Path(sys.executable).parent / "ray")
# token auth on, one token shared by the nodes and the driver (as on a real cluster)
TOKEN = secrets.token_hex(32)
CLUSTER_ENV = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive_nodes(address: str, env: dict[str, str] | None = None) -> int:
    probe = "import ray; ray.init(address=%r, log_to_driver=False); "
    probe += "print(sum(n['Alive'] for n in ray.nodes()))"
    try:
        r = subprocess.run(
            [sys.executable, "-c", probe % address],
            env=CLUSTER_ENV if env is None else env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return 0
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else 0


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def loopback_cluster(tmp_path: Path) -> Iterator[str]:
    temp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # AF_UNIX socket paths must be short
    port = free_port()
    address = f"127.0.0.1:{port}"

    def node(*args: str, log: str) -> subprocess.Popen:
        cmd = [RAY, "start", *args, "--num-cpus=1", "--disable-usage-stats", "--block"]
        cmd += [f"--dashboard-agent-listen-port={free_port()}"]
        out = (tmp_path / log).open("w")
        return subprocess.Popen(cmd, env=CLUSTER_ENV, stdout=out, stderr=subprocess.STDOUT)

    head = node(
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
        log="head.log",
    )
    procs = [head]
    try:
        deadline = time.monotonic() + 120
        while not port_open(port) or alive_nodes(address) < 1:
            assert head.poll() is None and time.monotonic() < deadline, (
                tmp_path / "head.log"
            ).read_text()[-2000:]
            time.sleep(2)
        procs.append(node(f"--address={address}", "--node-ip-address=127.0.0.2", log="w.log"))
        while alive_nodes(address) < 2:
            assert time.monotonic() < deadline, (tmp_path / "w.log").read_text()[-2000:]
            time.sleep(2)
        yield address
    finally:
        for p in reversed(procs):  # --block: SIGTERM stops the node and all its processes
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_study_joins_a_two_node_cluster_and_uses_both_nodes(
    tmp_path: Path, loopback_cluster: str
) -> None:
    space = tmp_path / "two.yaml"
    space.write_text(
        f"extends: {REPO / 'benchmarks' / 'spaces' / 'search_kd_grid.yaml'}\n"
        "name: two_nodes\n"
        # long enough (~5 s) that the second node's actor is up before the first trial
        # ends: with actor reuse, shorter trials all ran on the first actor
        "trial: {epochs: 20}\n"
        "search: {losses.kd.temperature: null,\n"
        "         losses.kd.weight: {type: categorical, values: [1.0, 4.0]}}\n"
        "samples: 2\n"
        "seeds: [0, 1]\n"
        "repeats: 2\n"
        "concurrency: 2\n"
        "resources: {cpu: 1, gpu: 0}\n"
        "trial_scheduler: {kind: fifo}\n"
    )
    storage = tmp_path / "st"
    cmd = [
        *RUN,
        "--space",
        str(space),
        "--storage",
        str(storage),
        "--skip-baselines",
        "--skip-final",
    ]
    # benchmarks/spaces use another validation split: a teacher registry of its own
    cmd += ["--teachers-dir", str(tmp_path / "teachers"), "--address", loopback_cluster]
    r = subprocess.run(
        cmd, cwd=tmp_path, env=CLUSTER_ENV, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"starting Ray: cluster at {loopback_cluster}" in r.stdout
    nodes = set()
    for result in (storage / "ray" / "search").glob("*/result.json"):
        rows = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        assert [row["training_iteration"] for row in rows] == list(range(1, 21))
        nodes |= {row["node_ip"] for row in rows}
    assert "127.0.0.2" in nodes and len(nodes) == 2, nodes  # the worker node ran trials too
    check_structure(storage, "two_nodes", 4, 0)

    # token auth: a driver with another token, or none, is refused by the cluster
    wrong = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    assert alive_nodes(loopback_cluster, wrong) == 0
    assert alive_nodes(loopback_cluster, {**ENV, "RAY_AUTH_MODE": "disabled"}) == 0
    assert alive_nodes(loopback_cluster) == 2  # and the right token still gets in
    # a study without the token fails in one line, before anything starts
    bare = {k: v for k, v in ENV.items() if not k.startswith("RAY_AUTH")}
    r = subprocess.run(
        [*cmd[:-2], "--storage", str(tmp_path / "st2"), "--address", loopback_cluster],
        cwd=tmp_path,
        env={**bare, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no token was found" in r.stderr and not (tmp_path / "st2").exists()
