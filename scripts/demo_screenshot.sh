#!/usr/bin/env bash
# Screenshot of the demo page for the README, with a headless browser (Debian's chromium).
#
#   bash scripts/demo_screenshot.sh [OUT.png]          # default docs/images/demo.png
#
# Needs the demo extra (pip install ".[demo]") and chromium (apt-get install -y chromium).
# Starts `facemodel demo` on a free port of 127.0.0.1, waits for the page, takes a
# 1280 x 800 screenshot once the page has loaded (it opens with a face; BUDGET_MS of virtual
# time, default 120000, for its scripts) and
# stops the server. PORT=..., MODEL=DIR|REPO and
# CHROMIUM=/path/to/chromium override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/images/demo.png}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [ -z "$CHROMIUM" ]; then
  echo "demo_screenshot: no chromium found; install it (apt-get install -y chromium) or set CHROMIUM=" >&2
  exit 2
fi
PORT="${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
LOG="$(mktemp)"
PROFILE="$(mktemp -d)"
facemodel demo --port "$PORT" ${MODEL:+--model "$MODEL"} >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$PROFILE" "$LOG"' EXIT
for _ in $(seq 120); do  # up to 60 s for the model and the page
  if python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "demo_screenshot: the demo server exited:" >&2; cat "$LOG" >&2; exit 1
  fi
  sleep 0.5
done
mkdir -p "$(dirname "$OUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
  --disable-dev-shm-usage --user-data-dir="$PROFILE" --hide-scrollbars --window-size=1280,800 \
  --virtual-time-budget="${BUDGET_MS:-120000}" --screenshot="$OUT" "http://127.0.0.1:$PORT/" 2>/dev/null
echo "$OUT"
