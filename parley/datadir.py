"""The data dir: parley's state on disk, private to the user running it.

It holds the thinking key (``thinking.key``) and the batch database
(``parley.db`` with SQLite's ``-wal`` and ``-shm`` files), which keeps
prompts and results in clear text. The dir is created 0700 and every file
in it is 0600 (also files an older version left 0644). An existing dir that
others can enter is made 0700 when it is parley's alone (owned by this user,
nothing in it but parley's files); any other dir (``--data-dir ~``, say) is
left as it is, with a warning: its parley files are private either way.

Failures here are start-up errors (``ConfigError``), reported in one line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from pathlib import Path

from parley.config import ConfigError

log = logging.getLogger("parley.data")

DATABASE = "parley.db"
# SQLite's companions of the database, created with the database file's mode.
DATABASE_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal")
KEY = "thinking.key"


def _parleys(name: str) -> bool:
    return name in DATABASE_FILES or name == KEY or name.startswith(f".{KEY}.")


def prepare(path: Path) -> Path:
    """``path`` as a usable data dir: created 0700 if absent, tightened if parley's."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # the mode is the last part's
        info = path.stat()
        loose = stat.S_IMODE(info.st_mode) & 0o077
        if loose:
            mode = oct(stat.S_IMODE(info.st_mode))
            owned = info.st_uid == os.geteuid()
            if owned and all(_parleys(name) for name in os.listdir(path)):
                os.chmod(path, 0o700)
                log.warning(
                    "data dir was open to other users; made it private",
                    extra={"path": str(path), "was": mode, "now": "0o700"},
                )
            else:
                log.warning(
                    "data dir is open to other users and holds other files, so it is left "
                    "as it is; parley's files in it are private (0600), but their names "
                    "are visible: give parley a dir of its own or make this one 0700",
                    extra={"path": str(path), "mode": mode},
                )
    except OSError as exc:
        raise ConfigError(f"cannot use the data dir {path}: {exc.strerror or exc}") from exc
    return path


def private_file(path: Path, *, create: bool = False) -> None:
    """Make ``path`` 0600 (creating it empty when ``create``; a missing file is
    otherwise fine). Creating a file here before its owner (SQLite) does fixes its
    mode without touching the process-wide umask."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            _tighten(fd, path, mode)
    finally:
        os.close(fd)


def _tighten(fd: int, path: Path, mode: int) -> None:
    try:
        os.fchmod(fd, 0o600)
    except PermissionError:  # another user's file: say so, but it is theirs to fix
        log.warning("cannot make a data file private", extra={"path": str(path), "mode": oct(mode)})


def write_new(path: Path, data: bytes, *, replace: bool = False) -> bool:
    """Write ``data`` as the 0600 file ``path``, atomically: never a partial file.

    The bytes go to a temp file in the same dir, are fsynced, and the file is
    then linked in as ``path`` (False, nothing written, if ``path`` exists by
    then: another process was first) or, with ``replace``, renamed over it.
    The dir is fsynced so the new name survives a power loss too.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                # Filesystems without hard links: rename, after a check that can
                # race with another process (then the last one's file stays).
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                if path.exists():
                    return False
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a dir; the rename is atomic anyway
        pass
    finally:
        os.close(fd)
