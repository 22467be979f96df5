"""What every benchmark shares: the machine/version stamp and result writing.

Each results file records the date, the machine (CPU model, cores), package
versions and the exact command, so a number can always be traced to a run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("tvm-tasd", "apache-tvm", "apache-tvm-ffi", "numpy", "onnxruntime")
RESULTS = Path(__file__).resolve().parent / "results"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _emulated_target():
    from tvm_tasd.hardware import load_target

    return load_target("cpu-emulated").tvm_target()


def _host_target():
    from tvm_tasd.pipeline import HOST, as_tvm_target

    return as_tvm_target(HOST)


#: ``--target(s)`` of the CPU speed benchmarks: the TVM targets their kernels and builds are compiled for
#: (``cpu-emulated``: portable AVX2; ``host``: this machine's CPU).
CPU_TARGETS = {"cpu-emulated": _emulated_target, "host": _host_target}


def stamp(title: str, **extra) -> dict:
    """The metadata block every results file starts with."""
    return {
        "title": title,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "tvm_num_threads": os.environ.get("TVM_NUM_THREADS", "unset")},
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "command": shlex.join(sys.orig_argv),
        **extra,
    }


def stamp_markdown(meta: dict) -> list[str]:
    machine = meta["machine"]
    return [
        f"- date: {meta['date']}",
        f"- machine: {machine['cpu']}, {machine['cpu_count']} cores ({machine['platform']}), "
        f"TVM_NUM_THREADS={machine['tvm_num_threads']}",
        f"- python {meta['python']}; " + ", ".join(f"{p} {v}" for p, v in meta["packages"].items()),
        f"- command: `{meta['command']}`",
        *([f"- note: {meta['note']}"] if "note" in meta else []),
    ]


def write(name: str, data: dict, markdown: str, out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(f"wrote {out / (name + '.md')} and {name}.json")


def run_table(name: str, doc: str, collect, to_markdown, argv: list[str] | None = None) -> dict:
    """The command line of a benchmark that only computes a table: ``--out``, collect, write."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    data = collect()
    write(name, data, to_markdown(data), args.out)
    return data

