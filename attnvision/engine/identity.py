"""Run identity: what makes a checkpoint *this* run's, so that ``trainer.resume`` never continues another run.

A run's identity is its resolved config minus the keys that may change between a run and its resumption
(``RESUMABLE_KEYS``: where it runs, how it reports and resumes). Every run directory holds a ``run.json`` record:
the identity's hash, the run's status (``running``, ``preempted``, ``finished``, ``diverged``) and its progress.

``trainer.resume=auto`` looks for records of the same identity under ``<log_dir>/<task>`` (and beside this run's
directory) and then
  - continues the one that got furthest, in its own directory, from its ``last.pt``, falling back to its
    ``best.pt`` and then to the next run when a checkpoint can't be read (each skip is one line on stderr);
  - reports a finished (or diverged) match and runs nothing: no new directory is kept, no row is written again;
  - starts fresh, and says so, when nothing matches.
``trainer.resume=PATH`` continues that checkpoint in the new run directory; a checkpoint of another identity is
refused in one line that names the differing keys, unless ``trainer.resume_force=true``.
"""
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from attnvision.errors import ConfigError
from attnvision.results import write_json_atomic
from attnvision.results.rows import DIVERGED, FINISHED
from .checkpoint import load_checkpoint

__all__ = ["RESUMABLE_KEYS", "RECORD", "Resume", "run_identity", "identity_hash", "differing_keys", "write_record",
           "find_resume"]

IDENTITY_GROUPS = ("model", "data", "optim", "sched", "trainer")
RESUMABLE_KEYS = frozenset({"trainer.resume", "trainer.resume_force", "trainer.checkpoint_every", "trainer.progress",
                            "trainer.device", "trainer.compile", "data.root", "data.download", "data.num_workers"})
RECORD = "run.json"
SHOWN_DIFFERENCES = 6


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def run_identity(config: dict) -> dict:
    """The identity of a resolved config (``OmegaConf.to_container(cfg, resolve=True)``, as checkpoints store it):
    its model, data, optim, sched and trainer keys as ``{dotted key: value}``, less RESUMABLE_KEYS."""
    flat = _flatten({group: config.get(group) for group in IDENTITY_GROUPS})
    return {key: value for key, value in flat.items() if key not in RESUMABLE_KEYS}


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(ours: dict, theirs: dict) -> List[str]:
    """``key=theirs -> ours`` for every identity key that differs (``<none>`` where a side lacks it)."""
    missing = "<none>"
    return [f"{key}={theirs.get(key, missing)} -> {ours.get(key, missing)}"
            for key in sorted(set(ours) | set(theirs)) if ours.get(key, missing) != theirs.get(key, missing)]


def write_record(run_dir, identity: str, status: str, **progress) -> None:
    """``run_dir/run.json``: the identity hash, the status and the progress (epoch, num_updates...)."""
    write_json_atomic(Path(run_dir) / RECORD, {"identity": identity, "status": status, **progress})


def _read_record(path: Path) -> Optional[dict]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@dataclass
class Resume:
    """What ``trainer.resume`` resolved to: the run directory to write into, the checkpoint to continue (or None:
    a fresh start) and, for a run that already finished, its record (then nothing is trained)."""

    run_dir: Path
    checkpoint: Optional[dict] = None
    path: Optional[Path] = None
    finished: Optional[dict] = None
    forced: List[str] = None


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _matching_records(identity: str, run_dir: Path, search_dirs) -> List[dict]:
    """Records of ``identity`` in this run's directory, its siblings and under ``search_dirs``, furthest first."""
    files = {run_dir / RECORD, *run_dir.parent.glob(f"*/{RECORD}")}
    for folder in search_dirs:
        if Path(folder).is_dir():
            files.update(Path(folder).rglob(RECORD))
    matches = []
    for path in files:
        record = _read_record(path) if path.is_file() else None
        if record and record.get("identity") == identity:
            matches.append({**record, "run_dir": path.parent, "mtime": path.stat().st_mtime})
    return sorted(matches, key=lambda r: (r.get("num_updates", 0), r["mtime"]), reverse=True)


def _resume_auto(identity: str, run_dir: Path, search_dirs) -> Resume:
    matches = _matching_records(identity, run_dir, search_dirs)
    done = [r for r in matches if r.get("status") in (FINISHED, DIVERGED)]
    if done:
        return Resume(done[0]["run_dir"], finished=done[0])
    for record in matches:
        for name in ("last.pt", "best.pt"):
            path = record["run_dir"] / name
            if not path.is_file():
                continue
            try:
                return Resume(record["run_dir"], load_checkpoint(path, key="trainer.resume=auto found"), path)
            except ConfigError as err:
                _warn(f"warning: skipping {path}: not {str(err).split(' is not ', 1)[-1]}")
    if matches:
        _warn(f"trainer.resume=auto: no readable checkpoint in the {len(matches)} run(s) of this identity; "
              f"starting fresh")
    else:
        print("trainer.resume=auto: no earlier run of this identity; starting fresh")
    return Resume(run_dir)


def find_resume(resume, force: bool, identity: dict, run_dir, search_dirs=()) -> Resume:
    """Resolve ``trainer.resume`` (null, ``auto`` or a checkpoint path) for a run of ``identity`` (from
    ``run_identity``) whose new directory is ``run_dir``."""
    run_dir = Path(run_dir)
    if resume in (None, False, ""):
        return Resume(run_dir)
    if resume == "auto":
        return _resume_auto(identity_hash(identity), run_dir, search_dirs)
    ckpt = load_checkpoint(resume, key="trainer.resume")
    theirs = run_identity(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else {}
    differences = differing_keys(identity, theirs)
    if differences and not force:
        shown = ", ".join(differences[:SHOWN_DIFFERENCES])
        more = f" and {len(differences) - SHOWN_DIFFERENCES} more" if len(differences) > SHOWN_DIFFERENCES else ""
        raise ConfigError(f"trainer.resume={resume} is another run: {shown}{more}; resume with the same values, "
                          f"or add trainer.resume_force=true to continue it anyway")
    return Resume(run_dir, ckpt, Path(resume), forced=differences)
