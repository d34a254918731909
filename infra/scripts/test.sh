#!/usr/bin/env bash
# The test command: on a machine with only Rust and Python, installs what the
# tests need (moto into a project-local virtualenv) and runs every test.
# The AWS half of the suite starts its own moto_server on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.venv
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "==> installing moto[server] into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]>=5.2,<6"
fi
export MAOF_MOTO_SERVER="$PWD/$venv/bin/moto_server"

echo "==> cargo test (unit tests, contract suite on memory and aws/moto)"
cargo test --workspace --locked "$@"
