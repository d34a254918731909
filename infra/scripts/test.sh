#!/usr/bin/env bash
# The test command: on a machine with only Rust and Python, installs what the
# tests need (moto and schemathesis into a project-local virtualenv) and runs
# every test, then schemathesis against `maof dev`'s API document.
# The AWS half of the suite starts its own moto_server on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
requirements=("moto[server]>=5.2,<6" "schemathesis>=4.32,<5")
if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/schemathesis" ]; then
  echo "==> installing ${requirements[*]} into $venv"
fi
# A no-op when both are installed at these versions.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
export MAOF_MOTO_SERVER="$PWD/$venv/bin/moto_server"

echo "==> cargo test (unit tests, contract suite on memory and aws/moto)"
cargo test --workspace --locked "$@"

echo "==> infra/scripts/api-conformance.sh (schemathesis against maof dev's /openapi.json)"
SCHEMATHESIS="$PWD/$venv/bin/schemathesis" infra/scripts/api-conformance.sh
