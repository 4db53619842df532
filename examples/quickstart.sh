#!/usr/bin/env bash
# Slipway's main job, locally, on embedded defaults: a controller on SQLite, two
# agents (a preprod host and a prod host) enrolled with one-time join tokens and
# talking mTLS, the sample app published once and signed, deployed to preprod
# with a CI token, promoted to prod by digest with the admin (promoter) token,
# and the fleet status printed.
# Everything lives in a temp dir and is stopped on exit (KEEP=1 keeps it running
# until Ctrl-C so you can poke at it).
set -euo pipefail

cd "$(dirname "$0")/.."
CTL_PORT=${CTL_PORT:-17400}
HTTP_PORT=${HTTP_PORT:-17480}
PRE_PORT=${PRE_PORT:-18080}
PROD_PORT=${PROD_PORT:-18081}

echo "==> building (cargo build --workspace)"
cargo build --workspace --quiet
BIN=$PWD/target/debug
WORK=$(mktemp -d /tmp/slipway-quickstart.XXXXXX)
export SLIPWAY_CONTROLLER=https://127.0.0.1:$CTL_PORT

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Apps outlive their agent by design; stop them explicitly here.
  for f in "$WORK"/agent-*/apps/*/run/*.json; do
    [ -f "$f" ] || continue
    pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")
    [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; see $WORK/*.log" >&2
  return 1
}

echo "==> controller on 127.0.0.1:$CTL_PORT (SQLite + blobs under $WORK/controller)"
"$BIN/slipway-controller" --listen "127.0.0.1:$CTL_PORT" --http-listen "127.0.0.1:$HTTP_PORT" --data-dir "$WORK/controller" >"$WORK/controller.log" 2>&1 &
PIDS+=($!)
wait_port "$CTL_PORT"
for _ in $(seq 1 100); do [ -s "$WORK/controller/admin.token" ] && break; sleep 0.1; done
# The first start wrote its CA and a bootstrap admin token (0600) under the data dir.
export SLIPWAY_CA_CERT=$WORK/controller/pki/ca.pem
export SLIPWAY_TOKEN_FILE=$WORK/controller/admin.token

echo "==> a publisher signing key; agents trust its public half"
"$BIN/slipctl" keys generate --out "$WORK/release.key" >"$WORK/release.pub"
PUBKEY=$(cat "$WORK/release.pub")
echo "    $PUBKEY"

start_agent() { # host env port
  local dir="$WORK/agent-$1"
  mkdir -p "$dir/apps/web/shared"
  # Secrets live on the host only; Slipway checks the NAME is in the process env.
  printf 'DATABASE_URL=postgres://app:local-secret@127.0.0.1/app\n' >"$dir/apps/web/shared/.env"
  chmod 600 "$dir/apps/web/shared/.env"
  # A one-time join token: it names the host and pins the controller's CA.
  "$BIN/slipctl" hosts add "$1" --env "$2" >"$WORK/agent-$1.join" 2>/dev/null
  cat >"$WORK/agent-$1.toml" <<TOML
controller = "$SLIPWAY_CONTROLLER"
host = "$1"
environment = "$2"
state_dir = "$dir"
join_token_file = "$WORK/agent-$1.join"

[trust]
publisher_keys = ["$PUBKEY"]

[apps.web]
port = $3
TOML
  "$BIN/slipway-agent" --config "$WORK/agent-$1.toml" >"$WORK/agent-$1.log" 2>&1 &
  PIDS+=($!)
}
echo "==> agents: preprod-1 (app on :$PRE_PORT) and prod-1 (app on :$PROD_PORT)"
start_agent preprod-1 preprod "$PRE_PORT"
start_agent prod-1 prod "$PROD_PORT"
for _ in $(seq 1 100); do # both enrolled and connected: a rollout plans the hosts it sees
  [ "$("$BIN/slipctl" hosts --json | grep -c '"connected": true')" = 2 ] && break
  sleep 0.2
done

echo "==> a release of the sample app"
REL="$WORK/release"
mkdir -p "$REL/bin"
cp "$BIN/slipway-sample-app" "$REL/bin/"
cp examples/sample-app/release/slipway.toml examples/sample-app/release/sample.conf "$REL/"

echo "==> a CI token: publisher + deployer (never production)"
CI_TOKEN=$("$BIN/slipctl" tokens create ci --role publisher --role deployer 2>/dev/null)
echo "==> CI: slipctl publish --sign"
SLIPWAY_TOKEN=$CI_TOKEN "$BIN/slipctl" publish "$REL" --app web --version 1.0.0 --sign "$WORK/release.key"
echo "==> CI: slipctl deploy web 1.0.0 --env preprod --wait"
SLIPWAY_TOKEN=$CI_TOKEN "$BIN/slipctl" deploy web 1.0.0 --env preprod --wait --timeout 60
echo "    preprod answers: $(curl -fsS "http://127.0.0.1:$PRE_PORT/")"
echo "==> CI tries to promote to prod (refused by the controller):"
if SLIPWAY_TOKEN=$CI_TOKEN "$BIN/slipctl" promote web --from preprod --to prod 2>&1 | sed 's/^/    /'; then
  echo "a CI token promoted to production" >&2
  exit 1
fi
echo "==> founder (admin token): slipctl promote web --from preprod --to prod --wait"
"$BIN/slipctl" promote web --from preprod --to prod --wait --timeout 60
echo "    prod answers:    $(curl -fsS "http://127.0.0.1:$PROD_PORT/")"
echo "==> slipctl rollout status web --env prod --once"
"$BIN/slipctl" rollout status web --env prod --once
echo "==> slipctl status"
"$BIN/slipctl" status
echo "==> slipctl hosts"
"$BIN/slipctl" hosts
echo "==> the controller's health and metrics (HTTPS, its CA)"
echo "    /healthz: $(curl -fsS --cacert "$SLIPWAY_CA_CERT" "https://127.0.0.1:$HTTP_PORT/healthz")"
echo "    /metrics: $(curl -fsS --cacert "$SLIPWAY_CA_CERT" "https://127.0.0.1:$HTTP_PORT/metrics" | grep '^slipway_host_apps{state="ok"}')"
echo "    dashboard: https://127.0.0.1:$HTTP_PORT/ (sign in with an API token)"

if [ "${KEEP:-0}" = 1 ]; then
  echo
  echo "Running. export SLIPWAY_CONTROLLER=$SLIPWAY_CONTROLLER SLIPWAY_CA_CERT=$SLIPWAY_CA_CERT SLIPWAY_TOKEN_FILE=$SLIPWAY_TOKEN_FILE"
  echo "and try: $BIN/slipctl releases web"
  echo "Files under $WORK. Ctrl-C stops everything."
  wait
fi
