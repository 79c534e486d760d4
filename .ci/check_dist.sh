#!/usr/bin/env bash
# What a user installs is what is tested: build the sdist and the pure-Python wheel (from the
# sdist), and the compiled wheel (TARGET_CUSTOMERIO_COMPILE=1, mypyc) from this checkout; check
# that building changed no file in the checkout, `twine check` them, install each wheel alone in
# a fresh venv and run a short sync with it against the sandbox (.ci/smoke_sync.py), which also
# checks the form that ran (plain Python, compiled).
# Usage: .ci/check_dist.sh   (from anywhere; about two minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/target-customerio-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/tools"
"$work/tools/bin/pip" install -q 'build==1.6.1' 'twine==7.0.0'

before=$(git status --porcelain --ignored -- . ':!.venv*' ':!.meltano' ':!.pytest_cache')
"$work/tools/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
TARGET_CUSTOMERIO_COMPILE=1 "$work/tools/bin/python" -m build --wheel --outdir "$work/compiled" . \
  >"$work/build-compiled.log" 2>&1 || { tail -40 "$work/build-compiled.log"; exit 1; }
after=$(git status --porcelain --ignored -- . ':!.venv*' ':!.meltano' ':!.pytest_cache')
if [ "$before" != "$after" ]; then
  echo "check_dist: building changed the checkout:"; diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
ls "$work/dist" "$work/compiled"
"$work/tools/bin/twine" check --strict "$work"/dist/* "$work"/compiled/*

# The pure wheel (py3-none-any), alone in a fresh venv: its dependencies from the registry.
wheel=$(ls "$work"/dist/*-py3-none-any.whl)
"$PYTHON" -m venv "$work/user"
"$work/user/bin/pip" install -q "$wheel"
"$PYTHON" .ci/smoke_sync.py "$work/user" --expect interpreted

# The compiled wheel (platform-tagged, not -none-any), alone in a fresh venv.
compiled=$(ls "$work"/compiled/*.whl)
case "$compiled" in
  *-none-any.whl) grep -i -A5 'not compiled' "$work/build-compiled.log" || true
                  echo "check_dist: the wheel built with TARGET_CUSTOMERIO_COMPILE=1 is not compiled"; exit 1;;
esac
"$PYTHON" -m venv "$work/user-compiled"
"$work/user-compiled/bin/pip" install -q "$compiled"
"$PYTHON" .ci/smoke_sync.py "$work/user-compiled" --expect compiled
