# Arena: `make run` starts the dashboard, `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501
# Test processes (pytest-xdist). Most tests wait on subprocesses, servers and a browser, so two
# workers on two cores finish in about two thirds of the time of one; each file runs whole on one
# worker (--dist loadfile), so a module's fixtures (a Ray cluster, a dashboard) start once.
TEST_WORKERS ?= 2

.PHONY: run test bench clean-venv

# The venv is (re)built when requirements.txt changes; the stamp file records the last install.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(VENV)/.installed
	$(PY) bench/loop_overhead.py  # every zoo model x mode, both frameworks: ~28 min on 2 quiet cores

clean-venv:
	rm -rf $(VENV)
