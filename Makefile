# The two quick-start commands (README): `make main` runs the main job, `make test` the tests.
# Each sets up .venv the first time (and again when pyproject.toml or constraints.txt change),
# installing the exact versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: main smoke test lock

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

main: $(STAMP)
	$(VENV)/bin/native-mm run --config recipes/digits.yaml

smoke: $(STAMP)
	$(VENV)/bin/native-mm run --config recipes/digits.yaml --smoke --out runs/smoke

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lock: $(STAMP)
	$(VENV)/bin/pip freeze --all --exclude-editable | grep -v '^native-mm\|^pip==' > constraints.txt.new
	@echo "review constraints.txt.new (keep the header) and move it over constraints.txt"
