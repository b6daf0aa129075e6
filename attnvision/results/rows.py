"""Atomic result rows. Each run writes its own file, so concurrent sweep jobs can never lose or tear a row."""
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import List

__all__ = ["write_json_atomic", "write_row", "read_rows", "read_sweep_rows", "atomic_write_bytes", "git_commit"]

MAX_NAME_BYTES = 200  # file names stop at 255 bytes; multirun job names (their overrides) can get close


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


def _file_name(run_name: str) -> str:
    """``run_name`` if short enough for a file name, else its head and a digest of the whole, still unique."""
    if len(run_name.encode()) <= MAX_NAME_BYTES:
        return run_name
    digest = hashlib.sha1(run_name.encode()).hexdigest()[:12]
    return run_name.encode()[:MAX_NAME_BYTES - 13].decode(errors="ignore") + "-" + digest


def write_row(rows_dir, run_name: str, row: dict) -> Path:
    """Add ``row`` to the comparison table in ``rows_dir`` as its own file ``<run_name>.json``."""
    return write_json_atomic(Path(rows_dir) / f"{_file_name(run_name)}.json", row)


def _read(files) -> List[dict]:
    """The JSON in ``files``, oldest first."""
    return [json.loads(p.read_text()) for p in sorted(files, key=lambda p: (p.stat().st_mtime, p.name))]


def read_rows(rows_dir) -> List[dict]:
    """Every row in ``rows_dir``, oldest file first; half-written temporaries are never visible."""
    return _read(Path(rows_dir).glob("*.json"))


def read_sweep_rows(sweep_dir) -> List[dict]:
    """The rows of one multirun, oldest first: count_flops jobs write theirs to ``<sweep_dir>/rows/``, train jobs
    keep theirs in their job directory as ``metrics.json`` (the same dict as their row in ``<log_dir>/rows``)."""
    sweep_dir = Path(sweep_dir)
    return _read([*sweep_dir.glob("rows/*.json"), *sweep_dir.glob("*/metrics.json")])


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
