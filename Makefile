# The two commands in the README: `make demo` and `make test`. Both make their own venv.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test check venv clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	scripts/demo.sh

test: venv
	scripts/test.sh

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
