"""Output directories: one writer at a time (a lock a dead process does not hold), never overwritten by accident."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

__all__ = ["LockError", "RunLock", "LOCK_NAME", "prepare_output_dir"]

LOCK_NAME = ".growbatch.lock"
MANIFEST_NAME = "experiment.json"


class LockError(RuntimeError):
    """The output directory is in use by another growbatch process."""


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (command) "; the command may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5), starttime


def _read_owner(path: Path) -> dict:
    """The owner a lock file names, or {} when it is empty, torn or not a lock."""
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not unlinked, nor replaced by a new one)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _owner_alive(pid: int, started: str | None) -> bool:
    """Whether the process that wrote a lock still runs.

    Its pid must exist and, where both are known, have started when the lock says: a pid reused by
    another process (as after a restart in a fresh container) does not keep the lock.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(pid)
    return started is None or now is None or now == started


class RunLock:
    """An exclusive lock file in a run directory; a lock left by a dead process on this host is taken over.

    NOTE [flock]: the owner holds an OS advisory lock (``fcntl.flock``) on the lock file for as long as it
    runs; the kernel drops it when the process dies, however it dies. Whoever takes the flock decides
    alone, so two processes can never both take over a stale lock. The file names the owner (pid, host,
    start time) for messages, and a lock that names another host (a shared file system, whose flocks may
    not reach here) or a live process that holds no flock (another growbatch version) is still respected.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._file: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LockError` naming the live process that holds it."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
        for _ in range(100):  # another process may unlink the file between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockError(self._in_use(_read_owner(self.path))) from None
            except BaseException:
                os.close(fd)
                raise
            if not _same_file(fd, self.path):  # released (unlinked) by its owner meanwhile: open the new one
                os.close(fd)
                continue
            try:
                self._refuse_if_alive(_read_owner(self.path), me["host"])
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(me).encode(), 0)
            except BaseException:
                os.close(fd)  # the flock goes with it; the file, another's, stays
                raise
            self._file = fd
            return
        raise LockError(f"could not take the lock {self.path}; remove it if no run is using the directory")

    def _in_use(self, owner: dict) -> str:
        return (f"{self.path.parent} is in use by another growbatch run (pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}); wait for it to finish, choose another --out, or delete "
                f"{self.path} if that process is gone")

    def _refuse_if_alive(self, owner: dict, host: str) -> None:
        """Raise LockError if the lock names another host or a live process here; else it is stale."""
        pid = owner.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
            return  # empty, torn or not a lock (a pid of 10**30 is none)
        if owner.get("host") != host or _owner_alive(pid, owner.get("started")):
            # another host's process cannot be checked from here, so it is assumed alive
            raise LockError(self._in_use(owner))

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # while still holding the flock (see _same_file)
            os.close(self._file)
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def prepare_output_dir(out: Path, manifest: dict, *, resume: bool, force: bool) -> bool:
    """Check that ``out`` may receive this experiment; returns True when earlier results will be continued.

    A directory that holds another experiment, or results of this one without ``resume``,
    is refused unless ``force``; nothing in it is deleted here.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; choose another path")
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.exists():
        if out.exists() and any(not p.name.startswith(LOCK_NAME) for p in out.iterdir()) and not force:
            raise ValueError(f"--out {out} is not empty and holds no growbatch experiment; "
                             "choose an empty or new directory, or pass --force")
        return False
    try:
        previous = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        previous = None
    if force:
        return False
    if not isinstance(previous, dict):
        raise ValueError(f"--out {out} has an unreadable {MANIFEST_NAME} (not a JSON object), so its results cannot "
                         "be matched to this experiment; choose another --out, or pass --force to start over")
    if previous != manifest:
        differing = sorted(k for k in set(manifest) | set(previous) if previous.get(k) != manifest.get(k))
        raise ValueError(f"--out {out} holds another experiment (differs in: {', '.join(differing) or 'manifest'}); "
                         "choose another --out, or pass --force to start over")
    if not resume:
        raise ValueError(f"--out {out} already holds this experiment; pass --resume to continue it "
                         "or --force to start over")
    return True
