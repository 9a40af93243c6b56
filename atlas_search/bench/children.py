"""Child processes of the GPU check and its helpers: one environment and one runner.

A CUDA fault kills the context of the process it happens in, so the GPU check runs kernel
checks, tests, compiles and benchmark groups as children. They import this checkout
(``PYTHONPATH``), run in their own process group, and are killed with everything they
started when their time is up. Standard library only.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages)


def child_env(extra_path: Sequence[str] = (), **set_vars: str) -> dict[str, str]:
    """This environment with ``extra_path``, then the checkout, first on ``PYTHONPATH``, and
    ``set_vars`` set."""
    env = dict(os.environ, **set_vars)
    env["PYTHONPATH"] = os.pathsep.join(
        [*extra_path, str(PACKAGE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_child(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
              capture: bool = True, cwd: Path = PACKAGE_ROOT) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group (``env`` default :func:`child_env`);
    ``(return code, or None after a timeout, stdout + stderr)``; with ``capture=False`` its
    output goes to ours and the text is empty. On timeout the whole group is killed (its
    own subprocesses included)."""
    out = subprocess.PIPE if capture else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if capture else None,
                            text=True, env=child_env() if env is None else env,
                            cwd=str(cwd), start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output or ""
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = proc.communicate()
        return None, output or ""
