"""TVM's CPU thread count: one thread per physical core.

Unless ``TVM_NUM_THREADS`` says otherwise, TVM's runtime runs half the
logical CPUs on x86: it assumes every core runs two hardware threads. Where
cores run one thread each (most small cloud VMs, this project's 2-vCPU
machines) that leaves half of them idle: every compiled model ran on one
core of two. :func:`default_tvm_threads` sets ``TVM_NUM_THREADS`` to the
cores this process may run on, hardware-thread siblings counted once, unless
it is already set; it takes effect only before TVM's thread pool starts (at
the first parallel run or ``tvm.runtime.num_threads()``). The ``tvmc`` and
``tasd`` commands and the speed benchmarks call it first thing.
"""

from __future__ import annotations

import os
from pathlib import Path

_TOPOLOGY = "/sys/devices/system/cpu/cpu{}/topology/thread_siblings_list"


def physical_cores() -> int:
    """Cores this process may run on, each core's hardware threads counted once (all CPUs where unknown)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(_TOPOLOGY.format(cpu)).read_text().strip())
        except OSError:
            cores.add(str(cpu))  # no topology (not Linux, or hidden): count the CPU as a core
    return max(1, len(cores))


def default_tvm_threads() -> int:
    """Set ``TVM_NUM_THREADS`` to :func:`physical_cores` unless it is set; the value in force."""
    return int(os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores())))
