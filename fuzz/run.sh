#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) on stable Rust, without
# a sanitizer (the targets are safe Rust; libFuzzer finds panics and the
# targets' own assertions). Needs cargo-fuzz: `cargo install cargo-fuzz --locked`.
# A crash is saved under fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-30}
cargo fuzz build -s none
for target in archive manifest spec; do
  echo "==> fuzz $target for ${SECONDS_EACH}s"
  mkdir -p "corpus/$target"
  cargo fuzz run -s none "$target" "corpus/$target" -- -max_total_time="$SECONDS_EACH" 2>&1 |
    grep -E '^(Done|==|INFO: Running|.*panicked)' || true
  # libFuzzer exits non-zero on a crash; pipefail carries it here.
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $target crashed: see fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
