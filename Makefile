# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing
# (or when pyproject.toml / requirements.lock changed) from the pinned lock file.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.ready

.PHONY: demo test test-fast lint lock clean

$(READY): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

demo: $(READY)  ## generate logs, preprocess, train two days on 2 workers, export, predict
	$(BIN)/multitower demo --workdir demo-work

test: $(READY)  ## ruff, the layer contract, then every test (integration and end-to-end included)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-fast: $(READY)  ## unit tests only
	$(BIN)/python -m pytest -q -m "not integration and not e2e"

lint: $(READY)  ## ruff and the layer contract (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/lint-imports

lock:  ## re-resolve requirements.lock from pyproject.toml in a throwaway venv
	rm -rf /tmp/multitower-lock && $(PYTHON) -m venv /tmp/multitower-lock
	/tmp/multitower-lock/bin/pip install --quiet --upgrade pip
	/tmp/multitower-lock/bin/pip install --quiet -e ".[test]"
	/tmp/multitower-lock/bin/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf $(VENV) demo-work examples/work
