"""Run independent benchmark jobs locally (processes) or on a Ray cluster.

A sweep over models × variants × targets × budgets is embarrassingly
parallel. ``run(fn, jobs)`` maps a picklable top-level function over job
dicts: with ``ray_address`` (``"auto"``, ``"local"`` or ``"ray://host:port"``)
through Ray's own task API, otherwise through a local process pool. Results
come back in job order either way.

With ``checkpoint`` (a JSON-lines file) each finished row is appended as it
arrives, and a rerun skips the jobs already there: an hours-long sweep that
dies (or is stopped) resumes where it was, instead of losing every row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm


def _key(job: dict) -> str:
    return json.dumps(job, sort_keys=True)


def _finished(checkpoint: Path | None) -> dict[str, dict]:
    if checkpoint is None or not checkpoint.exists():
        return {}
    rows = {}
    for line in checkpoint.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the crash being resumed from
            continue
        rows[entry["key"]] = entry["row"]
    return rows


def run(fn: Callable[[dict], dict], jobs: Sequence[dict], workers: int | None = None,
        ray_address: str | None = None, checkpoint: Path | None = None) -> list[dict]:
    done = _finished(checkpoint)
    todo = [job for job in jobs if _key(job) not in done]
    if done and todo != list(jobs):
        print(f"resuming from {checkpoint}: {len(jobs) - len(todo)} of {len(jobs)} jobs already done")
    if ray_address is not None:
        finished = _run_ray(fn, todo, ray_address)
    else:
        finished = _run_local(fn, todo, local_workers(workers))
    for job, row in tqdm(finished, total=len(todo), desc="jobs", leave=False):
        done[_key(job)] = row
        if checkpoint is not None:
            with checkpoint.open("a") as file:
                file.write(json.dumps({"key": _key(job), "row": row}) + "\n")
    return [done[_key(job)] for job in jobs]


def local_workers(workers: int | None) -> int:
    """``workers``, by default half the cores; each local worker's thread pools get cores / workers threads."""
    return workers or max(1, (os.cpu_count() or 1) // 2)


def _run_local(fn, jobs, workers: int) -> Iterator[tuple[dict, dict]]:
    if workers == 1:
        yield from ((job, fn(job)) for job in jobs)
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    with ProcessPoolExecutor(max_workers=workers, initializer=_share_cores, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, job): job for job in jobs}
        try:
            yield from ((futures[f], f.result()) for f in as_completed(futures))
        except BaseException:  # a failed job ends the sweep now, not after every queued job has run
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _share_cores(threads: str) -> None:
    """Split the cores between the workers: oversubscribed onnxruntime/TVM thread pools spin against each other."""
    os.environ.setdefault("TVM_TASD_ORT_THREADS", threads)
    os.environ.setdefault("TVM_NUM_THREADS", threads)


def _run_ray(fn, jobs, address: str) -> Iterator[tuple[dict, dict]]:
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
        pending = {remote.remote(job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ready[0]), ray.get(ready[0])
    finally:
        if started_here:
            ray.shutdown()
