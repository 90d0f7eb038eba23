"""Output directories: one writer at a time (a lock a dead process does not hold), never overwritten by accident."""

from __future__ import annotations

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
    """An exclusive lock file in a run directory; a lock left by a dead process on this host is taken over."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._held

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LockError` naming the live process that holds it.

        The lock file appears with its owner already in it (written to a private file, then
        hard-linked into place, which fails if the lock exists), so no reader ever sees an empty lock.
        """
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
        mine = self.path.with_name(f"{LOCK_NAME}.{me['pid']}")
        mine.write_text(json.dumps(me))
        try:
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                except FileExistsError:
                    self._refuse_or_clear(me["host"])
                    continue
                self._held = True
                return
        finally:
            mine.unlink(missing_ok=True)
        raise LockError(f"could not take the lock {self.path}; remove it if no run is using the directory")

    def _refuse_or_clear(self, host: str) -> None:
        """Raise LockError if the lock's owner may be alive; else remove the stale lock."""
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            owner = {}
        pid = owner.get("pid") if isinstance(owner, dict) else None
        if isinstance(pid, int) and (owner.get("host") != host or _owner_alive(pid, owner.get("started"))):
            # another host's process cannot be checked from here, so it is assumed alive
            raise LockError(
                f"{self.path.parent} is in use by another growbatch run (pid {pid} on "
                f"{owner.get('host')}); wait for it to finish, choose another --out, or delete "
                f"{self.path} if that process is gone"
            ) from None
        self.path.unlink(missing_ok=True)  # stale: its process is gone (or the file is not a lock)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

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
