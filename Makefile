# Maestro: `make demo` (the main job, end to end) and `make test` set everything up on a
# fresh machine with Python 3.11 and make. Everything lives in .venv; models in $(MAESTRO_HOME).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip
# Hugging Face libraries retry the network for ~25 s when offline; Maestro's assets are local.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# test processes (pytest-xdist; whole files per process, so module fixtures run once). 0: one process
# Files start in collection order, the slowest first (tests/conftest.py, SLOW_FILES_FIRST), not in
# xdist's default order (most tests first), which starts the few-but-long files last.
PYTEST_WORKERS ?= 2

.PHONY: install debs models demo test bench lint lab clean help

help:
	@echo "make demo   - install, build the model zoo, run the course demo (7 students, autograde, leaderboard)"
	@echo "make test   - install, build the model zoo, run the test suite"
	@echo "make debs   - the Debian packages (bubblewrap, chromium, postgresql), where root may install them"
	@echo "make bench  - run the benchmarks (benchmarks/*.py)"
	@echo "make lint   - ruff"
	@echo "make lab    - JupyterLab with the nbgrader extension in a course folder (COURSE=course)"

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,server,grading]"
	$(PIP) install -q -c constraints.txt --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

# Debian packages beside Python: bubblewrap (the autograder's sandbox) for the demo and the
# tests; chromium and postgresql for the browser and PostgreSQL tests. Installed where this
# machine allows it (root or passwordless sudo, and apt-get); elsewhere the exact command is
# printed and everything goes on without them (scripts/system-packages.sh says what that costs).
DEBS ?= bubblewrap chromium postgresql
demo: DEBS = bubblewrap
test: DEBS = bubblewrap chromium postgresql
debs:
	@bash scripts/system-packages.sh $(DEBS)

models: install
	$(OFFLINE) $(BIN)/maestro models build

demo: debs models
	$(OFFLINE) $(BIN)/maestro demo $(DEMO_FLAGS)

# One torch/OpenMP thread per test process: the processes share the cores, and two notebooks with
# two spinning threads each on two cores slowed each other several-fold (tutorial 06: 12 min, not 1.5).
test: debs models
	$(OFFLINE) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_FLAGS)

bench: models
	$(OFFLINE) $(BIN)/python benchmarks/wrapper.py
	$(OFFLINE) $(BIN)/python benchmarks/attacks.py
	$(OFFLINE) $(BIN)/python benchmarks/text_attacks.py
	$(OFFLINE) $(BIN)/python benchmarks/server.py
	$(OFFLINE) $(BIN)/python benchmarks/autograde.py
	$(OFFLINE) $(BIN)/python benchmarks/llm.py

# JupyterLab 4 in the course folder (made by `maestro course init` the first time), where
# nbgrader finds its nbgrader_config.py: Formgrader and the Nbgrader menu for instructors,
# tutorials/ (a copy of notebooks/) for students.
COURSE    ?= course
LAB_FLAGS ?=

lab: models
	@test -f "$(COURSE)/nbgrader_config.py" || $(OFFLINE) $(BIN)/maestro course init "$(COURSE)"
	@test -d "$(COURSE)/tutorials" || cp -r notebooks "$(COURSE)/tutorials"
	cd "$(COURSE)" && $(OFFLINE) "$(abspath $(BIN))/jupyter" lab $(LAB_FLAGS)

lint: install
	$(BIN)/ruff check maestro autograder tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache maestro-demo-course
