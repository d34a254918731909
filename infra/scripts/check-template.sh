#!/usr/bin/env bash
# Lints, scans, tests and builds the SAM template, as CI does.
#
#   infra/scripts/check-template.sh               # everything, then `sam build`
#   infra/scripts/check-template.sh --no-build    # skip the (slow) release build
#   infra/scripts/check-template.sh Intake Route  # build only these functions
#
# On a machine with only Rust and Python it first installs what it needs into
# the project's .venv: aws-sam-cli, cargo-lambda (with zig) and cfn-lint, and
# checkov in its own .venv/checkov (checkov pins a boto3 that aws-sam-cli
# does not accept). No Docker is needed: `sam validate --lint` and `sam build`
# with cargo-lambda run offline.
#
# Every step runs even when an earlier one failed; the exit status is
# non-zero when any failed.
set -uo pipefail
cd "$(dirname "$0")/../.."

export SAM_CLI_TELEMETRY=0
venv=.venv
checkov_venv=$venv/checkov
pip_flags=(--quiet --disable-pip-version-check)

build=1
build_ids=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) build_ids+=("$arg") ;;
  esac
done

install() {
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    python3 -m venv "$venv" || return 1
  fi
  local missing=()
  [ -x "$venv/bin/sam" ] || missing+=("aws-sam-cli>=1.140,<2")
  [ -x "$venv/bin/cargo-lambda" ] || missing+=("cargo-lambda>=1.8,<2")
  [ -x "$venv/bin/cfn-lint" ] || missing+=("cfn-lint>=1.30,<2")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]} into $venv"
    "$venv/bin/python" -m pip install "${pip_flags[@]}" "${missing[@]}" || return 1
  fi
  if [ ! -x "$checkov_venv/bin/checkov" ]; then
    echo "==> installing checkov into $checkov_venv"
    python3 -m venv "$checkov_venv" &&
      "$checkov_venv/bin/python" -m pip install "${pip_flags[@]}" "checkov>=3.2,<4" || return 1
  fi
}

if ! install; then
  echo "FAILED: installing the tools" >&2
  exit 1
fi
# `sam build` runs `cargo lambda`, which must be on PATH.
export PATH="$PWD/$venv/bin:$PATH"

failures=()
step() {
  local name=$1
  shift
  echo "==> $name"
  if "$@"; then
    echo "    ok: $name"
  else
    echo "    FAILED: $name" >&2
    failures+=("$name")
  fi
}

step "sam validate --lint" sam validate --lint --template-file template.yaml
step "cfn-lint" cfn-lint template.yaml
step "checkov" "$checkov_venv/bin/checkov" -f template.yaml --framework cloudformation \
  --compact --quiet --skip-download
step "template test" "$venv/bin/python" infra/scripts/test_template.py

if [ "$build" = 1 ]; then
  # The functions run on arm64: cargo-lambda cross-compiles (with zig) and
  # needs the target's standard library.
  if command -v rustup >/dev/null &&
    ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    step "rustup target add aarch64-unknown-linux-gnu" rustup target add aarch64-unknown-linux-gnu
  fi
  if [ ${#build_ids[@]} -eq 0 ]; then
    step "sam build" sam build --config-file infra/samconfig.toml
  else
    # `sam build` takes one resource id at a time; cargo reuses what the
    # previous one compiled.
    for id in "${build_ids[@]}"; do
      step "sam build $id" sam build --config-file infra/samconfig.toml "$id"
    done
  fi
fi

if [ ${#failures[@]} -gt 0 ]; then
  echo "==> failed: ${failures[*]}" >&2
  exit 1
fi
echo "==> template checks passed"
