#!/usr/bin/env bash
# The API document is the API: builds and starts `maof dev` on a free loopback
# port and runs schemathesis against its /openapi.json with the checks
# not_a_server_error, status_code_conformance, content_type_conformance,
# response_schema_conformance and negative_data_rejection. Any failure fails
# the script; the server is stopped however it ends.
#
# test.sh runs it after installing schemathesis into .venv. Alone:
#   infra/scripts/api-conformance.sh [extra schemathesis run options, e.g. --seed N]
# MAOF_SCHEMATHESIS_EXAMPLES sets the examples per operation (default 100).
set -euo pipefail
cd "$(dirname "$0")/../.."

schemathesis=${SCHEMATHESIS:-.venv/bin/schemathesis}
examples=${MAOF_SCHEMATHESIS_EXAMPLES:-100}

# The tests in the same build resolve the same features as `cargo test
# --workspace`, so after it only the binary itself is built.
cargo build --workspace --tests --bin maof --locked --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
maof="$target_dir/debug/maof"

# The server's log and Hypothesis's files (it keeps them in `.hypothesis/`
# of the working directory otherwise) live outside the work tree.
scratch=$(mktemp -d)
log="$scratch/maof-dev.log"
export HYPOTHESIS_STORAGE_DIRECTORY="$scratch/hypothesis"
server=
stop() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap stop EXIT

# An empty environment: `maof dev` reads provider keys from environment
# variables named after an agent's `secret`, and Bedrock agents use the AWS
# SDK's credentials, so an agent that schemathesis registers can reach no
# provider and no variable can be read as a key. IMDS is off for the same reason.
# A signing secret of this run's own, so that a platform_admin token can be
# minted: it reaches every route (platform agents, tenants' settings too).
jwt_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
env -i AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-east-1 RUST_LOG=warn \
  MAOF_JWT_SECRET="$jwt_secret" \
  "$maof" dev --port 0 >"$log" 2>&1 &
server=$!

for _ in $(seq 300); do
  grep -q '^token' "$log" && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$log"
    echo "maof dev exited before it was ready" >&2
    exit 1
  fi
  sleep 0.2
done
base=$(sed -n 's|^maof dev: listening on \(http://127\.0\.0\.1:[0-9]*\)$|\1|p' "$log")
token=$(MAOF_JWT_SECRET="$jwt_secret" "$maof" token --tenant dev --roles platform_admin --ttl 1h)
if [ -z "$base" ] || [ -z "$token" ]; then
  cat "$log"
  echo "maof dev did not print its address and token" >&2
  exit 1
fi

echo "==> schemathesis against $base/openapi.json ($examples examples per operation)"
status=0
"$schemathesis" --config-file infra/schemathesis.toml run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
  --header "Authorization: Bearer $token" \
  --max-examples "$examples" \
  --generation-database none \
  --no-color \
  "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "==> maof dev's warnings and errors:"
  tail -n 50 "$log"
fi
exit "$status"
