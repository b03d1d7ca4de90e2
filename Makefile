# trauma-node: `make run` starts the node on its embedded default; `make test` runs the tests.
# Both create the virtual environment and install what they need on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use: DCMTK (storescu, dsrdump), dicom3tools (dciodvfy), Orthanc.
TEST_TOOLS := /usr/bin/storescu /usr/bin/dciodvfy /usr/sbin/Orthanc

.PHONY: run test install system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=0; for t in $(TEST_TOOLS); do [ -x $$t ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing dcmtk dicom3tools orthanc (Debian packages)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dcmtk dicom3tools orthanc >/dev/null; \
	fi

run: install
	$(BIN)/trauma-node serve

test: install system-deps
	$(BIN)/python -m pytest

bench: install system-deps
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) data .pytest_cache
