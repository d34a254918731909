#!/usr/bin/env bash
# Prints each Lambda function's binary size, raw and zipped (as Lambda gets
# it), after `cargo lambda build --release --arm64`; fails when a function is
# missing, is not an arm64 binary, or is over the 8 MB zipped target.
#
#   infra/scripts/lambda-size.sh                 # build, then measure every function
#   infra/scripts/lambda-size.sh --no-build      # measure what target/lambda holds
#   infra/scripts/lambda-size.sh intake route    # only these
#
# The functions are the packages under functions/ (intake, route, agent-call,
# aggregate, events, sweeper, announcer). cargo-lambda comes from PATH or the project's .venv
# (infra/scripts/check-template.sh installs it there).
set -euo pipefail
cd "$(dirname "$0")/../.."

limit_mb=8
build=1
bins=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) bins+=("$arg") ;;
  esac
done

if [ ${#bins[@]} -eq 0 ]; then
  for manifest in functions/*/Cargo.toml; do
    bins+=("$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n1)")
  done
fi

if [ "$build" = 1 ]; then
  [ -x .venv/bin/cargo-lambda ] && export PATH="$PWD/.venv/bin:$PATH"
  if ! command -v cargo-lambda >/dev/null; then
    echo "cargo-lambda not found: pip install cargo-lambda (or run infra/scripts/check-template.sh)" >&2
    exit 1
  fi
  args=()
  for bin in "${bins[@]}"; do args+=(--bin "$bin"); done
  echo "==> cargo lambda build --release --arm64 ${args[*]}"
  cargo lambda build --release --arm64 "${args[@]}"
fi

target_dir=$(cargo metadata --format-version 1 --no-deps --offline |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

python3 - "$target_dir/lambda" "$limit_mb" "${bins[@]}" <<'EOF'
import io
import sys
import zipfile
from pathlib import Path

base, limit_mb, bins = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
machines = {0xB7: "arm64", 0x3E: "x86_64"}
mb = 1024 * 1024
failed = []
print(f"{'function':<12} {'arch':<8} {'bootstrap':>12} {'zipped':>12}  (target: < {limit_mb:g} MB zipped)")
for name in bins:
    path = base / name / "bootstrap"
    if not path.is_file():
        print(f"{name:<12} {'-':<8} {'missing':>12} {'-':>12}  {path}")
        failed.append(f"{name}: no {path}")
        continue
    data = path.read_bytes()
    arch = "?"
    if data[:4] == b"\x7fELF":
        arch = machines.get(int.from_bytes(data[18:20], "little"), "other")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)
    zipped = len(buf.getvalue())
    print(f"{name:<12} {arch:<8} {len(data) / mb:>9.2f} MB {zipped / mb:>9.2f} MB  ({zipped} bytes)")
    if arch != "arm64":
        failed.append(f"{name}: {arch} binary, not arm64")
    if zipped >= limit_mb * mb:
        failed.append(f"{name}: {zipped / mb:.2f} MB zipped, over {limit_mb:g} MB")
for f in failed:
    print(f"FAILED {f}", file=sys.stderr)
sys.exit(1 if failed else 0)
EOF
