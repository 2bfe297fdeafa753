"""A study's folder on its storage (`--storage`: a folder, or a URI such as s3://bucket/prefix):
the checks before a study starts, its folder, and the filesystem that writes Tune's files whole."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pyarrow
import pyarrow.fs

from iabf.storage import filesystem, folder_problem
from studies.space import SpaceError


def check_storage(storage: str) -> None:
    """A local --storage must be (or be makeable in) a writable folder; a URI is its store's business."""
    if "://" not in storage and (problem := folder_problem(storage)):
        raise SpaceError(f"--storage {storage}: {problem}")


def storage_of(path: str) -> str:
    """A folder made absolute, or a URI (s3://, gs://, file://) as given; no trailing slash."""
    return path.rstrip("/") if "://" in path else str(Path(path).expanduser().resolve())


def local_dir(experiment_dir: str) -> Path:
    """Where this machine keeps a study's log and report: its folder, or ./results/<study>-<time>
    when the study's storage is a URI."""
    return Path(experiment_dir) if "://" not in experiment_dir else Path("results").resolve() / experiment_dir.rsplit("/", 1)[1]


def resolve_experiment(storage: str, study, resume: str | None) -> str:
    """A new study gets a fresh folder <storage>/<study>-<time>; --resume finds an existing one
    (through pyarrow.fs, so a URI storage is searched like a folder)."""
    import pyarrow.fs as pafs

    storage = storage_of(storage)
    if resume is None:
        return f"{storage}/{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    def resumable(where: str) -> bool:
        fs, path = filesystem(where)
        return fs.get_file_info(f"{path}/tuner.pkl").type == pafs.FileType.File

    if resume != "latest":
        path = storage_of(resume)
        if not resumable(path):
            raise SpaceError(f"{path}: not a study folder to resume (no tuner.pkl)")
        return check_tune_state(path)
    fs, root = filesystem(storage)
    prefix = storage[:storage.index("://") + 3] if "://" in storage else ""
    found = sorted(prefix + info.path for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                   if info.type == pafs.FileType.Directory and info.base_name.startswith(f"{study.name}-"))
    found = [f for f in found if resumable(f)]
    if not found:
        raise SpaceError(f"{storage}: no earlier run of study {study.name!r} to resume")
    return check_tune_state(found[-1])


def check_tune_state(experiment_dir: str) -> str:
    """The study folder, if the experiment state Tune resumes from (its newest) can be read: Tune itself
    starts a study over from nothing when it cannot, running trials of a plan the study never had."""
    import pyarrow.fs as pafs

    fs, path = filesystem(experiment_dir)
    states = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path))
                    if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
    if not states:
        raise SpaceError(f"--resume {experiment_dir}: Tune's experiment state (experiment_state-*.json) is missing; "
                         f"the study cannot be resumed")
    try:
        with fs.open_input_stream(states[-1]) as f:
            json.loads(f.readall())
    except (OSError, ValueError) as e:
        raise SpaceError(f"--resume {experiment_dir}: Tune's experiment state {states[-1]} cannot be read ({e}); "
                         f"move it aside to resume from the one before it, if any") from None
    return experiment_dir


def tune_filesystem(experiment_dir: str) -> pyarrow.fs.FileSystem | None:
    """The filesystem Tune writes a study's files through: for a local folder, one that writes each file
    whole or not at all (AtomicWrites); for a URI, Tune's own choice (None: an object store's writes are
    whole already)."""
    return None if "://" in experiment_dir else pyarrow.fs.PyFileSystem(AtomicWrites())


class AtomicWrites(pyarrow.fs.FileSystemHandler):
    """The local filesystem, except that a file is written to <name>.<pid>.part and renamed over <name>
    once whole. Tune rewrites its experiment state in place, and on a full disk (or quota) that leaves
    a short file where the last good one was; Tune restarts a study from scratch when its state cannot be
    read, so a resumed study would run trials of a plan it never had. With this, a write that fails
    leaves the previous file as it was."""

    def __init__(self):
        self.local = pyarrow.fs.LocalFileSystem()

    def open_output_stream(self, path, metadata):
        return pyarrow.PythonFile(_Whole(path), mode="w")

    # --- everything else as the local filesystem does it ---
    def equals(self, other):
        return isinstance(other, AtomicWrites)

    def get_type_name(self):
        return "local-atomic"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the contents of /")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, metadata=metadata)


class _Whole:
    """A file being written: <path>.<pid>.part until closed whole, then renamed to <path>; on any failed
    write the part is removed and <path> is left as it was."""

    def __init__(self, path: str):
        self.path, self.part = path, f"{path}.{os.getpid()}.part"
        self.f = open(self.part, "wb")

    @property
    def closed(self) -> bool:
        return self.f.closed

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.f.tell()

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except BaseException:
            self.discard()
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except BaseException:
            self.discard()
            raise

    def close(self) -> None:
        if self.f.closed:
            return
        try:
            self.f.close()           # flushes: a full disk may say so only here
        except BaseException:
            self.discard()
            raise
        os.replace(self.part, self.path)

    def discard(self) -> None:
        """A failed write: the part goes at once (its writer may never close it), <path> stays as it was."""
        with contextlib.suppress(OSError):
            self.f.close()
        with contextlib.suppress(OSError):
            os.remove(self.part)
