"""A study's storage as its trials and its driver both see it: a local folder or a URI such as
s3://bucket/prefix, through pyarrow.fs; whether a folder can take a study; what to say when it has no
room; the mark that tells a node it sees the driver's folder (studies/reach.py), and whole-file copies
to and from it (datasets, the store's copy). No torch, no Ray: the driver checks its storage before it
imports either."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

NO_ROOM = (errno.ENOSPC, errno.EDQUOT)   # a full disk, a quota used up


class StorageFull(RuntimeError):
    """The study's storage had no room for what a trial writes (its state, its final checkpoint). Retrying
    cannot help: the trial reports it (iabf.tune.STORAGE_FULL) and the driver stops the study, to be
    resumed once there is room; the trial continues from the last state it wrote."""


def filesystem(where: str):
    """(pyarrow filesystem, path) for a local folder (made absolute) or a URI such as s3://bucket/prefix."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(where) if "://" in where else \
        (pyarrow.fs.LocalFileSystem(), str(Path(where).expanduser().resolve()))


def existing(path: str | Path) -> Path:
    """The path made absolute, or its nearest existing parent."""
    here = Path(path).expanduser().resolve()
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def folder_problem(path: str | Path) -> str | None:
    """Why `path` cannot be (or be made into) a folder to write in, or None when it can."""
    here = existing(path)
    if not here.is_dir():
        return f"{here} is a file, not a folder"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{here} is not writable"
    return None


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def room(where: str) -> str:
    """How much room a storage folder has: '1.2 MB free of 3.0 MB' (a URI's is not known here)."""
    if "://" in where:
        return "free space unknown"
    usage = shutil.disk_usage(existing(where))
    return f"{size_text(usage.free)} free of {size_text(usage.total)}"


def no_room(e: OSError, what: str, where: str, size: int | None = None) -> StorageFull | None:
    """A StorageFull for an OSError that says the storage is full (or a quota used up), else None."""
    if e.errno not in NO_ROOM:
        return None
    need = f"{size_text(size)} to write; " if size else ""
    return StorageFull(f"{os.strerror(e.errno).lower()} writing {what} to {where} ({need}{room(where)})")


# --- what every node of a cluster must reach: the study's folder, its datasets ---------------------

MARK = ".iabf-storage"   # in a study's folder: its driver writes a random token, and each node looks for it


def write_mark(experiment_dir: str, token: str) -> None:
    fs, path = filesystem(experiment_dir)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{MARK}") as f:
        f.write(token.encode())


def mark_problem(experiment_dir: str, token: str) -> str | None:
    """Why this node does not see the study's folder as its driver wrote it (a folder on the driver's own
    disk seen from another node), or None when it does."""
    fs, path = filesystem(experiment_dir)
    try:
        with fs.open_input_stream(f"{path}/{MARK}") as f:
            seen = f.readall().decode(errors="replace")
    except FileNotFoundError:
        return f"the study's folder {experiment_dir} is not on this node (its disk is not the driver's)"
    except OSError as e:
        return f"the study's folder {experiment_dir} cannot be read ({' '.join(str(e).split())[:200]})"
    return None if seen == token else f"{experiment_dir} is another folder of the same name (not the driver's)"


def copy(src: str, dst: str) -> None:
    """One file from a folder or URI to another, whole or not at all (written as <dst>.<pid>.part, then moved)."""
    import pyarrow.fs

    (src_fs, src_path), (dst_fs, dst_path) = filesystem(src), filesystem(dst)
    dst_fs.create_dir(dst_path.rsplit("/", 1)[0], recursive=True)
    part = f"{dst_path}.{os.getpid()}.part"
    try:
        pyarrow.fs.copy_files(src_path, part, source_filesystem=src_fs, destination_filesystem=dst_fs)
        dst_fs.move(part, dst_path)
    except BaseException:
        with contextlib.suppress(OSError):
            dst_fs.delete_file(part)
        raise


def size_of(where: str) -> int | None:
    """A file's size in bytes (a folder's or a URI's), None where there is none."""
    import pyarrow.fs

    fs, path = filesystem(where)
    info = fs.get_file_info(path)
    return info.size if info.type == pyarrow.fs.FileType.File else None
