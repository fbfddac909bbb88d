#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then lint + every test.
# Starts a private PostgreSQL (Unix socket only) so the database tests run on both backends.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k priority
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

pg_url=$(bash scripts/pg.sh start)
trap 'bash scripts/pg.sh stop' EXIT
export VCL_TEST_PG_URL=$pg_url

echo "== ruff"
.venv/bin/ruff check .
echo "== ansible-lint (production profile)"
PATH="$PWD/.venv/bin:$PATH" .venv/bin/ansible-lint --profile production --offline
echo "== ansible-test sanity (the built collection, installed)"
bash scripts/sanity.sh
echo "== pytest"
.venv/bin/python -m pytest "$@"
