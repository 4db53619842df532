#!/usr/bin/env bash
# Builds the deploy benchmark's app: a real Python tree (~241 MiB, ~12.4k
# entries) from pinned PyPI wheels, plus a tiny HTTP entrypoint answering
# /health on $PORT and a slipway.toml. Reproducible: exact pins, wheels only,
# one fixed platform and ABI (not the local interpreter's), no .pyc files.
#
#   tests/bench/python-tree.sh DIR      # builds DIR unless DIR/.complete exists
#
# Needs python3 with pip (Debian: apt-get install python3-pip).
set -euo pipefail

dir=${1:?usage: python-tree.sh DIR}
dir=${dir%/}
# The marker sits beside the tree, not in it (the tree is what gets published).
if [[ -f "$dir.complete" ]]; then
    exit 0
fi
rm -rf "$dir" "$dir.partial" "$dir.complete"
mkdir -p "$dir.partial"
out=$(cd "$dir.partial" && pwd)

python3 -m pip --version >/dev/null 2>&1 || {
    echo "python-tree.sh: python3 has no pip (apt-get install python3-pip)" >&2
    exit 1
}

# Wheels for CPython 3.11 on manylinux2014 x86_64, whatever python runs pip.
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --no-compile --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux2014_x86_64 \
    --target "$out/site-packages" \
    numpy==1.26.4 pandas==2.2.2 matplotlib==3.9.0 pillow==10.3.0 fonttools==4.53.0 \
    contourpy==1.2.1 kiwisolver==1.4.5 cycler==0.12.1 pyparsing==3.1.2 packaging==24.0 \
    django==5.0.6 sqlalchemy==2.0.30 python-dateutil==2.9.0.post0 pytz==2024.1 \
    tzdata==2024.1 six==1.16.0 pygments==2.18.0 jinja2==3.1.4 markupsafe==2.1.5 \
    flask==3.0.3 werkzeug==3.0.3 requests==2.32.3 urllib3==2.2.1 idna==3.7 \
    certifi==2024.6.2 charset-normalizer==3.3.2 click==8.1.7 itsdangerous==2.2.0 \
    blinker==1.8.2
# pip's bin/ holds scripts whose shebang names the python that ran pip: drop it,
# keep the rest as the wheels shipped it.
rm -rf "$out/site-packages/bin"

mkdir -p "$out/app" "$out/bin"
cat >"$out/app/serve.py" <<'EOF'
"""The benchmark app: answers /health (and / with the release dir's name) on $PORT."""
import http.server
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "site-packages"))

RELEASE = os.path.basename(os.getcwd()).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n" if self.path == "/health" else b"bench-app " + RELEASE + b"\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
EOF
# The interpreter is the host's (/usr/bin/python3 on Debian), found at start.
cat >"$out/bin/serve" <<'EOF'
#!/bin/sh
# Starts the benchmark app from the release dir.
cd "$(dirname "$0")/.." || exit 1
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
exec "$PY" app/serve.py
EOF
chmod 755 "$out/bin/serve"
cat >"$out/slipway.toml" <<'EOF'
# The deploy benchmark's app. min_healthy_secs = 0: healthy at the first
# passing probe, like the push script's single curl.
[processes.web]
command = ["bin/serve"]
health = { http = "/health", timeout_secs = 30, min_healthy_secs = 0 }
EOF

mv "$out" "$dir"
touch "$dir.complete"
echo "python-tree.sh: built $dir: $(du -sm "$dir" | cut -f1) MiB, $(find "$dir" | wc -l) entries"
