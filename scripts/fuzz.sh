#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time; exits non-zero if any finds a crash.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# Not part of CI (it needs nightly and minutes). Needs `cargo +nightly` and cargo-fuzz
# (installed here if missing: `cargo install cargo-fuzz --locked`).
#
# Targets (fuzz/fuzz_targets/):
#   line_reader   wire::line::LineReader: arbitrary bytes, chunkings, drains; checked
#                 against a model of SPEC §2 framing
#   frame_decode  protocol::decode on arbitrary bytes, and the responses encoded for it
# Still to come, with the HTTP and WebSocket transports (a later issue): `http_request`
# (the request-head parser: chunked arrival, head size cap, Content-Length vs
# Transfer-Encoding) and `ws_codec` (WebSocket frames: masking, fragmentation, control
# frames, size limits). Add them to TARGETS below with a seed corpus in fuzz/corpus/<target>/.
#
# Seeds are read from fuzz/corpus/<target>/ (committed, never written to); what the fuzzer
# learns goes to fuzz/target/corpus/<target>/ (kept between runs, not committed). A crash is
# saved under fuzz/artifacts/<target>/; replay it with
#   cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/crash-...
# and turn it into a regression test under tests/. Logs: fuzz/target/logs/<target>.log.
#
# Environment: FUZZ_FEATURES (e.g. `strict-cr`, see fuzz/Cargo.toml), FUZZ_JOBS (parallel
# jobs per target, default 1; with more, the statistics are in fuzz/fuzz-N.log), FUZZ_RSS_MB
# (memory cap per process, default 2048).
set -euo pipefail

TARGETS=(line_reader frame_decode)
# TARGETS+=(http_request ws_codec)   # once the HTTP parser and WebSocket codec exist

secs=${1:-60}
shift || true
[ $# -gt 0 ] && TARGETS=("$@")
case $secs in '' | *[!0-9]*) echo "fuzz.sh: seconds must be a number" >&2; exit 2 ;; esac

fuzz_dir=$(cd "$(dirname "$0")/../fuzz" && pwd)
cd "$fuzz_dir"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

features=()
[ -n "${FUZZ_FEATURES:-}" ] && features=(--features "$FUZZ_FEATURES")
cargo +nightly fuzz build "${features[@]}"

# -jobs (even =1) makes libFuzzer run children that log to fuzz-N.log in the current directory.
jobs=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
    jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi

mkdir -p target/logs
failed=()
summary=()
for t in "${TARGETS[@]}"; do
    work=target/corpus/$t
    mkdir -p "$work" "artifacts/$t"
    log=target/logs/$t.log
    echo "== $t: ${secs}s (log: fuzz/$log)"
    rc=0
    # libFuzzer stops itself after max_total_time; the outer timeout only guards against a
    # hang outside it. -timeout: one input running over 10 s counts as a finding (a
    # quadratic loop); -max_len: frames well past the framer's small limits.
    timeout --kill-after=30 $((secs + 300)) \
        cargo +nightly fuzz run "${features[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -max_len=8192 -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        "${jobs[@]}" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
    corpus=$(find "$work" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        summary+=("$t: FAILED (exit $rc) after $execs execs; see fuzz/$log and fuzz/artifacts/$t/")
        grep -E -A1 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -8 | sed 's/^/   /' || true
    else
        summary+=("$t: ok, $execs execs, coverage ${cov:-?}, corpus $corpus inputs")
    fi
    echo "   ${summary[-1]}"
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: findings in: ${failed[*]}" >&2
    exit 1
fi
