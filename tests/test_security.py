"""Security properties of a local study (issue: reliability and security, "Security").

- a private local Ray runs with token auth: a client without the study's token, or
  with auth disabled, is refused; with it, admitted;
- ``--resume`` never unpickles a file the driver did not sign with the user's key
  (kept outside the study directory): a planted ``tuner.pkl`` is refused in one line,
  before Ray starts, and its code never runs;
- a spec ``name`` cannot escape the studies folder, and a refused input writes nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from study import integrity
from study.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "study" / "run.py")]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["KDSTUDY_STATE_KEY"] = str(tmp_path / "key" / "state.key")
    return env


# -- Ray token auth ---------------------------------------------------------------------

PROBE = """
import ray, sys
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
    print("admitted", ray.cluster_resources().get("CPU"))
except Exception as exc:
    print("refused", type(exc).__name__)
"""


SERVER = """
import os, sys
from study.ray_phases import start_ray
from study.run import secure_ray_env
assert secure_ray_env(None) is None  # exactly what run.py does before starting Ray
start_ray(None)
import ray
print(ray.get_runtime_context().gcs_address, os.environ["RAY_AUTH_MODE"],
      os.environ["RAY_AUTH_TOKEN"], flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


@pytest.mark.slow
def test_private_local_ray_refuses_clients_without_the_study_token(tmp_path: Path) -> None:
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    bare["PYTHONPATH"] = str(REPO)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        env={**bare, "HOME": str(tmp_path)},  # a token file in ~/.ray must not matter
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        gcs, mode, token = server.stdout.readline().split()
        assert mode == "token" and len(token) >= 32
        assert not (tmp_path / ".ray").exists()  # the token was never written to disk
        cases = {
            "no token": {**bare, "HOME": str(tmp_path)},
            "wrong token": {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x" * 64},
            "auth disabled": {**bare, "RAY_AUTH_MODE": "disabled"},
            "the token": {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        }
        seen = {}
        for name, env in cases.items():
            r = subprocess.run(
                [sys.executable, "-c", PROBE, gcs],
                # a refused client gives up after 5 s instead of Ray's default minute
                env={**env, "RAY_gcs_rpc_server_connect_timeout_s": "5"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            seen[name] = (r.stdout.strip().splitlines() or ["crashed"])[-1]
        assert seen["the token"].startswith("admitted"), seen
        for name in ("no token", "wrong token", "auth disabled"):
            assert seen[name].startswith("refused"), seen
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def test_auth_disabled_is_never_silent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.run import secure_ray_env

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert secure_ray_env(None) is None
    assert "token authentication is OFF" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_MODE", "sometimes")
    assert "allowed: token, disabled" in (secure_ray_env(None) or "")


def test_the_cli_sets_the_auth_mode_before_anything_imports_ray() -> None:
    """Ray reads RAY_AUTH_MODE once, when it is imported: were any module that study/run.py
    imports at the top to import Ray, the driver would talk to its own token-protected
    Ray without the token (every study fails to start)."""
    code = (
        "import sys; sys.argv = ['run.py']; import study.run, study.cli_checks, study.preflight; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout


# -- signed state ------------------------------------------------------------------------


class Payload:
    """Unpickling this runs ``touch <path>``: what a planted pickle would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.path}",)


def test_sign_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDSTUDY_STATE_KEY", str(tmp_path / "cfg" / "state.key"))
    key = integrity.load_key(create=True)
    assert (tmp_path / "cfg" / "state.key").stat().st_mode & 0o077 == 0  # private
    exp = tmp_path / "exp"
    (exp / "t1").mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"ours")
    (exp / "t1" / "error.pkl").write_bytes(b"err")
    (exp / "t1" / "result.json").write_text("{}")  # not unpickled by Ray: not guarded
    integrity.sign(exp, [exp / "tuner.pkl", exp / "t1" / "error.pkl"], key)
    integrity.verify(exp, key)
    # the staged manifest signs what Ray saved in its local staging folder
    staged = tmp_path / "staging"
    staged.mkdir()
    (staged / "experiment_state-1.json").write_text('{"trial_data": []}')
    integrity.sign_staged_state(staged, key)
    (exp / "experiment_state-1.json").write_bytes((staged / "experiment_state-1.json").read_bytes())
    (exp / integrity.STAGED_MANIFEST).write_bytes((staged / integrity.STAGED_MANIFEST).read_bytes())
    integrity.verify(exp, key)
    # a changed byte, a new file, a swapped name or another key: refused
    for tamper in ("change", "plant", "swap", "key"):
        bad = tmp_path / f"bad-{tamper}"
        subprocess.run(["cp", "-r", str(exp), str(bad)], check=True)
        k = key
        if tamper == "change":
            (bad / "tuner.pkl").write_bytes(b"ourS")
        elif tamper == "plant":
            (bad / "searcher-state-x.pkl").write_bytes(b"x")
        elif tamper == "swap":
            (bad / "t1" / "error.pkl").write_bytes(b"ours")
        else:
            k = b"k" * 32
        with pytest.raises(integrity.IntegrityError, match="not signed"):
            integrity.verify(bad, k)


def test_a_torn_copy_is_restored_only_from_this_experiments_verified_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that filled while Ray copied its staging folder into the study directory left
    the copy torn (seen: an empty signature manifest, a missing searcher pickle). --resume
    restores it from the staging folder the note names, only if that is this experiment's
    folder and every file in it verifies; anything else changes nothing."""
    monkeypatch.setenv("KDSTUDY_STATE_KEY", str(tmp_path / "cfg" / "state.key"))
    key = integrity.load_key(create=True)

    def staging(name: str) -> Path:
        folder = tmp_path / "session" / "artifacts" / "ts" / name / "driver_artifacts"
        folder.mkdir(parents=True)
        (folder / "experiment_state-1.json").write_text('{"trial_data": [1, 2]}')
        (folder / "searcher-state-1.pkl").write_bytes(b"searcher")
        integrity.sign_staged_state(folder, key)
        return folder

    exp = tmp_path / "study" / "ray" / "search"
    exp.mkdir(parents=True)
    good = staging("search")
    (exp / "experiment_state-1.json").write_text('{"trial_data": [1')  # torn
    (exp / integrity.STAGED_MANIFEST).write_bytes(b"")
    torn = sorted((p.name, p.read_bytes()) for p in exp.iterdir())
    with pytest.raises(integrity.IntegrityError):
        integrity.verify(exp, key)
    assert integrity.recover_from_staging(exp, key) is None  # no note: nothing to use
    for bad in ("other-experiment", "changed"):
        folder = staging("baselines") if bad == "other-experiment" else good
        if bad == "changed":
            (folder / "searcher-state-1.pkl").write_bytes(b"planted")
        (exp / integrity.STAGING_NOTE).write_text(str(folder))
        assert integrity.recover_from_staging(exp, key) is None, bad
        assert sorted((p.name, p.read_bytes()) for p in exp.iterdir() if p.suffix != ".txt") == (
            torn
        )
    (good / "searcher-state-1.pkl").write_bytes(b"searcher")
    integrity.sign_staged_state(good, key)
    (exp / integrity.STAGING_NOTE).write_text(str(good))
    assert integrity.recover_from_staging(exp, key) == good
    integrity.verify(exp, key)
    assert (exp / "searcher-state-1.pkl").read_bytes() == b"searcher"
    assert (exp / "experiment_state-1.json").read_text() == '{"trial_data": [1, 2]}'


def _planted_study(tmp_path: Path) -> tuple[Path, Path]:
    spec = load_spec(QUICKSTART)
    storage = tmp_path / "study"
    exp = storage / "ray" / "search"
    exp.mkdir(parents=True)
    meta = {"spec_hash": spec.spec_hash(), "space": str(QUICKSTART), "study_id": "x"}
    (storage / "study.json").write_text(json.dumps(meta))
    marker = tmp_path / "pwned"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    return storage, marker


def test_resume_refuses_a_planted_tuner_pickle_before_ray_starts(tmp_path: Path) -> None:
    storage, marker = _planted_study(tmp_path)
    env = clean_env(tmp_path)
    cmd = [*RUN, "--space", str(QUICKSTART), "--storage", str(storage), "--resume"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    # no key yet (nobody ever ran a study as this user): refused
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no study signing key" in r.stderr, r.stderr
    # a key exists, but it never signed this file: refused, naming the file
    integrity_key = Path(env["KDSTUDY_STATE_KEY"])
    integrity_key.parent.mkdir(parents=True)
    integrity_key.write_bytes(os.urandom(32))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "tuner.pkl: not signed" in lines[0], r.stderr
    assert "Ray" not in r.stdout and not marker.exists()  # never unpickled, Ray never started
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "key" not in p.parts)
    assert after == [p for p in before if "key" not in p.parts]  # nothing written


def test_study_name_cannot_escape_and_refusals_write_nothing(tmp_path: Path) -> None:
    from study.spec import SpecError

    for name in ("../evil", "a/b", "/abs", ".hidden", "x" * 101, "a\\b"):
        space = tmp_path / "s.yaml"
        space.write_text(f"extends: {QUICKSTART}\nname: {json.dumps(name)}\n")
        with pytest.raises(SpecError, match=r"s\.yaml: name: .*letters, digits"):
            load_spec(space)
    # and through the CLI: one line, exit 2, nothing written (not even the studies folder)
    space.write_text(f"extends: {QUICKSTART}\nname: ../evil\n")
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(
        [*RUN, "--space", str(space)],
        cwd=work,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["s.yaml", "work"]


def test_a_refused_teacher_leaves_nothing_behind(tmp_path: Path) -> None:
    """A missing non-embedded teacher is refused before the study, its default registry
    (<storage>/teachers) or any lock file exists."""
    env = clean_env(tmp_path)
    space = tmp_path / "s.yaml"
    space.write_text(
        f"extends: {QUICKSTART}\n"
        f"trial: {{data: {{dataset: cifar10, root: {tmp_path / 'nodata'}}}}}\n"
    )
    storage = tmp_path / "studies" / "st"
    r = subprocess.run(
        [*RUN, "--space", str(space), "--storage", str(storage)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["s.yaml"]
