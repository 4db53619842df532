#!/usr/bin/env bash
# Builds the Debian packages of the agent, the controller and slipctl with
# cargo-deb, each with its man page and (agent, slipctl) shell completions
# generated from the binary's own --help. Output: target/debian/*.deb.
#
#   packaging/build-debs.sh            # release build
#   packaging/build-debs.sh --dev      # from the debug build (tests: fast, large)
set -euo pipefail
cd "$(dirname "$0")/.."
unset CARGO_TARGET_DIR  # the package metadata names target/
profile=release
deb_flags=()
if [ "${1:-}" = "--dev" ]; then
  profile=dev
  deb_flags=(--fast)
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
dir=release
[ "$profile" = dev ] && dir=debug
if [ "$profile" = dev ]; then
  # The whole workspace, as the README's test command builds it: the same
  # features everywhere, so that build finds nothing left to compile.
  cargo build --workspace --locked
else
  cargo build --workspace --locked --profile "$profile" \
    --bin slipway-agent --bin slipway-controller --bin slipctl
fi
out=target/packaging
mkdir -p "$out"
bin=target/$dir
"$bin/slipway-agent" generate man | gzip -9n > "$out/slipway-agent.8.gz"
"$bin/slipway-controller" generate man | gzip -9n > "$out/slipway-controller.8.gz"
"$bin/slipctl" man | gzip -9n > "$out/slipctl.1.gz"
for tool in slipway-agent slipctl; do
  if [ "$tool" = slipctl ]; then gen=("$bin/slipctl" completions); else gen=("$bin/$tool" generate); fi
  "${gen[@]}" bash > "$out/$tool.bash"
  "${gen[@]}" zsh > "$out/_$tool"
  "${gen[@]}" fish > "$out/$tool.fish"
done
for pkg in agent controller ctl; do
  cargo deb --no-build --profile "$profile" -p "$pkg" "${deb_flags[@]}" --quiet
done
ls -l target/debian/*.deb
