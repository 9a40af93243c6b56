"""Where trials run: Ray tasks (the default, local or a cluster) or inline (debugging).

Both expose ``submit(job, cpu, gpu) -> handle``, ``wait(timeout) -> [(handle, outcome or
exception)]``, ``cancel_all()`` and ``shutdown()``."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from .worker import TrialJob, run_trial


class ClusterError(RuntimeError):
    """Ray could not start or join the cluster: the address and the first line of the
    cause."""


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a Ray ``address`` that ``ray.init`` could only time out on, after
    minutes of retries: one that is not ``HOST:PORT``, a host that does not resolve, a port
    where nothing accepts a connection within ``timeout`` seconds (ClusterError). ``None``
    (a local Ray) and ``auto`` (the cluster this machine belongs to) are Ray's to find."""
    if address is None or address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"Ray cluster {address!r}: expected HOST:PORT (the head node's "
                           "address, e.g. 10.0.0.5:6379) or auto")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ClusterError(f"Ray cluster {address!r}: host {host!r} does not resolve "
                           f"({getattr(exc, 'strerror', None) or exc})") from None
    last: OSError | None = None
    for family, kind, proto, _, where in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(where)
                return
        except OSError as exc:
            last = exc
    why = (last.strerror or type(last).__name__) if last else "no address"
    raise ClusterError(f"Ray cluster {address!r}: nothing accepts connections at "
                       f"{host}:{port} ({why}); is the head node started (ray start --head)?")


class InlineExecutor:
    """Runs each trial in the driver process when ``wait`` is called (one at a time);
    ``stop()`` (the driver's) ends a running trial after its current step, raising
    KeyboardInterrupt from ``wait``."""

    def __init__(self, stop: Callable[[], str | None] | None = None) -> None:
        self._queue: list[tuple[int, TrialJob]] = []
        self._next = 0
        self._stop = stop

    def submit(self, job: TrialJob, cpu: float, gpu: float) -> int:
        self._next += 1
        self._queue.append((self._next, job))
        return self._next

    def wait(self, timeout: float) -> list[tuple[Any, Any]]:
        if not self._queue:
            return []
        handle, job = self._queue.pop(0)
        return [(handle, run_trial(job, stop=self._stop))]

    def node_of(self, handle: Any) -> str:
        return "inline"

    def cancel_all(self) -> None:
        self._queue.clear()

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """Each trial is a Ray task with the spec's resources; ``max_retries=0`` so the driver
    sees a dead worker and decides about retries itself."""

    def __init__(self, address: str | None, object_store_mb: int = 256) -> None:
        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          configure_logging=False)
            if address is None:
                kwargs["object_store_memory"] = object_store_mb * 1024 * 1024
            check_address(address)
            # ray.init installs its own SIGTERM handler (sys.exit): keep the caller's, so
            # that a scheduler's SIGTERM still re-queues the running trials
            keep = (signal.getsignal(signal.SIGTERM)
                    if threading.current_thread() is threading.main_thread() else None)
            try:  # no address: a new local Ray ("local"), not one found through RAY_ADDRESS
                # or a running `ray start` cluster (that is --address auto)
                ray.init(address=address or "local", **kwargs)
            except Exception as exc:  # noqa: BLE001  (no cluster there, bad address, ...)
                lines = str(exc).strip().splitlines()
                where = f"Ray cluster {address!r}" if address else "local Ray"
                raise ClusterError(f"{where}: {lines[0] if lines else type(exc).__name__}"
                                   ) from exc
            finally:
                if keep is not None:
                    signal.signal(signal.SIGTERM, keep)
            self.started = True
        self._remote = ray.remote(_ray_trial)
        self._pending: dict[Any, TrialJob] = {}

    def submit(self, job: TrialJob, cpu: float, gpu: float) -> Any:
        ref = self._remote.options(num_cpus=cpu, num_gpus=gpu, max_retries=0).remote(job)
        self._pending[ref] = job
        return ref

    def wait(self, timeout: float) -> list[tuple[Any, Any]]:
        if not self._pending:
            return []
        ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            self._pending.pop(ref)
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as exc:  # noqa: BLE001  (worker or node died: the driver retries)
                out.append((ref, exc))
        return out

    def cancel_all(self) -> None:
        for ref in list(self._pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        self._pending.clear()

    def shutdown(self) -> None:
        if self.started:
            self.ray.shutdown()


def _ray_trial(job: TrialJob) -> dict[str, Any]:
    import ray

    out = run_trial(job)
    out["node"] = ray.get_runtime_context().get_node_id()
    return out
