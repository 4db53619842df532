#!/usr/bin/env bash
# The push script Slipway replaces, as the field notes describe it
# (/work/shared/field-notes: innercontext's deploy.sh, deploy-paradigm, sando):
# pack the tree with tar + zstd, scp it to the host, unpack it into
# releases/<timestamp>, `ln -sfn` current, restart the app, curl its health URL,
# roll back if it stays unhealthy, keep the last 3 releases. The deploy
# benchmark (tests/src/bin/deploybench.rs) runs it as Slipway's peer.
#
#   DEPLOY_SERVER=root@127.0.0.1 DEPLOY_SSH_OPTS="-o Port=2222 -i KEY" \
#   DEPLOY_ROOT=/srv/app DEPLOY_PORT=8000 tests/bench/deploy.sh SRC_DIR
#
# DEPLOY_LOCAL=1 runs the host side on this machine without ssh/scp (a plain
# cp instead of scp), for machines where no sshd can run.
set -euo pipefail

src=${1:?usage: deploy.sh SRC_DIR}
server=${DEPLOY_SERVER:-}
root=${DEPLOY_ROOT:?DEPLOY_ROOT is required}
port=${DEPLOY_PORT:?DEPLOY_PORT is required}
# Word splitting of the options is intended (several -o flags).
read -r -a ssh_opts <<<"${DEPLOY_SSH_OPTS:-}"
local_only=${DEPLOY_LOCAL:-0}

remote() {
    if [[ "$local_only" == 1 ]]; then
        bash -c "$1"
    else
        ssh "${ssh_opts[@]}" "$server" "$1"
    fi
}

upload() {
    if [[ "$local_only" == 1 ]]; then
        cp "$1" "$2"
    else
        scp -q "${ssh_opts[@]}" "$1" "$server:$2"
    fi
}

id=$(date -u +%Y%m%dT%H%M%S.%N)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Pack.
tar -C "$src" -cf - . | zstd -q -3 -T0 -o "$tmp/release.tar.zst"

# 2. Prepare the host and upload.
remote "mkdir -p '$root/releases' '$root/incoming'"
upload "$tmp/release.tar.zst" "$root/incoming/$id.tar.zst"

# 3. On the host: unpack, flip, restart, health check, rollback, cleanup.
remote "$(
    cat <<EOF
set -eu
root='$root'; id='$id'; port='$port'
exec 9>"\$root/.deploy.lock"
flock -n 9 || { echo "another deploy holds \$root/.deploy.lock" >&2; exit 1; }
mkdir "\$root/releases/\$id"
zstd -q -dc "\$root/incoming/\$id.tar.zst" | tar -xf - -C "\$root/releases/\$id"
rm -f "\$root/incoming/\$id.tar.zst"
prev=\$(readlink "\$root/current" || true)
ln -sfn "releases/\$id" "\$root/current"

restart() {
    if [ -f "\$root/app.pid" ]; then
        old=\$(cat "\$root/app.pid")
        kill "\$old" 2>/dev/null || true
        for _ in \$(seq 1 100); do kill -0 "\$old" 2>/dev/null || break; sleep 0.05; done
        kill -9 "\$old" 2>/dev/null || true
    fi
    cd "\$root/current"
    PORT="\$port" setsid nohup bin/serve </dev/null >>"\$root/app.log" 2>&1 9>&- &
    echo \$! >"\$root/app.pid"
    cd "\$root"
}

healthy() {
    for _ in \$(seq 1 300); do
        curl -fsS -o /dev/null "http://127.0.0.1:\$port/health" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

restart
if ! healthy; then
    echo "release \$id is unhealthy: rolling back to \${prev:-nothing}" >&2
    if [ -n "\$prev" ]; then
        ln -sfn "\$prev" "\$root/current"
        restart
    fi
    exit 1
fi

# Keep the last 3 releases.
ls -1d "\$root"/releases/* | sort | head -n -3 | xargs -r rm -rf
echo "\$(date -u +%FT%TZ) deployed \$id" >>"\$root/deploy.log"
EOF
)"
echo "deployed $id"
