# `make train` and `make test` are the only set-up a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: train test flops tables bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py

test: $(STAMP)
	$(PY) -m pytest -q

flops: $(STAMP)
	$(PY) count_flops.py model=resnet model.depth=50 data.image_size=224

bench: $(STAMP)
	$(PY) scripts/bench_ops.py

tables: $(STAMP)
	$(PY) scripts/make_tables.py

clean:
	rm -rf logs outputs multirun .pytest_cache
