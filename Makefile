# trauma-node: `make run` starts the node on its embedded default; `make test` runs the tests.
# Both create the virtual environment and install what they need on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What is installed: the node alone for `make run` (the embedded default needs no
# torch); with the test tools and the model backends' packages for `make test`.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use: DCMTK (storescu, dsrdump), dicom3tools (dciodvfy), Orthanc,
# Chromium and its driver (the page test, headless), PostgreSQL (the shared-database test),
# poppler-utils (pdftotext reads the report PDF back).
TEST_TOOLS := /usr/bin/storescu /usr/bin/dciodvfy /usr/sbin/Orthanc /usr/bin/chromium \
	/usr/bin/chromedriver /usr/lib/postgresql/*/bin/initdb /usr/bin/pdftotext

.PHONY: run test install install-test system-deps bench bench-gpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
		free < 8 and print(f"warning: {free:.1f} GiB free here; make test needs about 8 GiB (torch " \
		"with its CUDA libraries is 5.5 GB, then the test data)", file=sys.stderr)'
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,models,postgres]'
	touch $(TEST_STAMP)

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

system-deps:
	@missing=0; for t in $(TEST_TOOLS); do [ -x $$t ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing dcmtk dicom3tools orthanc chromium chromium-driver postgresql" \
			"poppler-utils (Debian packages)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dcmtk dicom3tools orthanc \
			chromium chromium-driver postgresql poppler-utils >/dev/null; \
	fi

run: install
	$(BIN)/trauma-node serve

test: install-test system-deps
	$(BIN)/python -m pytest

bench: install-test system-deps
	$(BIN)/python bench/ingest.py

# On a CUDA host: the pipeline with the full-size model architectures (random weights).
bench-gpu: install-test
	$(BIN)/python bench/gpu_pipeline.py --json gpu_pipeline.json

clean:
	rm -rf $(VENV) data .pytest_cache
