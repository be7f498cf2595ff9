"""Test-session settings that must exist before anything imports Ray.

Ray reads its authentication mode once, when it is imported. Tests that start Ray in
this process run it as the product does, with token auth and a fresh token; tests of
the CLI start ``study/run.py`` in subprocesses whose environment they choose.
"""

from __future__ import annotations

import os
import secrets

if os.environ.get("RAY_AUTH_MODE", "token") == "token":
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
