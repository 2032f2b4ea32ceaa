# Two commands do everything on a fresh machine:
#   make serve   set up, then serve the workbench on the radon example at http://127.0.0.1:5006
#                (PORT=5007, MODEL=path.json, WORKSPACE=folder to change them)
#   make test    set up, then run the test suite
# and one more opens the notebooks in JupyterLab from the same environment:
#   make lab
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PORT ?= 5006

.PHONY: serve lab test setup bench clean

$(STAMP): pyproject.toml $(wildcard */__init__.py)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(BIN)/kn serve $(MODEL) --port $(PORT) $(if $(WORKSPACE),--workspace $(WORKSPACE))

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV)
