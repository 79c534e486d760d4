# Two commands: `make demo` (set up and run the sample sync) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MSSQL  := .venv-tap-mssql

.PHONY: setup system-deps test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# tap-mssql pins its own singer library, so it lives in its own venv (as Meltano would do).
$(MSSQL)/bin/python:
	$(PYTHON) -m venv $(MSSQL)
	$(MSSQL)/bin/pip install -q --upgrade pip
	$(MSSQL)/bin/pip install -q 'tap-mssql==2.6.5' 'pymssql==2.4.6' 'realit-singer-python==5.0.3'

# Headless Chromium for the sandbox page test (Debian packages).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing: sudo apt-get install chromium chromium-driver (the page test will be skipped)"; fi; }

test: setup $(MSSQL)/bin/python system-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(MSSQL) .pytest_cache build dist *.egg-info
