"""File primitives every writer shares: atomic writes, directory fsync, SHA-256 of a file,
names that never overwrite, stale temporaries, and what an OSError means to a user.

A reader must never see half a file, and a kill must never leave one in place of the old
version: write to a uniquely named temporary sibling, fsync, rename over the target.
Temporaries are hidden (a leading `.`) and end in `.tmp`, so any later process holding the
run's lock can recognise and remove those a killed or failed writer left behind.
"""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from pathlib import Path

#: errno values that mean "the disk (or quota) is full": the user frees space and resumes.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: errno values a user's environment causes (permissions, read-only disks, odd paths); a
#: command that meets one reports it as an error, not as a bug with a traceback.
ENVIRONMENT_ERRNOS = DISK_FULL_ERRNOS | frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR,
    errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EIO})


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path` that `remove_stale_temporaries` recognises."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` via a temporary sibling and os.replace."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = temporary_sibling(path)
    # os.open with 0o666 keeps the user's umask (tempfile would force 0o600).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_new_file(path: Path, data: str) -> Path:
    """Write `data` to `path`, or to `stem-2.suffix`, `stem-3.suffix`... if it exists: never
    overwrites a file (the name is claimed with O_EXCL, so two writers cannot share one).
    Returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in _numbered(path):
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        return candidate
    raise AssertionError("unreachable")


def _numbered(path: Path):
    yield path
    number = 2
    while True:
        yield path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1


def unused_name(path: Path) -> Path:
    """`path` if nothing is there, else the first free `name-2`, `name-3`... beside it: for
    moving something aside without ever replacing (and so deleting) an earlier copy."""
    for candidate in _numbered(Path(path)):
        if not os.path.lexists(candidate):
            return candidate
    raise AssertionError("unreachable")


def remove_stale_temporaries(folder: Path, patterns: tuple[str, ...] = (".*.tmp",)) -> list[Path]:
    """Delete temporaries (files or folders) matching `patterns` anywhere under `folder`;
    returns what was removed. Only call it while holding the lock of what `folder` belongs
    to: then no live writer can own them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for pattern in patterns:
        for path in sorted(folder.rglob(pattern), key=lambda p: len(p.parts), reverse=True):
            if not os.path.lexists(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


#: How MXNet (dmlc-core) reports a failed fwrite: it gives no errno, and on a local disk it
#: is a full disk (seen on a full tmpfs while saving a checkpoint's arrays).
MXNET_WRITE_FAILED = "FileStream.Write incomplete"


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (an OSError, or MXNet's error text of a failed write) means no space."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return any(sign in text for sign in ("No space left on device", "Disk quota exceeded",
                                         MXNET_WRITE_FAILED))


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def is_environment_error(exc: BaseException) -> bool:
    """Whether `exc` is an OSError the user's environment caused (not a bug)."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def describe_os_error(exc: OSError) -> str:
    """`No space left on device: 'path'`, without Python's `[Errno N]` prefix."""
    reason = exc.strerror or str(exc)
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{reason}: {' -> '.join(repr(n) for n in names)}" if names else reason
