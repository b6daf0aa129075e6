"""Paper-table rows (configs/experiment/<table>/<row>.yaml) and scripts/reproduce.py."""
import runpy

import pytest
from hydra.utils import instantiate

from attnvision.engine.complexity import CONVENTIONS
from attnvision.engine.reproduce import RESULTS_DIR, reproduce, table_rows, tables

from conftest import ROOT

ROWS = [f"{table}/{row}" for table in tables() for row in table_rows(table)]


@pytest.mark.parametrize("experiment", ROWS)
def test_every_row_composes_builds_its_model_and_has_a_paper_block(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}")
    model = instantiate(cfg.model)
    assert model.num_classes == 1000 and cfg.data.image_size == 224
    paper = cfg.paper
    assert all(isinstance(paper[key], str) and paper[key] for key in ("source", "row", "units", "split"))
    assert paper.convention in CONVENTIONS
    assert isinstance(paper.top1, float)
    assert all(paper[key] is None or isinstance(paper[key], float) for key in ("params", "macs"))
    assert cfg.trainer.epochs >= 100 and isinstance(cfg.trainer.ema, bool)


def test_a_recipe_sets_its_imagenet_batch_and_lr_on_imagenet_only(make_cfg):
    sasa = make_cfg("experiment=sasa_table4/k07")
    assert (sasa.data.batch_size, sasa.optim.opt, sasa.optim.lr, sasa.sched.warmup_epochs) == \
        (4096, "nesterov", 1.6, 10)
    full_axial = make_cfg("experiment=axial_table1/full_axial")
    assert (full_axial.data.batch_size, full_axial.optim.lr, full_axial.trainer.epochs) == (512, 0.2, 130)
    digits = make_cfg("experiment=sasa_table4/k07", "data=digits", "trainer.epochs=1")
    assert (digits.data.image_size, digits.data.batch_size, digits.model.small_stem) == (32, 32, True)
    assert (digits.optim.opt, digits.optim.lr, digits.trainer.epochs) == ("nesterov", 0.1, 1)
    counted = make_cfg("experiment=san_table3/san10_pairwise", config_name="count_flops")
    assert (counted.model.family, counted.paper.convention) == ("san_pairwise", "san")
    evaluated = make_cfg("experiment=sasa_table4/k05", "data=digits", "checkpoint=x.pt", config_name="evaluate")
    assert (evaluated.model.family, evaluated.model.kernel_size, evaluated.data.name) == ("sasa_resnet", 5, "digits")
    assert (evaluated.data.batch_size, evaluated.model.small_stem, evaluated.paper.top1) == (32, True, 77.2)


def test_counting_a_table_reproduces_the_committed_one(tmp_path):
    written = reproduce("san_table8", out_dir=tmp_path)
    assert [p.name for p in written] == ["san_table8.csv", "san_table8.md"]
    for path in written:
        ours, committed = path.read_text().splitlines(), (RESULTS_DIR / path.name).read_text().splitlines()
        assert "python scripts/reproduce.py table=san_table8" in ours[0] and ours[1:] == committed[1:]


def test_an_unknown_table_gives_one_line_naming_the_tables(capsys):
    main = runpy.run_path(str(ROOT / "scripts" / "reproduce.py"))["main"]
    assert main(["table=foo"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: table='foo' is unknown"), lines
    assert all(name in lines[0] for name in ("all", "sasa_table4", "san_table3", "axial_table1"))
