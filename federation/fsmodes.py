"""Private files and folders for a participant's state: folders 0700, files 0600.

A site's state folder holds its privacy ledger, its audit log, its secure-aggregation session
secrets and its split salt; none of it is for other local users. SQLite creates its journal files
(`-wal`, `-shm`, `-journal`) with the mode of the database file itself, so creating the database
file 0600 *before* SQLite opens it makes every file SQLite writes beside it 0600 too, whatever the
process umask; files left by an older version with looser modes are tightened on open.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
"""The files SQLite may create beside a database (WAL index, WAL, rollback journal)."""


class PrivateModeError(OSError):
    """A file or folder cannot be made private (e.g. it belongs to another user)."""


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current == mode:
        return
    try:
        path.chmod(mode)
    except PermissionError as exc:
        raise PrivateModeError(
            exc.errno,
            f"{path} cannot be made mode {mode:04o} (it is {current:04o}; is it owned by another"
            " user?): give it to the user this process runs as, or fix its mode by hand",
        ) from exc


def ensure_private_dir(path: str | Path) -> Path:
    """Create `path` (and missing parents) if needed and make it mode 0700; returns it.

    An existing folder with a looser mode is tightened. Raises PrivateModeError if that is not
    allowed (the folder belongs to someone else), NotADirectoryError if `path` is a file.
    """
    folder = Path(path)
    folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    _tighten(folder, PRIVATE_DIR_MODE)
    return folder


def ensure_private_file(path: str | Path) -> Path:
    """Create `path` empty with mode 0600 if it does not exist, else tighten it to 0600."""
    file = Path(path)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    os.close(fd)
    _tighten(file, PRIVATE_FILE_MODE)
    return file


def prepare_private_sqlite(path: str | Path) -> Path:
    """Before `sqlite3.connect(path)`: the database file exists with mode 0600 (so SQLite gives
    its -wal/-shm/-journal files 0600 as well), and any such files left over are tightened.

    A path SQLite does not treat as a file (":memory:", "", a "file:" URI) is left alone.
    """
    text = str(path)
    if text in ("", ":memory:") or text.startswith("file:"):
        return Path(text)
    database = ensure_private_file(text)
    for suffix in SQLITE_SIDE_SUFFIXES:
        side = Path(text + suffix)
        with contextlib.suppress(FileNotFoundError):
            _tighten(side, PRIVATE_FILE_MODE)
    return database


def write_file_atomic(path: str | Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically with `data`, its final `mode` set before the content lands (no
    readable window), synced: a crash leaves the old file or the new one, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_file_atomic(path: str | Path, data: bytes) -> None:
    """`write_file_atomic` with mode 0600."""
    write_file_atomic(path, data, PRIVATE_FILE_MODE)
