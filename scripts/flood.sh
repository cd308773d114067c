#!/usr/bin/env bash
# The bundled socket-flood load tester: builds src/bin/flood/ in release mode and runs it
# with the arguments given. `scripts/flood.sh --help` lists every scenario and flag.
#
#   scripts/flood.sh fanout --addr 127.0.0.1:7700 --subscribers 1000 --publishers 4 --messages 5000
#   scripts/flood.sh fanout --addr 127.0.0.1:7700 --subscribers 1000 --messages 2500 --rate 1000
#   scripts/flood.sh connect --addr 127.0.0.1:7700 --connections 19000 --server-pid "$(pidof chimed)"
#   scripts/flood.sh ingest --addr 127.0.0.1:7700 --messages 1000
#   scripts/flood.sh churn --addr 127.0.0.1:7700 --connections 64 --duration 10
#
# One process holds as many connections as its open-files limit allows (less 64); for more, run
# several at once, each with its own --source-first (e.g. 2 and 40) so their source addresses
# do not overlap. docs/BENCHMARKS.md has the commands behind every published figure.
#
# Progress goes to stderr; a table and, as the last line of stdout, one JSON object with every
# figure go to stdout. FLOOD_BIN=/path/to/flood skips the build and runs that binary (the
# integration test uses the one cargo test built).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -n "${FLOOD_BIN:-}" ]; then
    bin="$FLOOD_BIN"
else
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    # Build output goes to stderr so that stdout stays the tool's table and JSON line.
    (cd "$root" && cargo build --release --quiet --bin flood) >&2
    bin="${CARGO_TARGET_DIR:-$root/target}/release/flood"
fi

exec "$bin" "$@"
