# make course: set up, run every chapter with the tiny preset into runs/tiny/, and build the book.
# make test:   set up, check the style (ruff), run the unit tests and the notebooks under nbval.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CI asks for the CPU build (torch==2.13.0); users get pip's default, which is a CUDA build on Linux.
TORCH_SPEC ?= torch
PRESET ?= tiny
RUNS ?= runs/$(PRESET)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))

.PHONY: install test test-fast course book refresh sync clean robustness

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check
	$(PY) -m pytest

test-fast: install  # unit tests only, no notebooks and no slow tests
	$(PY) -m pytest tests -m "not slow" -p no:nbval -o addopts=-ra

course: install
	$(PY) -m minimind course --preset $(PRESET) --out $(RUNS)

# the lessons across seeds and kernels (book/robustness.md): a course run per seed and kernel set, then the table
SEEDS ?= 0 1 2 3 4
LESSON_CHAPTERS := 07 08 09 10 11 12 14
robustness: install
	for s in $(SEEDS); do \
	  $(PY) -m minimind course --seed $$s --only $(LESSON_CHAPTERS) --no-book --keep-going \
	    --out runs/robust/native/seed$$s || exit 1; \
	  ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m minimind course --seed $$s \
	    --only $(LESSON_CHAPTERS) --no-book --keep-going --out runs/robust/avx2/seed$$s || exit 1; \
	done
	$(PY) -m minimind course --robustness runs/robust/*/seed* --json book/robustness.json --page book/robustness.md

book: install  # the book from the committed reference notebooks, into _build/html
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

refresh: install  # re-execute every notebook in place, in course order, from an empty runs/tiny: new nbval references (review the diff!)
	rm -rf runs/tiny
	for nb in $(NOTEBOOKS); do $(PY) -m jupytext --sync --execute $$nb || exit 1; done
	$(PY) -m minimind course --report-page book/report.md

sync: install  # re-pair .py and .ipynb after editing either (keeps outputs)
	$(PY) -m jupytext --sync $(NOTEBOOKS)

clean:
	rm -rf _build runs
