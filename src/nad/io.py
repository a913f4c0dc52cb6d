"""Atomic output: each file is written to a temporary name beside its target, then renamed; a command's
files are published together as one set (``output_set``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nad.errors import NadError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600, and some writers (safetensors) recreate the file: set the usual permissions
        # on what was written, just before it takes the target's name.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# -- output sets -------------------------------------------------------------------------------------------
#
# A command's outputs (model, sidecar, results, report) form one set. They are written into a fresh sibling
# folder ``.NAME.nad-new-PID``; a manifest of their SHA-256 sums is added; then the folder takes the
# output's name in one step: ``renameat2(RENAME_EXCHANGE)`` swaps it with an existing output on Linux (a
# rename where there is none), so a reader finds the whole old set or the whole new one, never a mix. The old
# set, now in the sibling, is deleted. A run killed before the swap leaves only its sibling folder, which the
# next run on the same output removes (once its process is gone).

MANIFEST = "manifest.json"
_RENAME_EXCHANGE = 2


def check_out_dir(path: str | Path, overwrite: bool, resumable: str | None = None) -> Path:
    """``--out``: refuse an existing non-empty folder unless ``overwrite`` (or, with ``resumable``, unless it
    holds that file: a folder an earlier run of the same command wrote and will go on with), and anything
    that is not a folder."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NadError(f"--out {out}: exists and is not a directory")
    mine = resumable is not None and (out / resumable).is_file()
    if out.is_dir() and any(out.iterdir()) and not overwrite and not mine:
        what = "not empty" if resumable is None else "not empty and not a nad bench folder"
        raise NadError(f"--out {out}: {what} (use --overwrite to write into it)")
    if not out.parent.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)  # an OSError here is reported as one line by the CLI
    return out


def sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.nad-{tag}"


@contextlib.contextmanager
def output_set(target: str | Path, stage: Path | None = None) -> Iterator[Path]:
    """Yield a folder to write the outputs into; on success it replaces ``target`` as one set.

    ``stage`` (default: a fresh ``.NAME.nad-new-PID`` beside ``target``) is kept on failure when given, so that a
    training run can resume from what it holds; a default one is removed.
    """
    target = Path(target)
    remove_stale(target)
    folder = stage or sibling(target, f"new-{os.getpid()}")
    folder.mkdir(parents=True, exist_ok=stage is not None)
    try:
        yield folder
        write_manifest(folder)
        publish(folder, target)
    except BaseException:
        if stage is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def publish(folder: Path, target: Path) -> None:
    """Give ``folder`` the name ``target`` in one step; an existing ``target`` is swapped out and deleted."""
    fsync_files(folder)
    fsync_entries(folder)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(folder, target)
    elif exchange(folder, target):
        shutil.rmtree(folder)  # now holds the old set
    else:  # no atomic exchange here: two renames, with a moment in which target is missing (never mixed)
        old = sibling(target, f"old-{os.getpid()}")
        os.replace(target, old)
        os.replace(folder, target)
        shutil.rmtree(old)
    fsync_entries(target.parent)  # the rename itself, not the files of the parent folder


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where it is unavailable."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def remove_stale(target: Path) -> None:
    """Delete the sibling folders that killed runs left beside ``target`` (``nad-new-PID``, ``nad-old-PID``)."""
    if not target.parent.is_dir():
        return
    for path in target.parent.glob(f".{glob_escape(target.name)}.nad-*-*"):
        kind, _, pid = path.name.rpartition(".nad-")[2].partition("-")
        if kind in ("new", "old") and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder of this very process is stale by the time it looks again
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(folder: Path) -> None:
    """``manifest.json``: the SHA-256 of every file of the set, so that a reader can check it is whole."""
    files = {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json(folder / MANIFEST, {"format": "nad-output/1", "files": files})


def verify_output_set(folder: Path) -> bool:
    """Whether ``folder`` holds exactly the files its manifest lists, with those contents."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    return present == set(listed) and all(sha256(folder / name) == digest for name, digest in listed.items())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_files(path: Path) -> None:
    """Make every file of a set durable before the set is published."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())


def fsync_entries(path: Path) -> None:
    """Make a folder's entries (names, renames) durable; its files are left alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
