"""One study, one driver: the driver holds an exclusive lock on its study's folder while it runs, so a
second `--resume` of the same study (a second terminal, a scheduler restarting a job that is still alive)
is refused in one line instead of training and logging the same trials twice. The lock is the kernel's
(flock): a driver that dies, however it dies (SIGKILL, a lost node), releases it, and nothing has to be
cleaned up before a later --resume. The file says who holds it. On a URI storage (s3://) the lock is on
this machine's copy of the study's folder (./results/<study>): it guards this machine only. A filesystem
that cannot lock (Lustre mounted without flock: ENOSYS) is said in one line, not run unguarded."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from iabf.storage import no_room

LOCK_NAME = "driver.lock"


class StudyBusy(RuntimeError):
    """Another live driver runs this study."""


class NoLock(RuntimeError):
    """The study's folder is on a filesystem that cannot lock a file."""


class NoRoom(RuntimeError):
    """The study's folder has no room for even its lock (a full storage, a quota used up)."""


def hold(folder: Path):
    """Lock `folder` for this process (made if need be); returns the open file, which holds the lock
    for as long as it stays open. Raises StudyBusy naming the driver that holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise StudyBusy(f"study {folder} is being run by {holder}; wait for it to end, or stop it "
                        f"(Ctrl-C or kill -TERM on that host), then --resume") from None
    except OSError as e:   # ENOSYS, EOPNOTSUPP, ENOLCK: a filesystem without flock (Lustre's default mount)
        f.close()
        raise NoLock(f"the filesystem of {folder} does not lock files (flock: {os.strerror(e.errno).lower()}), so two "
                     f"drivers of one study could not be kept apart; put the study's folder on a filesystem that "
                     f"does (a local disk, NFS with locking, Lustre mounted with -o flock): --storage, or "
                     f"IABF_STUDIES for cluster/slurm.sbatch") from None
    f.seek(0)
    f.truncate()
    try:
        f.write(f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        f.flush()
    except OSError as e:
        if (full := no_room(e, "the study's lock", str(path))) is None:
            raise
        with contextlib.suppress(OSError):   # closing flushes what could not be written
            f.close()
        raise NoRoom(f"{full}; make room on the storage, then run the study again") from None
    return f
