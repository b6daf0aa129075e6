"""Result rows survive concurrent writers: every row lands whole, none is lost."""
import multiprocessing as mp

from attnvision.results import read_rows, write_row
from attnvision.engine.checkpoint import save_checkpoint, load_checkpoint


def _writer(rows_dir, worker: int, n: int):
    for i in range(n):
        write_row(rows_dir, f"w{worker}_{i}", {"worker": worker, "i": i, "payload": "x" * 4096})


def test_concurrent_writers_lose_no_rows(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_writer, args=(tmp_path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = read_rows(tmp_path)
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(25)]
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    import torch
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    class Boom(Exception):
        pass

    def fail(*args, **kwargs):
        raise Boom

    monkeypatch.setattr("os.replace", fail)
    try:
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    except Boom:
        pass
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact
    assert not list(tmp_path.glob(".*.tmp"))  # and no temporary file is left behind
