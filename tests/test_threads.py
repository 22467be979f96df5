"""TVM's thread count: one thread per physical core unless the user set TVM_NUM_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tvm_tasd import threads


def _topology(tmp_path, siblings: dict[int, str]) -> str:
    for cpu, text in siblings.items():
        (tmp_path / f"cpu{cpu}").mkdir()
        (tmp_path / f"cpu{cpu}" / "siblings").write_text(text + "\n")
    return str(tmp_path / "cpu{}" / "siblings")


@pytest.mark.parametrize("siblings, cores", [
    ({0: "0", 1: "1"}, 2),  # two single-thread cores (small cloud VMs): TVM alone would use one
    ({0: "0-1", 1: "0-1", 2: "2-3", 3: "2-3"}, 2),  # two cores with two hardware threads each
    ({0: "0,4", 1: "1,5", 4: "0,4", 5: "1,5"}, 2),  # siblings listed with commas
])
def test_physical_cores_counts_hardware_thread_siblings_once(tmp_path, monkeypatch, siblings, cores):
    monkeypatch.setattr(threads, "_TOPOLOGY", _topology(tmp_path, siblings))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(siblings))
    assert threads.physical_cores() == cores


def test_physical_cores_counts_cpus_without_topology(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_TOPOLOGY", str(tmp_path / "absent{}"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert threads.physical_cores() == 3


def test_a_set_thread_count_wins(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "5")
    assert threads.default_tvm_threads() == 5
    assert os.environ["TVM_NUM_THREADS"] == "5"


def test_tvm_runs_one_thread_per_physical_core():
    """In a fresh process: TVM's runtime takes the count when its pool starts after the call."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    code = ("from tvm_tasd.threads import default_tvm_threads, physical_cores; default_tvm_threads(); "
            "import tvm; print(tvm.runtime.num_threads(), physical_cores())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    used, cores = map(int, out.stdout.split())
    assert used == cores
