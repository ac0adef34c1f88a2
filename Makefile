# make test     create .venv, install torch + requirements (+ espeak-ng), run the whole test suite
# make demo     build the demo corpus and run norm_para -> training -> testing -> predict on it
# TORCH_SPEC picks another torch build, e.g. make test TORCH_SPEC="torch==2.5.1"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q

.PHONY: venv test espeak clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# espeak-ng synthesises the demo corpus and the arousal check; installed when missing (as root)
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null); \
	  else echo "espeak-ng is missing: sudo apt-get install espeak-ng"; fi; }

test: venv espeak
	$(PY) -m pytest $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) .pytest_cache
