"""Atomic result rows. Each run writes its own file, so concurrent sweep jobs can never lose or tear a row."""
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import List

__all__ = ["write_json_atomic", "write_row", "read_rows", "atomic_write_bytes", "git_commit"]


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; results should read like any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path, obj: dict) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_row(rows_dir, run_name: str, row: dict) -> Path:
    """Add ``row`` to the comparison table in ``rows_dir`` as its own file ``<run_name>.json``."""
    return write_json_atomic(Path(rows_dir) / f"{run_name}.json", row)


def read_rows(rows_dir) -> List[dict]:
    """Every row in ``rows_dir``, oldest file first; half-written temporaries are never visible."""
    files = sorted(Path(rows_dir).glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    return [json.loads(p.read_text()) for p in files]


def git_commit(cwd=None) -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")
