"""Output directories: one writer at a time (a lock a dead process does not hold), never overwritten by accident."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import TracebackType

__all__ = ["LockError", "RunLock", "LOCK_NAME", "prepare_output_dir", "write_json_atomic"]

LOCK_NAME = ".growbatch.lock"
MANIFEST_NAME = "experiment.json"


class LockError(RuntimeError):
    """The output directory is in use by another growbatch process."""


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file in a run directory; a lock left by a dead process on this host is taken over."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    owner = {}
                pid = owner.get("pid")
                same_host = owner.get("host") == me["host"]
                if isinstance(pid, int) and (not same_host or _pid_alive(pid)):
                    raise LockError(
                        f"{self.path.parent} is in use by another growbatch run (pid {pid} on "
                        f"{owner.get('host')}); wait for it to finish or choose another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return
        raise LockError(f"could not take the lock {self.path}; remove it if no run is using the directory")

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
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not force:
            raise ValueError(f"--out {out} is not empty and holds no growbatch experiment; "
                             "choose an empty or new directory, or pass --force")
        return False
    try:
        previous = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        previous = None
    if force:
        return False
    if previous != manifest:
        differing = sorted(k for k in set(manifest) | set(previous or {})
                           if (previous or {}).get(k) != manifest.get(k))
        raise ValueError(f"--out {out} holds another experiment (differs in: {', '.join(differing) or 'manifest'}); "
                         "choose another --out, or pass --force to start over")
    if not resume:
        raise ValueError(f"--out {out} already holds this experiment; pass --resume to continue it "
                         "or --force to start over")
    return True
