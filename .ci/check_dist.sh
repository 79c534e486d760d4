#!/usr/bin/env bash
# What a user installs is what is tested: build the sdist and the pure-Python wheel from this
# checkout, check that building changed no file, `twine check` both, install the wheel alone in
# a fresh venv and run a short sync with it against the sandbox (.ci/smoke_sync.py).
# Usage: .ci/check_dist.sh   (from anywhere; about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/target-customerio-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/tools"
"$work/tools/bin/pip" install -q 'build==1.6.1' 'twine==7.0.0'

before=$(git status --porcelain)
"$work/tools/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
after=$(git status --porcelain)
if [ "$before" != "$after" ]; then
  echo "check_dist: building changed the checkout:"; diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
ls "$work/dist"
"$work/tools/bin/twine" check --strict "$work"/dist/*

# The pure wheel (py3-none-any), alone in a fresh venv: its dependencies from the registry.
wheel=$(ls "$work"/dist/*-py3-none-any.whl)
"$PYTHON" -m venv "$work/user"
"$work/user/bin/pip" install -q "$wheel"
"$PYTHON" .ci/smoke_sync.py "$work/user" --expect interpreted
