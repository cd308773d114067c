#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time; exits non-zero if any finds a crash.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# Not part of CI (it takes minutes). Needs cargo-fuzz (installed here if missing:
# `cargo install cargo-fuzz --locked`). cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer=address and friends); on a stable toolchain this script sets
# RUSTC_BOOTSTRAP=1 so stable rustc accepts them (FUZZ_TOOLCHAIN=nightly uses
# `cargo +nightly` instead, where one is installed).
#
# Targets (fuzz/fuzz_targets/):
#   line_reader   wire::line::LineReader: arbitrary bytes, chunkings, drains; checked
#                 against a model of SPEC §2 framing
#   frame_decode  protocol::decode on arbitrary bytes, and the responses encoded for it
#   http_request  wire::http: parse_head on arbitrary chunkings with small limits (verdict
#                 independent of the chunking, framing consistent with the headers),
#                 ChunkedDecoder on arbitrary input/chunkings/output budgets and on encoded
#                 bodies (round trip), parse_range against RFC 9110's exact forms
#   ws_codec      wire::websocket: Decoder on arbitrary bytes and chunkings (same result as
#                 one read, bounded buffer), messages written with header/close_frame and
#                 masked decode back to themselves, header length forms
# A new target: a [[bin]] in fuzz/Cargo.toml, seeds in fuzz/corpus/<target>/, a name below.
#
# Seeds are read from fuzz/corpus/<target>/ (committed, never written to); what the fuzzer
# learns goes to fuzz/target/corpus/<target>/ (kept between runs, not committed). A crash is
# saved under fuzz/artifacts/<target>/; replay it with
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/crash-...
# and turn it into a regression unit test beside the code it broke (src/wire/*, src/protocol/*).
# Logs: fuzz/target/logs/<target>.log.
#
# Environment: FUZZ_TOOLCHAIN (`nightly` to use `cargo +nightly`; default: the active
# toolchain with RUSTC_BOOTSTRAP=1), FUZZ_JOBS (parallel jobs per target, default 1; with
# more, the statistics are in fuzz/fuzz-N.log), FUZZ_RSS_MB (memory cap per process,
# default 2048).
set -euo pipefail

TARGETS=(line_reader frame_decode http_request ws_codec)

secs=${1:-60}
shift || true
[ $# -gt 0 ] && TARGETS=("$@")
case $secs in '' | *[!0-9]*) echo "fuzz.sh: seconds must be a number" >&2; exit 2 ;; esac

fuzz_dir=$(cd "$(dirname "$0")/../fuzz" && pwd)
cd "$fuzz_dir"

cargo=(cargo)
if [ "${FUZZ_TOOLCHAIN:-}" = nightly ]; then
    if ! cargo +nightly --version >/dev/null 2>&1; then
        echo "fuzz.sh: FUZZ_TOOLCHAIN=nightly but no nightly toolchain is installed" >&2
        exit 2
    fi
    cargo=(cargo +nightly)
else
    # Lets stable rustc take cargo-fuzz's -Z flags. Only this script's cargo sees it.
    export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

"${cargo[@]}" fuzz build

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
        "${cargo[@]}" fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -max_len=8192 -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        "${jobs[@]}" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}' || true)
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | awk '{s = $5} END {print s + 0}' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
    corpus=$(find "$work" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        summary+=("$t: FAILED (exit $rc) after $execs execs; see fuzz/$log and fuzz/artifacts/$t/")
        grep -E -A1 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -8 | sed 's/^/   /' || true
    else
        summary+=("$t: ok, $execs execs in ${took}s, coverage ${cov:-?}, corpus $corpus inputs")
    fi
    echo "   ${summary[-1]}"
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: findings in: ${failed[*]}" >&2
    exit 1
fi
