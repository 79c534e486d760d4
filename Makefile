# Two commands: `make demo` (set up and run the sample sync) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MSSQL  := .venv-tap-mssql
MELTANO_VENV := .venv-meltano
MELTANO      := $(MELTANO_VENV)/bin/meltano
NIGHT  ?= 1

.PHONY: setup system-deps test demo bench clean meltano-install meltano-link demo-again demo-stop demo-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installed editable, with the mapping modules compiled in place (mypyc, see hatch_build.py;
# TARGET_CUSTOMERIO_COMPILE=1 asks for it, a plain `pip install .` is pure Python): reinstalled
# whenever a source changes, since a compiled module is imported before its source.
$(VENV)/.installed: $(BIN)/python pyproject.toml hatch_build.py $(wildcard target_customerio/*.py)
	TARGET_CUSTOMERIO_COMPILE=1 $(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(VENV)/.installed

# tap-mssql pins its own singer library, so it lives in its own venv (as Meltano would do).
$(MSSQL)/bin/python:
	$(PYTHON) -m venv $(MSSQL)
	$(MSSQL)/bin/pip install -q --upgrade pip
	$(MSSQL)/bin/pip install -q 'tap-mssql==2.6.5' 'pymssql==2.4.6' 'realit-singer-python==5.0.3'

# Meltano in its own venv (never in .venv: its pins differ from singer-sdk's).
$(MELTANO):
	$(PYTHON) -m venv $(MELTANO_VENV)
	$(MELTANO_VENV)/bin/pip install -q --upgrade pip
	$(MELTANO_VENV)/bin/pip install -q 'meltano==4.4.1'

# `meltano install`: the plugins' venvs under .meltano/, from PyPI only (plugins/ holds the lock
# files, so Meltano Hub is never asked). target-customerio is installed editable (-e .),
# compiled as .venv's is (both import the modules compiled in place beside the sources).
.meltano/.installed: $(MELTANO) meltano.yml $(wildcard plugins/*/*.lock) pyproject.toml
	TARGET_CUSTOMERIO_COMPILE=1 $(MELTANO) install
	@touch $@

meltano-install: .meltano/.installed

# `meltano` on the PATH, as the README types it: unless one is there already, a link to
# .venv-meltano's in the first of ~/.local/bin and /usr/local/bin that is on the PATH and
# writable; else the line to add it to the PATH.
meltano-link: $(MELTANO)
	@command -v meltano >/dev/null 2>&1 || { \
	  for dir in "$$HOME/.local/bin" /usr/local/bin; do \
	    case ":$$PATH:" in *":$$dir:"*) if [ -w "$$dir" ]; then \
	      ln -sf "$(CURDIR)/$(MELTANO)" "$$dir/meltano"; \
	      echo "meltano: linked $$dir/meltano -> $(CURDIR)/$(MELTANO)"; exit 0; fi;; esac; \
	  done; \
	  echo "meltano is not on the PATH: export PATH=\"$(CURDIR)/$(MELTANO_VENV)/bin:\$$PATH\""; }

# The sample sync: embedded PostgreSQL + sandbox workspace + `meltano run` (demo/run_demo.py).
# `make demo` is night 1 (fresh data, everything sent); `make demo-again` (or NIGHT=2) changes
# some rows and syncs again; `make demo-stop` stops PostgreSQL and the sandbox.
demo: setup meltano-install meltano-link
	$(BIN)/python -m demo.run_demo $(if $(filter 2,$(NIGHT)),again,run)

demo-again: setup meltano-install meltano-link
	$(BIN)/python -m demo.run_demo again

demo-status:
	@$(BIN)/python -m demo.run_demo status

demo-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m demo.run_demo stop; else echo "nothing to stop"; fi

# Headless Chromium for the sandbox page test (Debian packages).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing: sudo apt-get install chromium chromium-driver (the page test will be skipped)"; fi; }

test: setup $(MSSQL)/bin/python meltano-install system-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(MSSQL) $(MELTANO_VENV) .meltano .pytest_cache build dist *.egg-info *.so target_customerio/*.so

# Throughput figures (not a test): `make bench`, or `make bench ARGS="--records 1000000"`.
bench: setup
	$(BIN)/python bench/bench.py $(ARGS)
