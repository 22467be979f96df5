"""Run independent benchmark jobs locally (processes) or on a Ray cluster.

A sweep over models × variants × targets × budgets is embarrassingly
parallel. ``run(fn, jobs)`` maps a picklable top-level function over job
dicts: with ``ray_address`` (``"auto"``, ``"local"`` or ``"ray://host:port"``)
through Ray's own task API, otherwise through a local process pool. Results
come back in job order either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor


def run(fn: Callable[[dict], dict], jobs: Sequence[dict], workers: int | None = None,
        ray_address: str | None = None) -> list[dict]:
    if ray_address is not None:
        return _run_ray(fn, jobs, ray_address)
    workers = workers or max(1, (os.cpu_count() or 1) // 2)
    if workers == 1:
        return [fn(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, jobs))


def _run_ray(fn, jobs, address: str) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise SystemExit("--ray needs Ray: pip install 'ray[default]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(fn)
        return ray.get([remote.remote(job) for job in jobs])
    finally:
        if started_here:
            ray.shutdown()
