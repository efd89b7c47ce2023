# Two commands: `make demo` and `make test` (README). Both create .venv and install on first use;
# later runs reuse it (the stamp is newer than requirements.txt and pyproject.toml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
HEADLESS_CV := $(shell grep '^opencv-python-headless==' requirements.txt)
PYTEST_ARGS ?=

.PHONY: demo test bench mutation install data strip lint clean-results help
SEEDS  ?= 0 1 2

help:
	@echo "make demo    set up .venv, generate minicity, run the main pipeline job, print the table"
	@echo "make test    set up .venv and run the test suite"
	@echo "make bench   the minicity UDA benchmark (pair minibench) over SEEDS=\"$(SEEDS)\" into results/bench"
	@echo "make mutation  mutation score of the modules in tests/mutation/modules.yaml (GROUPS=\"...\" for some)"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	# mmcv-lite pulls opencv-python (needs libGL); the headless build must own cv2
	$(BIN)/pip install --force-reinstall --no-deps "$(HEADLESS_CV)"
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" CORES=$(CORES) bash workflow/scripts/demo.sh

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/minicity_uda.py --seeds $(SEEDS) --cores $(CORES) --out results/bench

# Outside `make test` (it takes much longer): installs mutmut into .venv on first use.
MUTMUT := mutmut==3.8.1
GROUPS ?=
mutation: $(STAMP)
	$(BIN)/python -c "import importlib.metadata as m; assert m.version('mutmut') == '$(MUTMUT:mutmut==%=%)'" 2>/dev/null \
	  || $(BIN)/pip install "$(MUTMUT)"
	$(BIN)/python tests/mutation/run.py $(if $(GROUPS),--only $(GROUPS))

data: $(STAMP)
	$(BIN)/python -m domains.minicity --out data/raw/minicity

lint: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

clean-results:
	rm -rf results/runs results/minicity* data/refined data/pseudo .snakemake
