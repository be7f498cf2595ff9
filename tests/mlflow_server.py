"""A real ``mlflow server`` on 127.0.0.1 for tests and benchmarks: SQLite store, proxied
artifacts, job execution off, in its own process group; started, waited for (``/health``)
and stopped in one place."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``start()`` (again after ``stop()``: same port, same database) and ``stop()``."""

    def __init__(
        self, db: Path, artifacts: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.cmd = [sys.executable, "-m", "mlflow", "server"]
        self.cmd += ["--backend-store-uri", f"sqlite:///{Path(db).resolve()}"]
        self.cmd += ["--artifacts-destination", str(artifacts)]
        self.cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not become healthy: {self.log}")

    def stop(self) -> None:
        """The server and its workers (its process group), at once."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
