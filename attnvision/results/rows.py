"""Atomic result rows. Each run writes its own file, so concurrent sweep jobs can never lose or tear a row."""
import hashlib
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import List

from attnvision.errors import ConfigError

__all__ = ["write_json_atomic", "write_row", "read_rows", "read_sweep_rows", "atomic_write_bytes", "git_commit",
           "FINISHED", "DIVERGED"]

MAX_NAME_BYTES = 200  # file names stop at 255 bytes; multirun job names (their overrides) can get close
# A row's ``status``: finished, or diverged when its loss became NaN or inf (its metrics may then be null or
# meaningless). Rows written before the key existed finished.
FINISHED, DIVERGED = "finished", "diverged"


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


def _finite(obj):
    """``obj`` with every non-finite float (NaN, inf), numpy and torch scalars included, made None, through dicts
    and lists; other scalars as Python numbers. Strict JSON has no NaN: pandas, jq and browsers reject it."""
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):  # numpy scalar, 0-d array or tensor
        obj = obj.item()
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def write_json_atomic(path, obj: dict) -> Path:
    """Write ``obj`` to ``path`` as strict JSON (non-finite floats as null, other objects as their text), whole or
    not at all."""
    text = json.dumps(_finite(obj), indent=2, default=str, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def _file_name(run_name: str) -> str:
    """``run_name`` if short enough for a file name, else its head and a digest of the whole, still unique."""
    if len(run_name.encode()) <= MAX_NAME_BYTES:
        return run_name
    digest = hashlib.sha1(run_name.encode()).hexdigest()[:12]
    return run_name.encode()[:MAX_NAME_BYTES - 13].decode(errors="ignore") + "-" + digest


def write_row(rows_dir, run_name: str, row: dict) -> Path:
    """Add ``row`` to the comparison table in ``rows_dir`` as its own file ``<run_name>.json``."""
    return write_json_atomic(Path(rows_dir) / f"{_file_name(run_name)}.json", row)


def _read_row(path: Path) -> dict:
    """The row in ``path``; a ConfigError naming the file if it holds no JSON object (truncated, say)."""
    try:
        row = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        problem = f"{err.msg}: line {err.lineno} column {err.colno}"
    except UnicodeDecodeError as err:
        problem = f"not UTF-8 text: {err.reason} at byte {err.start}"
    else:
        if isinstance(row, dict):
            return row
        problem = f"a JSON {type(row).__name__}, not an object"
    raise ConfigError(f"{path} is not a valid result row ({problem}); delete it or rerun its run")


def _read(files) -> List[dict]:
    """The rows in ``files``, oldest first."""
    return [_read_row(p) for p in sorted(files, key=lambda p: (p.stat().st_mtime, p.name))]


def read_rows(rows_dir) -> List[dict]:
    """Every row in ``rows_dir``, oldest file first; half-written temporaries are never visible. A file that holds
    no JSON object raises a ConfigError naming it."""
    return _read(Path(rows_dir).glob("*.json"))


def read_sweep_rows(sweep_dir) -> List[dict]:
    """The rows of one multirun, oldest first: count_flops jobs write theirs to ``<sweep_dir>/rows/``, train jobs
    keep theirs in their job directory as ``metrics.json`` (the same dict as their row in ``<log_dir>/rows``). A file
    that holds no JSON object raises a ConfigError naming it."""
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
