"""A study across two hosts, on one machine: two network namespaces joined by a veth pair
(docs: /work/shared/spec/platform.md, "Multi-node tests on one machine").

Namespace A holds PostgreSQL, an MLflow server on it with basic auth (``--app-name
basic-auth`` as in docker/: admin account from the environment, users in SQLite; job
execution off, a Host allow-list) and the Ray head, which offers 2 CPUs; namespace B holds
a Ray worker that offers 2 CPUs and the custom resource ``kd_worker``. Token auth is on
with one token: a driver without it, or with another, is refused. MLflow refuses a request
without credentials (401); the admin creates the driver's account, as docker/README.md
shows. The driver in A runs a small real study with ``--address`` and ``--tracking-uri``,
logged in through ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, whose trials ask for
``resources: {cpu: 1, gpu: 0, custom: {kd_worker: 1}}``: both hosts have free CPUs, so
that every trial runs on the worker in B shows the custom resource routed them. MLflow
(PostgreSQL behind it) holds one FINISHED run per trial under a FINISHED parent. No packet
leaves the veth pair: each namespace's default route is its veth end.

Root only (network namespaces, and PostgreSQL runs as ``nobody``); CI runs as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_study_e2e import ENV, REPO, RUN

RAY = str(Path(sys.executable).parent / "ray")
MLFLOW = str(Path(sys.executable).parent / "mlflow")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TOKEN = secrets.token_hex(32)
CLUSTER_ENV = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
RAY_PORT, MLFLOW_PORT, PG_PORT = 6379, 5000, 5432


def _pg_tool(name: str) -> str | None:
    return shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).is_file() else None)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces (CI runs as root)"
    if not shutil.which("ip"):
        return "iproute2's `ip` is not installed"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is not available here"
    missing = [t for t in ("initdb", "postgres", "createdb", "pg_isready") if not _pg_tool(t)]
    if missing:
        return f"PostgreSQL binaries missing: {', '.join(missing)}"
    if not shutil.which("runuser"):
        return "runuser missing (PostgreSQL refuses to run as root)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 missing (pip install -e '.[test]')"
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        return "Flask-WTF missing, MLflow's basic-auth app needs it (pip install -e '.[test]')"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Hosts:
    """Two network namespaces ``a`` and ``b`` joined by a veth pair, and the processes the
    test starts in them (each in its own process group)."""

    def __init__(self, logs: Path) -> None:
        x = random.randint(10, 250)
        tag = f"{os.getpid() % 10000}{random.randint(0, 99):02d}"
        self.a, self.b = f"kdA{tag}", f"kdB{tag}"
        self.addr_a, self.addr_b = f"10.231.{x}.1", f"10.231.{x}.2"
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[str] = []  # removed once every process is gone
        veth_a, veth_b = f"kdva{tag}", f"kdvb{tag}"
        ip("netns", "add", self.a)
        ip("netns", "add", self.b)
        ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        for ns, dev, addr in ((self.a, veth_a, self.addr_a), (self.b, veth_b, self.addr_b)):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
            # Ray finds a host's address through its default route: the veth, nothing beyond
            ip("-n", ns, "route", "add", "default", "dev", dev)

    def spawn(
        self, ns: str, cmd: list[str], log: str, env: dict[str, str], user: str | None = None
    ) -> subprocess.Popen:
        prefix = ["ip", "netns", "exec", ns] + (["runuser", "-u", user, "--"] if user else [])
        out = (self.logs / log).open("w")
        p = subprocess.Popen(
            prefix + cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(p)
        return p

    def run(
        self, ns: str, cmd: list[str], env: dict[str, str], timeout: float = 120, **kw: Any
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def python(self, ns: str, code: str, env: dict[str, str], timeout: float = 120) -> Any:
        r = self.run(ns, [sys.executable, "-c", code], env, timeout=timeout, cwd=REPO)
        return r

    def close(self) -> None:
        # the process groups we started (`ray start --block` stops its node on SIGTERM) ...
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
        # ... then whatever still lives in our namespaces (Ray's idle workers and
        # `ray::` processes start sessions of their own): only processes this test started
        for ns in (self.a, self.b):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def tempdir(self, prefix: str) -> Path:
        """A folder under /tmp (short AF_UNIX paths; reachable by ``nobody``)."""
        d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.dirs.append(d)
        return Path(d)


def wait_for(what: str, check: Any, procs: list[subprocess.Popen], log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check():
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"{what}: process exited ({dead[0].args!r}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, (
            f"{what} not up in {limit:.0f}s:\n{log.read_text()[-3000:]}"
        )
        time.sleep(1)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts(tmp_path)
    try:
        yield h
    finally:
        h.close()


ALIVE = (
    "import ray; ray.init(address={address!r}, log_to_driver=False); "
    "print(sum(n['Alive'] for n in ray.nodes()))"
)


def alive_nodes(h: Hosts, env: dict[str, str]) -> int:
    try:
        r = h.python(h.a, ALIVE.format(address=f"{h.addr_a}:{RAY_PORT}"), env, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    lines = r.stdout.strip().splitlines()
    return int(lines[-1]) if r.returncode == 0 and lines else 0


def test_study_across_two_network_namespaces(tmp_path: Path, hosts: Hosts) -> None:
    t_start = time.monotonic()
    h = hosts
    nobody = pwd.getpwnam("nobody")
    # -- PostgreSQL in A, as nobody, password auth on A's address -------------------------
    pg = h.tempdir("kdpg")  # nobody must reach it
    ray_temp = h.tempdir("kdmh")
    # the teacher, short (3 epochs; the registry reuses any teacher of the same split), in
    # the background while the hosts come up: the study then only trains its trials
    storage_root = tmp_path / "shared"  # one filesystem: the "shared storage" of both hosts
    storage_root.mkdir()
    teacher = subprocess.Popen(
        [sys.executable, str(REPO / "study" / "teacher.py"), "--dataset", "digits"]
        + ["--arch", "cnn_large", "--epochs", "3", "--val-fraction", "0.2", "--split-seed", "0"]
        + ["--out", str(storage_root / "teachers"), "--quiet"],
        env=ENV,
        cwd=tmp_path,
        stdout=(tmp_path / "teacher.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    h.procs.append(teacher)
    password = secrets.token_urlsafe(24)
    (pg / "pw").write_text(password + "\n")
    for path in (pg, pg / "pw"):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(pg / "pw", 0o600)
    pg_env = {"PATH": os.environ["PATH"], "LC_ALL": "C", "HOME": str(pg)}
    r = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(_pg_tool("initdb")), "-D", str(pg / "data")]
        + ["-U", "mlflow", f"--pwfile={pg / 'pw'}", "--auth=scram-sha-256", "--locale=C"]
        + ["-E", "UTF8", "--no-instructions"],
        env=pg_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    net = h.addr_a.rsplit(".", 1)[0] + ".0/24"  # the veth subnet only, with a password
    with (pg / "data" / "pg_hba.conf").open("a") as fh:
        fh.write(f"host all mlflow {net} scram-sha-256\n")
    postgres = h.spawn(
        h.a,
        [str(_pg_tool("postgres")), "-D", str(pg / "data"), "-h", h.addr_a]
        + ["-p", str(PG_PORT), "-k", str(pg)],
        "postgres.log",
        pg_env,
        user="nobody",
    )

    def pg_ready() -> bool:
        cmd = [str(_pg_tool("pg_isready")), "-h", h.addr_a, "-p", str(PG_PORT), "-U", "mlflow"]
        return h.run(h.a, cmd, pg_env, timeout=30).returncode == 0

    wait_for("postgres", pg_ready, [postgres], tmp_path / "postgres.log", 60)
    r = h.run(
        h.a,
        [str(_pg_tool("createdb")), "-h", h.addr_a, "-p", str(PG_PORT), "-U", "mlflow", "mlflow"],
        {**pg_env, "PGPASSWORD": password},
    )
    assert r.returncode == 0, r.stderr

    # -- MLflow server in A on PostgreSQL, basic auth as in docker/ -------------------
    # docker/mlflow_basic_auth.ini with the users' SQLite file here; the admin account comes
    # from the environment (used on the first start only), as compose and k8s set it
    auth_ini = (REPO / "docker" / "mlflow_basic_auth.ini").read_text()
    auth_db = tmp_path / "mlflow-auth" / "basic_auth.db"
    auth_db.parent.mkdir()
    assert "database_uri = sqlite:////mlflow-auth/basic_auth.db" in auth_ini
    auth_ini = auth_ini.replace("sqlite:////mlflow-auth/basic_auth.db", f"sqlite:///{auth_db}")
    (tmp_path / "basic_auth.ini").write_text(auth_ini)
    admin = ("admin", secrets.token_urlsafe(24))
    runner = ("kdstudy-runner", secrets.token_urlsafe(24))  # the study driver's account
    mlflow_env = {
        **{k: v for k, v in ENV.items() if not k.startswith("MLFLOW_TRACKING_")},
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
        "PGPASSWORD": password,
    }
    mlflow = h.spawn(
        h.a,
        [MLFLOW, "server", "--host", h.addr_a, "--port", str(MLFLOW_PORT), "--workers", "1"]
        + [
            "--backend-store-uri",
            # the password from $PGPASSWORD (libpq), not on a command line `ps` shows
            f"postgresql+psycopg2://mlflow@{h.addr_a}:{PG_PORT}/mlflow",
        ]
        + ["--serve-artifacts", "--artifacts-destination", str(storage_root / "mlartifacts")]
        + ["--app-name", "basic-auth"]
        + ["--allowed-hosts", f"{h.addr_a},{h.addr_a}:{MLFLOW_PORT}"],
        "mlflow.log",
        mlflow_env,
    )
    uri = f"http://{h.addr_a}:{MLFLOW_PORT}"
    health = f"import urllib.request as u; u.urlopen({uri + '/health'!r}, timeout=5).read()"

    def mlflow_ready() -> bool:
        return h.python(h.a, health, ENV, timeout=30).returncode == 0

    # -- Ray: head in A (2 CPUs, no custom resource), worker in B (2 CPUs + kd_worker 2) --
    head = h.spawn(
        h.a,
        [RAY, "start", "--head", f"--node-ip-address={h.addr_a}", f"--port={RAY_PORT}"]
        + ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", "--block"]
        + [f"--temp-dir={ray_temp}"],
        "head.log",
        CLUSTER_ENV,
    )
    wait_for("mlflow", mlflow_ready, [mlflow], tmp_path / "mlflow.log", 120)
    wait_for(
        "ray head", lambda: alive_nodes(h, CLUSTER_ENV) >= 1, [head], tmp_path / "head.log", 120
    )
    worker = h.spawn(
        h.b,
        [RAY, "start", f"--address={h.addr_a}:{RAY_PORT}", f"--node-ip-address={h.addr_b}"]
        + ["--num-cpus=2", '--resources={"kd_worker": 2}', "--disable-usage-stats", "--block"],
        "worker.log",
        CLUSTER_ENV,
    )
    wait_for(
        "ray worker",
        lambda: alive_nodes(h, CLUSTER_ENV) >= 2,
        [head, worker],
        tmp_path / "worker.log",
        120,
    )
    t_up = time.monotonic() - t_start

    # -- MLflow basic auth: no or wrong credentials are refused (401); the admin creates
    # the driver's account with the call docker/README.md shows ----------------------------
    api = f"{uri}/api/2.0/mlflow"
    status = (
        "import base64, json, sys, urllib.error, urllib.request as u\n"
        "url, user, pw, body = sys.argv[1:5]\n"
        "req = u.Request(url, data=body.encode() or None, "
        "headers={'Content-Type': 'application/json'})\n"
        "if user:\n"
        "    tok = base64.b64encode(f'{user}:{pw}'.encode()).decode()\n"
        "    req.add_header('Authorization', 'Basic ' + tok)\n"
        "try:\n"
        "    print(u.urlopen(req, timeout=30).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )

    def http_status(url: str, user: str = "", pw: str = "", body: str = "") -> int:
        r = h.run(h.a, [sys.executable, "-c", status, url, user, pw, body], ENV, timeout=60)
        assert r.returncode == 0, r.stderr[-3000:]
        return int(r.stdout.strip().splitlines()[-1])

    search = f"{api}/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(search, admin[0], "not-the-password") == 401
    assert http_status(search, *admin) == 200
    new_user = json.dumps({"username": runner[0], "password": runner[1]})
    assert http_status(f"{api}/users/create", *admin, body=new_user) == 200
    assert http_status(search, *runner) == 200
    logged_in = {"MLFLOW_TRACKING_USERNAME": runner[0], "MLFLOW_TRACKING_PASSWORD": runner[1]}

    # -- token auth: no token, or another one, is refused -------------------------------
    wrong = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    assert alive_nodes(h, wrong) == 0
    assert alive_nodes(h, {**ENV, "RAY_AUTH_MODE": "disabled"}) == 0

    # -- study/resources.py on the real cluster's ray.nodes(), custom resource included --
    probe = (
        "import json, ray; from study.resources import check_resources as c; "
        f"ray.init(address='{h.addr_a}:{RAY_PORT}', log_to_driver=False); n = ray.nodes(); "
        "print(json.dumps([c({'cpu': 2, 'kd_worker': 2}, n), c({'cpu': 1, 'kd_worker': 3}, n), "
        "c({'cpu': 1, 'gpu': 1}, n)]))"
    )
    r = h.python(h.a, probe, CLUSTER_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    fits, too_many, gpu = json.loads(r.stdout.strip().splitlines()[-1])
    assert fits is None
    assert too_many.startswith("resources.custom.kd_worker: a trial asks for 3 kd_worker; ")
    assert "the largest node offers 2" in too_many
    assert gpu.startswith("resources.gpu: a trial asks for 1 GPU; no node of this cluster")

    # -- a real study from A: trials on B, MLflow in A -----------------------------------
    space = tmp_path / "multihost.yaml"
    space.write_text(
        f"extends: {REPO / 'benchmarks' / 'spaces' / 'search_kd_grid.yaml'}\n"
        "name: multihost\n"
        "search: {losses.kd.temperature: null,\n"
        "         losses.kd.weight: {type: categorical, values: [1.0, 4.0]}}\n"
        "seeds: [0]\n"
        "repeats: 1\n"
        "concurrency: 2\n"
        "resources: {cpu: 1, gpu: 0, custom: {kd_worker: 1}}\n"
    )
    storage = storage_root / "multihost"
    cmd = [*RUN, "--space", str(space), "--storage", str(storage)]
    cmd += ["--teachers-dir", str(storage_root / "teachers"), "--skip-baselines"]
    cmd += ["--num-samples", "2", "--max-epochs", "2"]
    if "--skip-final" in subprocess.run([*RUN, "--help"], capture_output=True, text=True).stdout:
        cmd += ["--skip-final"]  # no final runs on the test set: the search is the point here
    assert teacher.wait(timeout=240) == 0, (tmp_path / "teacher.log").read_text()[-3000:]
    cmd += ["--address", f"{h.addr_a}:{RAY_PORT}", "--tracking-uri", uri]
    # a wrong MLflow password is refused in one line before anything starts (not an outage)
    wrong_pw = {**logged_in, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    r = h.run(h.a, cmd, {**CLUSTER_ENV, **wrong_pw}, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        f"error: --tracking-uri: {uri} answered HTTP 401: credentials were refused (allowed: "
        "an account of that server in $MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD, "
        "or $MLFLOW_TRACKING_TOKEN)"
    ], r.stderr
    assert not storage.exists()
    # --dry-run joins the cluster to check resources (and MLflow with the credentials)
    r = h.run(h.a, [*cmd, "--dry-run"], {**CLUSTER_ENV, **logged_in}, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    checked = [x for x in r.stdout.splitlines() if x.startswith("checked: ")]
    assert (
        "checked: resources: 1 cpu + 1 kd_worker per trial fit a node of the cluster at "
        f"{h.addr_a}:{RAY_PORT} (2 alive node(s))"
    ) in checked, r.stdout[-3000:]
    assert f"checked: MLflow server {uri} answers" in checked
    big = tmp_path / "too-big.yaml"
    big.write_text(space.read_text().replace("kd_worker: 1}", "kd_worker: 3}"))
    big_cmd = [*cmd, "--dry-run"]
    big_cmd[big_cmd.index(str(space))] = str(big)
    r = h.run(h.a, big_cmd, {**CLUSTER_ENV, **logged_in}, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: resources.custom.kd_worker: a trial asks for 3 kd_worker; ")
    assert not storage.exists()
    t0 = time.monotonic()
    r = h.run(h.a, cmd, {**CLUSTER_ENV, **logged_in}, timeout=300, cwd=tmp_path)
    t_study = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    nodes = set()
    results = list((storage / "ray" / "search").glob("*/result.json"))
    assert len(results) == 2, results
    for result in results:
        rows = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        assert rows and rows[-1]["training_iteration"] >= 1
        nodes |= {row["node_ip"] for row in rows}
    # every trial ran on the worker host: the head has free CPUs too, only B offers kd_worker
    assert nodes == {h.addr_b}, nodes

    # -- MLflow, asked over HTTP from A: one FINISHED run per trial, FINISHED parent ----
    check = (
        "import json; from mlflow.tracking import MlflowClient; "
        f"c = MlflowClient({uri!r}); e = c.get_experiment_by_name('multihost'); "
        "rs = c.search_runs([e.experiment_id], max_results=100); "
        "print(json.dumps([dict(id=x.info.run_id, status=x.info.status, "
        "tags=x.data.tags) for x in rs]))"
    )
    r = h.python(h.a, check, {**ENV, **logged_in})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads(r.stdout.strip().splitlines()[-1])
    parents = [x for x in runs if x["tags"].get("role") == "study"]
    children = [x for x in runs if x["tags"].get("role") == "trial"]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED", runs
    assert len(children) == 2, runs
    assert all(x["status"] == "FINISHED" for x in runs), runs
    assert len({x["tags"]["trial_id"] for x in children}) == 2
    for x in children:
        assert x["status"] == "FINISHED", x
        assert x["tags"]["mlflow.parentRunId"] == parents[0]["id"]
    # and the rows are in PostgreSQL, not in some local store
    count = (
        "import psycopg2, sys; k = psycopg2.connect(host=sys.argv[1], port=int(sys.argv[2]), "
        "user='mlflow', dbname='mlflow', password=sys.argv[3]); cur = k.cursor(); "
        "cur.execute('select count(*) from runs'); print(cur.fetchone()[0])"
    )
    r = h.run(
        h.a,
        [sys.executable, "-c", count, h.addr_a, str(PG_PORT), password],
        ENV,
    )
    assert r.returncode == 0 and r.stdout.strip() == str(len(runs)), r.stdout + r.stderr
    assert not (storage / "mlflow.db").exists()
    print(
        f"cluster up in {t_up:.0f}s, study {t_study:.0f}s, total {time.monotonic() - t_start:.0f}s"
    )
