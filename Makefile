# Two commands: `make demo` (set up and run the sample sync) and `make test` (the whole suite).
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
COMPILED := .venv-compiled
CBIN   := $(COMPILED)/bin
MSSQL  := .venv-tap-mssql
MELTANO_VENV := .venv-meltano
MELTANO      := $(MELTANO_VENV)/bin/meltano
NIGHT  ?= 1
# What the compiled wheel is built from: a change to any of these rebuilds it.
PACKAGE_FILES := $(shell find target_customerio -type f -not -path '*/__pycache__/*' -not -name '*.so' -not -name '*.pyd' 2>/dev/null)

.PHONY: setup compiled lint test test-plain test-compiled system-deps demo bench bench-pipe clean meltano-install meltano-link demo-again demo-stop demo-status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Development runs plain Python: the checkout installed editable (hatch_build.py never compiles
# an editable install), so an edited source is what runs, with no reinstall. Reinstalled when
# the project's metadata changes (dependencies, console scripts).
$(VENV)/.installed: $(BIN)/python pyproject.toml hatch_build.py
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# Compiled modules an older checkout built beside their sources would be imported before them:
# removed (no build puts any there now).
setup: $(VENV)/.installed
	@find target_customerio \( -name '*.so' -o -name '*.pyd' \) -print -delete 2>/dev/null \
	  | sed 's/^/removed a stale compiled module: /'

# The checkout's files, ignored ones included (a compiled module is ignored), less the venvs.
CHECKOUT_STATE := git status --porcelain --ignored -- . ':!.venv*' ':!.meltano' ':!.pytest_cache' 2>/dev/null

$(CBIN)/python:
	$(PYTHON) -m venv $(COMPILED)
	$(CBIN)/pip install -q --upgrade pip

# The compiled form, as the release's wheels are: the wheel built with
# TARGET_CUSTOMERIO_COMPILE=1 (mypyc, the modules of the build hook's `include` in
# pyproject.toml), installed with the test extra in .venv-compiled; rebuilt when a source
# changes. Building must change nothing in the checkout, and the wheel must be a compiled one.
$(COMPILED)/.installed: $(CBIN)/python pyproject.toml hatch_build.py $(PACKAGE_FILES)
	@rm -rf $(COMPILED)/dist && mkdir -p $(COMPILED)/dist
	@echo "building the compiled wheel (mypyc, about half a minute)"
	@before=$$($(CHECKOUT_STATE)); \
	TARGET_CUSTOMERIO_COMPILE=1 $(CBIN)/pip wheel -v --no-deps -w $(COMPILED)/dist . >$(COMPILED)/build.log 2>&1 \
	  || { tail -40 $(COMPILED)/build.log; exit 1; }; \
	after=$$($(CHECKOUT_STATE)); \
	if [ "$$before" != "$$after" ]; then echo "building the compiled wheel changed the checkout:"; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; fi; \
	wheel=$$(ls $(COMPILED)/dist/*.whl); echo "built $$wheel"; \
	case "$$wheel" in *-none-any.whl) grep -i -B2 -A10 'not compiled' $(COMPILED)/build.log \
	  || tail -40 $(COMPILED)/build.log; echo "the wheel is not compiled"; exit 1;; esac; \
	$(CBIN)/pip install -q "$$wheel[test]" && $(CBIN)/pip install -q --force-reinstall --no-deps "$$wheel"
	@touch $@

compiled: $(COMPILED)/.installed

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
# files, so Meltano Hub is never asked). target-customerio is installed editable (-e .): plain
# Python, the checkout's sources, as in .venv.
.meltano/.installed: $(MELTANO) meltano.yml $(wildcard plugins/*/*.lock) pyproject.toml
	$(MELTANO) install
	@touch $@

meltano-install: .meltano/.installed

# `meltano` on the PATH, as the README and docs/meltano.md type it: unless one is there already, a link to
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

# `make test`: lint, then the suite on both forms of the package (docs/development.md).
test: lint test-plain test-compiled

# ruff (pinned in the test extra; [tool.ruff] in pyproject.toml): lint and formatting.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite on plain Python: the checkout's sources (.venv, editable).
test-plain: setup $(MSSQL)/bin/python meltano-install system-deps
	$(BIN)/python -m pytest -q

# The suite on the compiled wheel (.venv-compiled): the target processes the tests start are its
# console script, and tests/conftest.py imports it in the test process too. COMPILED_SKIP, the
# one list of what this run leaves out: tests of nothing the compiled modules do, which ran in
# test-plain (about 40 s of the suite's ~225 s, keeping CI well under its budget): the Meltano
# end-to-end runs (their target is Meltano's own editable install of the checkout, plain
# Python), tap-mssql's and tap-postgres's own code on the sample data, the sandbox (its server
# and its page in Chromium, not compiled), the release metadata (it asks .venv's target), the
# demo, the README's install section (a Meltano project of its own, the target installed from the
# checkout) and the docs' shell blocks. Measured with --durations=30; test_properties and
# test_mssql_target stay (they run the target, and map in the test process).
COMPILED_SKIP := tests/test_meltano_e2e.py tests/test_mssql_tap.py tests/test_sample_data.py \
                 $(wildcard tests/test_sandbox*.py) tests/test_release.py tests/test_demo_ports.py \
                 tests/test_readme_install.py tests/test_docs.py
test-compiled: compiled $(MSSQL)/bin/python
	TEST_TARGET_CUSTOMERIO_INSTALLED=1 $(CBIN)/python -m pytest -q $(addprefix --ignore=,$(COMPILED_SKIP))

clean:
	rm -rf $(VENV) $(COMPILED) $(MSSQL) $(MELTANO_VENV) .meltano .pytest_cache build dist *.egg-info
	find target_customerio \( -name '*.so' -o -name '*.pyd' \) -delete

# Throughput figures (not a test): `make bench`, or `make bench ARGS="--records 1000000"`. Of the
# compiled form, as users of the wheels run it (.venv-compiled).
# Then the pipe bench: tap-postgres | target-customerio against tap-postgres | no-op, over an
# embedded PostgreSQL (bench/pipe.py; `make bench-pipe PIPE_ARGS="--customers 200000"`).
bench: compiled
	$(CBIN)/python bench/bench.py $(ARGS)
	$(CBIN)/python bench/pipe.py $(PIPE_ARGS)
	$(CBIN)/python bench/identity.py

bench-pipe: compiled
	$(CBIN)/python bench/pipe.py $(PIPE_ARGS)
