# The README's commands. `make run` starts the portal with embedded defaults;
# `make test` runs the checks and the test suite against PostgreSQL and Redis.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
# Two test processes: much of the suite waits on real servers, workers and browsers, not the CPU.
# Each gets its own test database and Redis database (see portal/settings/test.py). Tests marked
# `serial` measure timing under load they create themselves, so they run afterwards, alone.
PYTEST_ARGS ?=

.PHONY: run test lint format install assets check-deploy clean

run: install assets
	$(BIN)/python manage.py runportal

test: install assets
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -c pyproject.toml -r . -q --severity-level high
	$(BIN)/python scripts/check_code_rules.py
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest -n 2 -m "not serial" $(PYTEST_ARGS)
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest -m serial $(PYTEST_ARGS) \
		|| [ $$? -eq 5 ]  # 5: nothing selected (PYTEST_ARGS chose other tests)

# bandit fails on high-severity findings; scripts/check_code_rules.py holds the project's own rules.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -c pyproject.toml -r . -q --severity-level high
	$(BIN)/python scripts/check_code_rules.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check-deploy: install
	DJANGO_SETTINGS_MODULE=portal.settings.production \
	SECRET_KEY=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(64))') \
	ALLOWED_HOSTS=portal.example.gov.uk \
	DATABASE_URL=postgres://portal@db.example.gov.uk:5432/portal \
	REDIS_URL=redis://redis.example.gov.uk:6379/0 \
	$(BIN)/python manage.py check --deploy --fail-level WARNING

install: $(VENV)/.installed

$(VENV)/.installed: requirements/base.txt requirements/production.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements/dev.txt
	touch $@

assets: build/.built

build/.built: package.json package-lock.json scripts/build-assets.mjs assets/scss/portal.scss
	npm ci --ignore-scripts --no-audit --no-fund
	npm run build
	touch $@

clean:
	rm -rf $(VENV) node_modules build var .pytest_cache .ruff_cache
