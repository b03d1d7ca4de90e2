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
# Every apt-get waits up to 10 minutes for the dpkg lock (apt >= 1.9.11) rather than failing
# at once while another apt holds it (unattended-upgrades on a machine that just booted).
APT_GET := apt-get -o DPkg::Lock::Timeout=600
# Debian packages the tests use: DCMTK (storescu, dsrdump), dicom3tools (dciodvfy), Orthanc
# and its DICOMweb plugin (the OHIF test's PACS), Chromium and its driver (the page and OHIF
# tests, headless), PostgreSQL (the shared-database test), npm (fetches the OHIF Viewer),
# poppler-utils (pdftotext reads the report PDF back), systemd (systemd-analyze verifies
# deploy/trauma-node.service; installing the package starts nothing in a container).
TEST_TOOLS := /usr/bin/storescu /usr/bin/dciodvfy /usr/sbin/Orthanc /usr/bin/pdftotext \
	/usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/bin/chromium \
	/usr/bin/chromedriver /usr/lib/postgresql/*/bin/initdb /usr/bin/npm \
	/usr/bin/systemd-analyze
# The OHIF Viewer the viewer test loads our SEG and SR into: the prebuilt app (dist/) of
# the pinned npm release, checked against its registry integrity, unpacked into .ohif/app.
OHIF_VERSION := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIR := .ohif
OHIF_STAMP := $(OHIF_DIR)/.installed-$(OHIF_VERSION)

.PHONY: run test install install-test system-deps ohif bench bench-gpu bench-soak clean

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
	$(BIN)/pip install --quiet -e '.[test,models,postgres,evaluation,training]'
	touch $(TEST_STAMP)

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

system-deps:
	@missing=0; for t in $(TEST_TOOLS); do [ -e $$t ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing dcmtk dicom3tools orthanc orthanc-dicomweb chromium chromium-driver" \
			"postgresql npm poppler-utils systemd (Debian packages)"; \
		$(SUDO) $(APT_GET) update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) $(APT_GET) install -y -qq dcmtk dicom3tools orthanc \
			orthanc-dicomweb chromium chromium-driver postgresql poppler-utils systemd \
			$$([ -x /usr/bin/npm ] || echo npm) >/dev/null; \
	fi

# npm pack fetches the published tarball alone (the app is prebuilt: none of its
# dependencies is needed), its integrity checked again here against the pinned value.
$(OHIF_STAMP): | system-deps
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)
	cd $(OHIF_DIR) && npm pack --silent --pack-destination . @ohif/app@$(OHIF_VERSION) >/dev/null
	@got=$$($(PYTHON) -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(\
		open(sys.argv[1], "rb").read()).digest()).decode())' $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz); \
	if [ "$$got" != "$(OHIF_INTEGRITY)" ]; then \
		echo "@ohif/app@$(OHIF_VERSION): integrity $$got, expected $(OHIF_INTEGRITY)" >&2; exit 1; fi
	tar -xzf $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR) && mv $(OHIF_DIR)/package $(OHIF_DIR)/app
	rm $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz
	touch $(OHIF_STAMP)

ohif: $(OHIF_STAMP)

run: install
	$(BIN)/trauma-node serve

test: install-test system-deps ohif
	$(BIN)/python -m pytest

bench: install-test system-deps
	$(BIN)/python bench/ingest.py

# A day of traffic in 20 to 30 minutes: 200 studies from four senders, Orthanc stopped twice,
# the node restarted once; bench/soak.png and the soak section of bench/RESULTS.md.
bench-soak: install-test system-deps
	$(BIN)/python bench/soak.py --write-results

# On a CUDA host: the pipeline with the full-size model architectures (random weights).
bench-gpu: install-test
	$(BIN)/python bench/gpu_pipeline.py --json gpu_pipeline.json

clean:
	rm -rf $(VENV) data .pytest_cache $(OHIF_DIR) test-artifacts
