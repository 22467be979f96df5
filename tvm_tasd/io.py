"""Files written whole or not at all, and ``.npz`` archives read with one-line errors.

Every file the library and the commands write (plans, reports, artifacts,
outputs) goes through :func:`atomic_output`: a failed or interrupted write
never leaves a partial file at the destination, and :func:`check_not_inputs`
keeps an output from overwriting what the same command reads.
:func:`private_tempdir` gives compilers that write temporary files (TVM's
``export_library``) a folder of the command's own, removed with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path`` and rename it to ``path`` only if the block succeeds.

    The temporary file is created on entry, so an unwritable destination
    fails (``ValueError``) before any expensive work.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as err:
        problem = "no such directory" if isinstance(err, FileNotFoundError) else err.strerror
        raise ValueError(f"cannot write {path}: {problem}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result is an ordinary user file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_not_inputs(outputs, inputs) -> None:
    """Refuse an output path that is one of the command's input files (it would be overwritten)."""
    existing = [Path(p) for p in inputs if p is not None and Path(p).exists()]
    for output in (Path(p) for p in outputs if p is not None and Path(p).exists()):
        for clash in (p for p in existing if os.path.samefile(output, p)):
            raise ValueError(f"output {output} is the input {clash}: it would be overwritten; write elsewhere")


@contextlib.contextmanager
def private_tempdir():
    """Inside the block, Python's temporary files (and TVM's, which use them) go to a new folder,
    removed when the block ends — also on an error or an interrupt."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="tvm_tasd-") as folder:
        tempfile.tempdir = folder
        try:
            yield Path(folder)
        finally:
            tempfile.tempdir = previous


def parse_json(text: str | bytes, what: str):
    """JSON from ``text``; ``what`` names it in the one-line error (bad bytes, bad syntax, absurd nesting)."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        problem = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
        raise ValueError(f"{what} is not valid JSON ({problem})") from None


def write_text(path, text: str) -> None:
    """``text`` written to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def save_npz(path, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    """``np.savez`` (or ``savez_compressed``) written atomically (a file handle: savez would append
    .npz to a temporary name)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)


def load_npz(path, what: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; ``what`` names the file's role in the errors."""
    archive = _numpy_file(path, what, "an .npz archive (write it with np.savez)")
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{what} file {path} holds a single array; use np.savez(path, name=array, …)")
    try:
        with archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # a member that is no array, pickles included
        raise ValueError(f"{what} file {path} holds something other than arrays (np.savez writes arrays)") from None


def load_npy(path, what: str) -> np.ndarray:
    """The one array of a .npy file, with one-line errors."""
    array = _numpy_file(path, what, "a .npy array (write it with np.save)")
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"{what} file {path} is an .npz archive, not one .npy array")
    return array


def _numpy_file(path, what: str, expected: str):
    """``np.load`` without pickles: an array or an open archive; anything else is a ValueError."""
    if Path(path).is_dir():
        raise ValueError(f"{what} file {path} is a folder")
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{what} file {path} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise ValueError(f"{what} file {path} is not {expected}") from None


def fingerprint(array: np.ndarray) -> str:
    """Content hash of a tensor (shape, dtype and bytes)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha1(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:20]
