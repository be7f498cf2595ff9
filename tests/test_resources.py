"""A trial that fits on no node is refused in one line (exit 2) instead of Ray Tune
waiting forever for it: ``study/resources.py`` and its call in ``study/run.py``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.resources import check_resources, resource_problem
from tests.test_study_e2e import ENV, REPO, RUN


def node(alive: bool = True, **res: float) -> dict:
    resources = {"memory": 1e9, "object_store_memory": 5e8, "node:10.0.0.1": 1.0, **res}
    return {"Alive": alive, "Resources": resources, "NodeManagerAddress": "10.0.0.1"}


CPU2 = node(CPU=2.0)  # this machine: 2 CPUs, no GPU key at all
GPU_NODE = node(CPU=8.0, GPU=1.0)


def test_fits_on_one_node() -> None:
    assert check_resources({"cpu": 1, "gpu": 0}, [CPU2]) is None
    assert check_resources({"cpu": 2.0, "gpu": 0.0}, [CPU2]) is None
    assert check_resources({"cpu": 4, "gpu": 0.5}, [CPU2, GPU_NODE]) is None
    assert check_resources({"cpu": 8, "gpu": 1}, [CPU2, GPU_NODE]) is None
    assert check_resources({"cpu": 0, "gpu": 0}, [CPU2]) is None
    # custom resources (a worker started with --resources='{"fake_gpu": 2}')
    assert check_resources({"cpu": 1, "fake_gpu": 1}, [CPU2, node(CPU=1, fake_gpu=2)]) is None


def test_gpu_on_a_cpu_cluster_names_gpu() -> None:
    msg = check_resources({"cpu": 1, "gpu": 1}, [CPU2])
    assert msg == (
        "resources.gpu: a trial asks for 1 GPU; no node of this cluster has any "
        "(nodes offer: CPU 2, GPU 0)"
    )
    assert "\n" not in msg


def test_too_many_cpus_names_the_largest_node() -> None:
    msg = check_resources({"cpu": 4, "gpu": 0}, [CPU2, node(CPU=3), node(CPU=2)])
    assert msg is not None
    assert msg.startswith("resources.cpu: a trial asks for 4 CPU; the largest node offers 3 ")
    assert "(nodes offer: CPU 3, GPU 0; CPU 2, GPU 0 (x2))" in msg


def test_fractional_gpu_and_too_large_a_fraction() -> None:
    assert check_resources({"cpu": 1, "gpu": 0.5}, [node(CPU=4, GPU=0.5)]) is None
    msg = check_resources({"cpu": 1, "gpu": 0.75}, [node(CPU=4, GPU=0.5)])
    assert msg is not None and "asks for 0.75 GPU; the largest node offers 0.5" in msg


def test_dead_nodes_do_not_count() -> None:
    msg = check_resources({"cpu": 1, "gpu": 1}, [CPU2, node(alive=False, CPU=8, GPU=4)])
    assert msg is not None and msg.startswith("resources.gpu:")
    assert check_resources({"cpu": 1}, [node(alive=False, CPU=8)]) == (
        "resources: the Ray cluster has no alive node"
    )


def test_each_resource_somewhere_but_never_all_on_one_node() -> None:
    msg = check_resources({"cpu": 4, "gpu": 1}, [node(CPU=8, GPU=0), node(CPU=2, GPU=1)])
    assert msg == (
        "resources: a trial asks for 4 CPU + 1 GPU on one node; no node has all of it "
        "(nodes offer: CPU 8, GPU 0; CPU 2, GPU 1)"
    )


def test_custom_resource_missing() -> None:
    msg = check_resources({"cpu": 1, "fake_gpu": 1}, [CPU2])
    assert msg == (
        "resources.custom.fake_gpu: a trial asks for 1 fake_gpu; no node of this cluster has any "
        "(nodes offer: CPU 2, GPU 0, fake_gpu 0)"
    )


def test_custom_resource_too_small_names_its_spec_key() -> None:
    # the spec's resources.custom.kd_worker: 3, workers started with --resources='{"kd_worker": 2}'
    nodes = [CPU2, node(CPU=2, kd_worker=2)]
    msg = check_resources({"cpu": 1.0, "gpu": 0.0, "kd_worker": 3.0}, nodes)
    assert msg is not None
    assert msg.startswith(
        "resources.custom.kd_worker: a trial asks for 3 kd_worker; the largest node offers 2 "
    ), msg
    assert check_resources({"cpu": 1.0, "gpu": 0.0, "kd_worker": 2.0}, nodes) is None
    # cpu and gpu keep their own keys
    msg = check_resources({"cpu": 4.0, "gpu": 0.0, "kd_worker": 1.0}, nodes)
    assert msg is not None and msg.startswith("resources.cpu: a trial asks for 4 CPU"), msg


def test_skip_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDSTUDY_SKIP_RESOURCE_CHECK", "1")
    assert resource_problem({"cpu": 1000, "gpu": 64}) is None  # never asks Ray


@pytest.mark.slow  # a real study start: teacher, MLflow store, Ray
def test_a_gpu_study_on_this_cpu_machine_exits_2_at_once(tmp_path: Path) -> None:
    space = tmp_path / "gpu.yaml"
    space.write_text(
        f"extends: {REPO / 'search_spaces' / 'quickstart.yaml'}\n"
        "name: needs_gpu\n"
        "resources: {cpu: 1, gpu: 1}\n"
    )
    storage = tmp_path / "st"
    cmd = [*RUN, "--space", str(space), "--storage", str(storage), "--num-samples", "1"]
    cmd += ["--max-epochs", "1", "--teachers-dir", str(tmp_path / "teachers")]
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"}
    env.pop("KDSTUDY_SKIP_RESOURCE_CHECK", None)
    # a short teacher first (3 epochs instead of the recipe's 30; the registry reuses any
    # teacher of the same split), so the run reaches Ray quickly
    teacher = [sys.executable, str(REPO / "study" / "teacher.py"), "--dataset", "digits"]
    teacher += ["--arch", "cnn_large", "--epochs", "3", "--val-fraction", "0.1", "--quiet"]
    teacher += ["--out", str(tmp_path / "teachers")]
    r = subprocess.run(teacher, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # before the fix Ray waited forever: the timeout turns that into a failure
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ray_started = None
        out = []
        for line in proc.stdout:  # the teacher is trained first (~30 s, more on a busy machine)
            out.append(line)
            if "starting Ray" in line:
                ray_started = time.monotonic()
        code = proc.wait(timeout=300)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 2, "".join(out)[-2000:] + err[-3000:]
    assert ray_started is not None, "".join(out)
    took = time.monotonic() - ray_started
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: resources.gpu: a trial asks for 1 GPU; no node"), lines
    assert took < 60, f"{took:.0f}s from starting Ray to the exit"
    # nothing half-done: the study directory this command created (with its MLflow store
    # and any trial output) is gone, so the same command can simply be run again
    assert not storage.exists(), sorted(str(p) for p in storage.rglob("*"))
