# The two commands in the README: `make demo` and `make test`. Both make their own venv.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test check venv pure clean

# The modules setup.py compiles with mypyc (its HOT_PATH): an edit to one rebuilds the
# install (~1 min); the test suite refuses a stale build should this list fall behind.
HOT_PATH := $(addprefix localmesh/runtime/,dataplane/batching.py dataplane/http.py dataplane/upstream.py \
              dataplane/tcp.py dataplane/context.py dataplane/compiled.py \
              telemetry/accesslog.py telemetry/metrics.py ingress/tlsstream.py) \
            $(filter-out %/__init__.py,$(wildcard localmesh/runtime/dataplane/core/*.py))

$(VENV)/.installed: pyproject.toml setup.py $(HOT_PATH)
	test -x $(PY) || python3 -m venv $(VENV)
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

# Drop the compiled modules and run the sources as they are (pdb, quick edits).
pure:
	find localmesh -name '*.cpython-*.so' -delete
	rm -f $(VENV)/.installed

clean: pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
