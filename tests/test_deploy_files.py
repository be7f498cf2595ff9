"""The deployment files (docker/: Dockerfile, compose.yaml, env.example, k8s/*.yaml,
README.md) are wired the way docs/platform.md and docker/README.md say: token auth on
every Ray process with the token from a secret, nothing published beyond 127.0.0.1,
MLflow with basic auth, job execution off and a Host allow-list, PostgreSQL health-gated,
one study volume at the same path everywhere, no secret in a file, and entry commands
that the real CLIs accept. Plus: the project installs non-editable the way the
Dockerfile installs it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
BIN = Path(sys.executable).parent
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET", re.I)
STUDIES = "/studies"


# -- helpers ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d.get("kind") == kind]


def resolve(value: str) -> str:
    """Compose interpolation with an empty environment: ``${X:-d}`` -> d, ``${X:?m}`` ->
    ``<X>`` (a required variable), ``$$`` -> ``$``."""
    value = re.sub(r"\$\{(\w+):?-([^}]*)\}", r"\2", value)
    value = re.sub(r"\$\{(\w+):?\?[^}]*\}", r"<\1>", value)
    return value.replace("$$", "$")


def command_words(cmd: str | list[str]) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def ray_pods() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, rayStartParams) of the head and every worker group."""
    for rc in of_kind("RayCluster"):
        head = rc["spec"]["headGroupSpec"]
        yield "head", head["template"]["spec"], head.get("rayStartParams") or {}
        for group in rc["spec"]["workerGroupSpecs"]:
            yield group["groupName"], group["template"]["spec"], group.get("rayStartParams") or {}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def all_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, doc in manifests():
        for c in _containers(doc):
            yield f"{name}:{doc['kind']}/{doc['metadata']['name']}/{c['name']}", c


def _containers(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict):
        for key in ("containers", "initContainers"):
            if isinstance(doc.get(key), list):
                yield from doc[key]
        for v in doc.values():
            yield from _containers(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _containers(v)


@pytest.fixture(scope="module")
def ray_start_flags() -> set[str]:
    out = subprocess.run(
        [str(BIN / "ray"), "start", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    found = set(re.findall(r"^\s+(--[a-z0-9-]+)", out, re.M))
    assert {"--head", "--address", "--block", "--num-cpus"} <= found, out[:2000]
    return found


@pytest.fixture(scope="module")
def run_py_flags() -> set[str]:
    out = subprocess.run(
        [sys.executable, str(REPO / "study" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = set(re.findall(r"(--[a-z0-9-]+)", out))
    assert {"--space", "--storage", "--tracking-uri", "--resume"} <= found, out
    return found


@pytest.fixture(scope="module")
def mlflow_server_flags() -> set[str]:
    out = subprocess.run(
        [str(BIN / "mlflow"), "server", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    found = set(re.findall(r"(--[a-z0-9-]+)", out))
    assert {"--backend-store-uri", "--allowed-hosts", "--app-name"} <= found, out[:2000]
    return found


def mlflow_words_compose() -> list[str]:
    return command_words(resolve(compose()["services"]["mlflow"]["command"]))


def mlflow_words_k8s() -> list[str]:
    (dep,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return command_words(c["command"])


def after(words: list[str], program: str) -> list[str]:
    """The arguments that follow ``program`` in a (possibly ``sh -c``) command."""
    text = " ".join(words)
    i = text.index(program)
    return shlex.split(text[i + len(program) :].replace("&&", " "))


# -- parsing ---------------------------------------------------------------------------


def test_every_file_parses() -> None:
    assert set(compose()["services"]) >= {"postgres", "mlflow", "ray-head", "ray-worker"}
    kinds = [d["kind"] for _, d in manifests()]
    for kind in ("RayCluster", "RayJob", "Deployment", "StatefulSet", "Service", "Secret"):
        assert kind in kinds, kinds
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).is_file() for r in kust["resources"])
    # `kubectl apply -k` never applies the placeholder Secrets
    assert "secrets.example.yaml" not in kust["resources"]


# -- Ray token auth --------------------------------------------------------------------


def test_compose_every_ray_node_has_token_auth_from_the_env_file() -> None:
    nodes = {
        name: svc
        for name, svc in compose()["services"].items()
        if str(svc.get("command", "")).startswith("ray start")
    }
    assert {"ray-head", "ray-worker", "ray-worker-gpu"} <= set(nodes)
    for name, svc in nodes.items():
        env = svc["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        # a required variable of docker/.env, never a literal
        assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]*\}", env["RAY_AUTH_TOKEN"]), name


def test_k8s_every_ray_container_has_token_auth_from_a_secret() -> None:
    (rc,) = of_kind("RayCluster")
    assert rc["spec"]["authOptions"]["mode"] == "token"
    assert rc["spec"]["authOptions"]["secretName"] == "kdstudy-ray-token"
    pods = list(ray_pods())
    assert {"head", "cpu", "gpu"} <= {p[0] for p in pods}
    (job,) = of_kind("RayJob")
    specs = [(w, spec) for w, spec, _ in pods] + [
        ("submitter", job["spec"]["submitterPodTemplate"]["spec"])
    ]
    for where, spec in specs:
        for c in spec["containers"]:
            env = env_of(c)
            assert env["RAY_AUTH_MODE"].get("value") == "token", where
            tok = env["RAY_AUTH_TOKEN"]
            assert "value" not in tok, where
            ref = tok["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "kdstudy-ray-token", "key": "auth_token"}, where


def test_image_turns_token_auth_on() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ENV RAY_AUTH_MODE=token", text, re.M)
    assert "RAY_AUTH_MODE=disabled" not in text


# -- exposure --------------------------------------------------------------------------


def test_compose_publishes_only_on_loopback() -> None:
    published = []
    for name, svc in compose()["services"].items():
        for port in svc.get("ports") or []:
            spec = resolve(str(port))
            host_ip = spec.rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on {host_ip!r}"
            published.append((name, spec.rsplit(":", 2)[2]))
        assert "network_mode" not in svc, name
    assert sorted(published) == [("mlflow", "5000"), ("ray-head", "8265")]
    env = dict(
        line.split("=", 1)
        for line in (DOCKER / "env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert env["MLFLOW_BIND"] == env["DASHBOARD_BIND"] == "127.0.0.1"


def test_k8s_exposes_nothing_outside_the_cluster() -> None:
    for svc in of_kind("Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
    for where, c in all_containers():
        for port in c.get("ports") or []:
            assert "hostPort" not in port, where
    for _, doc in manifests():
        assert "hostNetwork: true" not in yaml.safe_dump(doc), doc["metadata"]["name"]
    assert not of_kind("Ingress")


# -- MLflow and PostgreSQL -------------------------------------------------------------


@pytest.mark.parametrize("which", ["compose", "k8s"])
def test_mlflow_server_allow_list_basic_auth_no_jobs(which: str, mlflow_server_flags: set) -> None:
    words = mlflow_words_compose() if which == "compose" else mlflow_words_k8s()
    args = after(words, "mlflow server")
    assert set(flags(args)) <= mlflow_server_flags, set(flags(args)) - mlflow_server_flags
    opts = dict(zip(args, args[1:], strict=False))
    hosts = opts["--allowed-hosts"].split(",")
    assert {"mlflow", "mlflow:5000", "127.0.0.1", "127.0.0.1:5000", "localhost:5000"} <= set(hosts)
    assert "*" not in hosts
    assert opts["--app-name"] == "basic-auth"
    assert opts["--backend-store-uri"].startswith(
        "postgresql+psycopg2://mlflow:$"
    )  # password from env
    assert "--serve-artifacts" in args and opts["--artifacts-destination"].startswith("/")
    if which == "compose":
        svc = compose()["services"]["mlflow"]
        env = svc["environment"]
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
        assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
        assert "./mlflow_basic_auth.ini:/etc/mlflow/basic_auth.ini:ro" in svc["volumes"]
        for key in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD"):
            assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", env[key]), key
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    else:
        (dep,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
        pod = dep["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
        assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/mlflow/basic_auth.ini"
        for key in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "kdstudy-mlflow", key
        # the namespace-qualified service names too
        assert "mlflow.${POD_NAMESPACE}.svc.cluster.local:5000" in hosts
        # Kubernetes has no depends_on: an init container waits for PostgreSQL
        (init,) = pod["initContainers"]
        assert "psycopg2.connect" in " ".join(init["command"])


def test_basic_auth_config_holds_no_secret() -> None:
    configs = [(DOCKER / "mlflow_basic_auth.ini").read_text()]
    (cm,) = [d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "mlflow-auth"]
    configs.append(cm["data"]["basic_auth.ini"])
    for text in configs:
        assert "[mlflow]" in text and "default_permission = READ" in text
        assert not re.search(r"^\s*admin_password\s*=", text, re.M)
        assert "database_uri = sqlite:////" in text  # an absolute path on MLflow's own volume


def test_postgres_is_health_checked() -> None:
    pg = compose()["services"]["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    (sts,) = of_kind("StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert "pg_isready" in c["readinessProbe"]["exec"]["command"]
    assert env_of(c)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "kdstudy-postgres"


# -- shared study volume ---------------------------------------------------------------


def test_compose_study_volume_is_mounted_at_the_same_path_on_every_node() -> None:
    services = compose()["services"]
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        assert "studies:/studies" in services[name]["volumes"], name
    head = services["ray-head"]["volumes"]
    assert "state-key:/home/ray/.config/kdstudy" in head  # the resume key outlives the head


def test_k8s_study_volume_is_mounted_at_the_same_path_on_every_pod() -> None:
    (pvc,) = [
        d for d in of_kind("PersistentVolumeClaim") if d["metadata"]["name"] == "kdstudy-studies"
    ]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, spec, _ in ray_pods():
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = [
            m
            for c in spec["containers"]
            for m in c["volumeMounts"]
            if vols[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
            == "kdstudy-studies"
        ]
        assert [m["mountPath"] for m in mounts] == [STUDIES], where
    (job,) = of_kind("RayJob")
    words = shlex.split(job["spec"]["entrypoint"])
    opts = dict(zip(words, words[1:], strict=False))
    assert opts["--storage"].startswith(STUDIES + "/")
    assert opts["--teachers-dir"] == STUDIES + "/teachers"
    assert opts["--tracking-uri"] == "http://mlflow:5000"


def test_k8s_gpu_group_requests_gpus() -> None:
    groups = {w: (spec, params) for w, spec, params in ray_pods()}
    spec, params = groups["gpu"]
    res = spec["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert params["num-gpus"] == "1"
    assert groups["head"][1]["num-cpus"] == "0"  # no trials on the head


# -- no secrets in files ---------------------------------------------------------------


def test_no_password_literal_anywhere() -> None:
    # compose: every secret-looking variable comes from docker/.env
    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}.{key}"
    # k8s: every secret-looking variable comes from a Secret
    for where, c in all_containers():
        for name, e in env_of(c).items():
            if SECRET_NAME.search(name) and name != "RAY_AUTH_MODE":
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{where} {name}"
    # example Secrets and env.example: placeholders only
    for s in of_kind("Secret"):
        for key, value in s["stringData"].items():
            if SECRET_NAME.search(key) or key in ("state.key", "auth_token"):
                assert value.upper().startswith("REPLACE"), f"{s['metadata']['name']}.{key}"
    for line in (DOCKER / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            if SECRET_NAME.search(key):
                assert value.startswith("replace-"), key
    # no URL with an inline password anywhere under docker/
    for path in sorted(DOCKER.rglob("*")):
        if path.is_file():
            for m in re.finditer(r"\w+://[^/\s:@\"']+:([^@\s\"']+)@", path.read_text()):
                assert m.group(1).startswith(("$", "<")), f"{path}: {m.group(0)}"
    # the real env file is never tracked
    tracked = subprocess.run(
        ["git", "ls-files", "docker/.env"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert not tracked.strip()


# -- the image -------------------------------------------------------------------------


def test_dockerfile_layers_and_user() -> None:
    lines = [
        line.strip()
        for line in (DOCKER / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    deps = next(i for i, line in enumerate(lines) if "-r /tmp/requirements.txt" in line)
    source = next(i for i, line in enumerate(lines) if re.match(r"COPY .*\bstudy\b", line))
    project = next(
        i for i, line in enumerate(lines) if re.search(r"pip install .*--no-deps \.", line)
    )
    assert deps < source < project  # dependencies in their own layer, before the source
    assert not any(re.search(r"pip install .*(-e|--editable)\b", line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "FROM ${RAY_IMAGE}" in lines and "ray-ml" not in " ".join(lines)


# -- entry commands use flags the real CLIs accept -------------------------------------


def test_ray_start_commands_use_real_flags(ray_start_flags: set[str]) -> None:
    commands = [
        svc["command"]
        for svc in compose()["services"].values()
        if str(svc.get("command", "")).startswith("ray start")
    ]
    heads = [c for c in commands if "--head" in c]
    assert len(heads) == 1 and all(
        "--address=ray-head:6379" in c for c in commands if c not in heads
    )
    for cmd in commands:
        used = set(flags(command_words(cmd)[2:]))
        assert used <= ray_start_flags, used - ray_start_flags
    # KubeRay turns rayStartParams into `ray start --<key>=<value>`
    for where, _, params in ray_pods():
        used = {f"--{k}" for k in params}
        assert used <= ray_start_flags, (where, used - ray_start_flags)


def _readme_commands(program: str) -> list[list[str]]:
    """The arguments after ``program`` in every command of docker/README.md's code blocks."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (DOCKER / "README.md").read_text(), re.M | re.S)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if program in line and not line.lstrip().startswith("#"):
                out.append(shlex.split(line[line.index(program) + len(program) :], comments=True))
    return out


def test_study_commands_use_real_flags(run_py_flags: set[str]) -> None:
    (job,) = of_kind("RayJob")
    entry = job["spec"]["entrypoint"]
    commands = [shlex.split(entry[entry.index("study/run.py") + len("study/run.py") :])]
    commands += _readme_commands("study/run.py")
    assert len(commands) >= 5, commands
    for words in commands:
        used = set(flags(words))
        assert used <= run_py_flags, (words, used - run_py_flags)
        assert "--space" in used, words


# -- the Dockerfile's install, non-editable, in a scratch folder -----------------------


def test_project_installs_non_editable_and_imports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # exactly what the Dockerfile copies
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("trainables", "study", "search_spaces"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-cache-dir", "--target", str(site), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (site / "study" / "run.py").is_file() and (site / "trainables" / "loop.py").is_file()
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.pth"))
    probe = (
        "import study, study.run, study.resources, trainables, trainables.trainable; "
        "print(study.__file__); print(trainables.__file__)"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": str(BIN), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for line in r.stdout.split():
        assert line.startswith(str(site)), r.stdout  # the installed copy, not the checkout


def test_ray_job_commands_use_real_flags() -> None:
    for sub in ("submit", "logs"):
        out = subprocess.run(
            [str(BIN / "ray"), "job", sub, "--help"], capture_output=True, text=True, timeout=120
        ).stdout
        known = set(re.findall(r"(--[a-z0-9-]+)", out)) | set(re.findall(r"\s(-[a-z]),", out))
        commands = _readme_commands(f"ray job {sub}")
        assert commands, sub
        for words in commands:
            # `ray job submit [flags] -- <entrypoint>`: only the flags before `--`
            words = words[: words.index("--")] if "--" in words else words
            used = {w.split("=", 1)[0] for w in words if w.startswith("-")}
            assert used <= known, (sub, used - known)
