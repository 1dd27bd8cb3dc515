"""JSON files in and out: clear errors on read, atomic replacement on write."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pars.common.errors import PARSError


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Load a JSON document, raising PARSError with the file and position on any problem."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PARSError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise PARSError(f"{what} is a directory, not a file: {path}") from None
    except PermissionError:
        raise PARSError(f"{what} is not readable (permission denied): {path}") from None
    except UnicodeDecodeError as exc:
        raise PARSError(f"{what} is not UTF-8 text: {path} (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PARSError(
            f"{what} is not valid JSON (truncated or corrupt?): {path} "
            f"line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def _temp_beside(path: Path) -> Path:
    # The writer's pid in the name lets a later write tell a leftover of a killed writer from a live one.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove temporaries of `path` left by writers that died mid-write (SIGKILL, power loss):
    `.<name>.<pid>.<random>.tmp` whose pid no longer runs on this host. Nothing reads them; this only
    keeps a directory from collecting dead partial files."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def write_json_atomic(obj: Any, path: str | os.PathLike[str], *, indent: int | None = 2) -> None:
    """Write JSON so that a reader sees either the old file or the complete new one."""
    write_json_files_atomic({Path(path): obj}, indent=indent)


def write_json_files_atomic(files: Mapping[Path, Any], *, indent: int | None = 2) -> None:
    """Write several JSON files, renaming them into place only once all are fully written.

    An interruption while writing leaves no partial file behind (the temporaries are removed; after a
    SIGKILL, which allows no clean-up, the next successful write removes them);
    the format matches the original release (`ensure_ascii=False`, `indent=2`).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, obj in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_beside(path)
            staged.append((tmp, path))
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(obj, f, ensure_ascii=False, indent=indent)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
        for path in files:
            remove_stale_temps(Path(path))
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
