# Developer entry points. On a fresh machine:
#   make demo   run the example app on the embedded SQLite store (http://127.0.0.1:5000)
#   make test   install everything (venv, PostgreSQL, MariaDB, Redis, Chromium) and run the tests
#   make docs   build the HTML docs and run every example in them (warnings are errors)
#   make bench  run the benchmarks (ARGS="purge", "load", "http", "serializer", "contention", "per-user")
# ARGS are passed on: make test ARGS="-x -k redis", make demo ARGS="--port 8000"

VENV := .venv
ARGS ?=

.PHONY: demo test bench lint docs browser services venv clean distclean

demo:
	scripts/demo.sh $(ARGS)

test:
	scripts/test.sh $(ARGS)

bench:
	scripts/bench.sh $(ARGS)

lint:
	scripts/_venv.sh lint,redis,mongodb
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs:
	scripts/_venv.sh docs
	$(VENV)/bin/sphinx-build -W -b html docs docs/_build/html
	$(VENV)/bin/sphinx-build -W -b doctest docs docs/_build/doctest

browser:
	scripts/browser.sh

services:
	scripts/services.sh

venv:
	scripts/_venv.sh test,browser,demo,docs,lint,bench,redis,postgres,mysql,mongodb

clean:
	rm -rf build dist *.egg-info docs/_build .pytest_cache .mypy_cache .ruff_cache .tox .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
