#!/usr/bin/env bash
# chimed against its peers: the same flood workloads against chimed (release build, temporary
# SQLite database, --rate-limits off), ngircd, InspIRCd and redis-server, all on 127.0.0.1, then
# a table of the figures and of the chimed/peer ratios.
#
#   scripts/compare.sh                      # fanout 1 server x 1,000 subscribers (as fast as
#                                           # acknowledged, and paced), connect 10,000
#   MESSAGES=500 CONNECTIONS=2000 scripts/compare.sh
#   TARGETS="chimed redis" WORKLOADS="fanout" scripts/compare.sh
#
# Workloads (WORKLOADS, default "connect fanout paced"): connect (CONNECTIONS held idle, time to
# ready, RSS per connection), fanout (posts as fast as acknowledged: deliveries/s), paced (the
# same fanout at RATE posts/s in total, default 1000: 1,000,000 deliveries/s to 1,000
# subscribers; latency at a fixed load).
#
# Knobs (environment): SUBSCRIBERS (1000), PUBLISHERS (4), MESSAGES per publisher (1500), SIZE
# (128), WINDOW (16), RATE (1000), CONNECTIONS (10000), CONCURRENCY (connects and handshakes in flight; default
# 256, but 8 for ngircd, whose short listen backlog drops SYNs past a few, which then wait
# seconds for a retransmit; InspIRCd 3 completes a registration only in its once-a-second
# background pass, so it needs many in flight), IRC_CHANNEL_MEMBERS (100: every IRC
# JOIN is broadcast to the channel, so `connect` puts IRC clients in channels of this size
# instead of one channel of 10,000), TARGETS (chimed ngircd inspircd redis), KEEP=1 keeps the
# work directory (logs, configs, JSON lines).
#
# Missing peers are installed with apt-get (Debian packages ngircd, inspircd, redis-server; the
# package named `ergo` is not an IRC server). Every server gets a fresh process per workload (so
# its memory is measured from a clean start), flood throttles off and connection limits raised
# in temporary config files. Every run is bounded in time; every process started here is killed
# on exit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

SUBSCRIBERS="${SUBSCRIBERS:-1000}"
PUBLISHERS="${PUBLISHERS:-4}"
MESSAGES="${MESSAGES:-1500}"
SIZE="${SIZE:-128}"
WINDOW="${WINDOW:-16}"
CONNECTIONS="${CONNECTIONS:-10000}"
CONCURRENCY="${CONCURRENCY:-}"
IRC_CHANNEL_MEMBERS="${IRC_CHANNEL_MEMBERS:-100}"
RATE="${RATE:-1000}"
TARGETS="${TARGETS:-chimed ngircd inspircd redis}"
WORKLOADS="${WORKLOADS:-connect fanout paced}"
RUN_TIMEOUT="${RUN_TIMEOUT:-300}"

work="$(mktemp -d "${TMPDIR:-/tmp}/chimed-compare.XXXXXX")"
server_pid=""

cleanup() {
    stop_server
    if [ "${KEEP:-0}" = 1 ]; then
        echo "compare.sh: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "compare.sh: $*" >&2; }

stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}

# ---- tools ------------------------------------------------------------------------------

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v jq >/dev/null 2>&1 || missing+=(jq)
for t in $TARGETS; do
    case "$t" in
        ngircd) command -v ngircd >/dev/null 2>&1 || missing+=(ngircd) ;;
        inspircd) command -v inspircd >/dev/null 2>&1 || missing+=(inspircd) ;;
        redis) command -v redis-server >/dev/null 2>&1 || missing+=(redis-server) ;;
    esac
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        log "apt-get install failed; targets without their server are skipped"
fi
command -v jq >/dev/null 2>&1 || { log "jq is required"; exit 2; }

log "building chimed and flood (release)"
cargo build --release --quiet --bin chimed --bin flood >&2
target_dir="${CARGO_TARGET_DIR:-$root/target}"
chimed_bin="$target_dir/release/chimed"
flood_bin="$target_dir/release/flood"

# Servers and the tool may hold ~10,000 sockets each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- servers ----------------------------------------------------------------------------

# A loopback port nothing listens on, below the ephemeral range: the flood's own client ports
# (thousands of them in TIME_WAIT after a run) are taken from that range, and a server that does
# not set SO_REUSEADDR cannot bind one of those.
free_port() {
    local p low
    low="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
    [ "$low" -gt 12000 ] || low=32768
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Waits (at most 30 s) until 127.0.0.1:$1 accepts connections and $server_pid still runs.
wait_port() {
    for _ in $(seq 1 300); do
        kill -0 "$server_pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Starts a fresh server of kind $1; sets server_pid and addr.
start_server() {
    local kind="$1" port dir="$work/$1-$RANDOM"
    mkdir -p "$dir"
    case "$kind" in
        chimed)
            # mimalloc keeps freed pages (the Argon2 memory of the tool's REGISTERs) for
            # reuse; without purging them at once, new connections reuse them and RSS
            # does not show what a connection costs.
            MIMALLOC_PURGE_DELAY=0 RUST_LOG=info "$chimed_bin" --listen 127.0.0.1:0 --db "sqlite://$dir/chimed.db" \
                --files-dir "$dir/files" --rate-limits off 2>"$dir/log" &
            server_pid=$!
            addr=""
            for _ in $(seq 1 300); do
                addr="$(grep -o 'listening on [0-9.:]*' "$dir/log" | head -1 | awk '{print $3}')" || true
                [ -n "$addr" ] && break
                kill -0 "$server_pid" 2>/dev/null || break
                sleep 0.1
            done
            [ -n "$addr" ] || { log "chimed did not start: $(tail -5 "$dir/log")"; return 1; }
            ;;
        ngircd)
            port="$(free_port)"
            # ngircd.conf(5) of ngIRCd 26: MaxPenaltyTime = 0 switches the flood penalties off;
            # MaxConnections/MaxConnectionsIP/MaxJoins = 0 mean unlimited.
            cat >"$dir/ngircd.conf" <<EOF
[Global]
Name = flood.irc
Info = flood peer
Listen = 127.0.0.1
Ports = $port
PidFile = $dir/ngircd.pid
MotdPhrase = flood
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 9
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
EOF
            ngircd -n -f "$dir/ngircd.conf" >"$dir/log" 2>&1 &
            server_pid=$!
            addr="127.0.0.1:$port"
            wait_port "$port" || { log "ngircd did not start: $(tail -5 "$dir/log")"; return 1; }
            ;;
        inspircd)
            port="$(free_port)"
            # InspIRCd 3 <connect> class: a threshold and commandrate this high never fakelag or
            # kill, send/receive queues of megabytes, no per-IP limits, no DNS or ident lookups.
            cat >"$dir/inspircd.conf" <<EOF
<server name="flood.irc" description="flood peer" network="Flood">
<admin name="flood" nick="flood" email="flood@localhost">
<bind address="127.0.0.1" port="$port" type="clients">
<connect name="flood" allow="*" timeout="60" pingfreq="600" maxchans="1000"
         hardsendq="64M" softsendq="16M" recvq="16M" threshold="1000000" commandrate="4000000000"
         fakelag="yes" localmax="100000" globalmax="100000" limit="100000" resolvehostnames="no" useident="no">
<channels users="1000" opers="1000">
<performance softlimit="19000" somaxconn="4096" clonesonconnect="no" netbuffersize="65536" quietbursts="yes">
<security hideserver="" userstats="Pu" maxtargets="20">
<limits maxnick="30" maxchan="60">
<options prefixquit="Quit: " syntaxhints="no" announcets="no">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="$dir/inspircd.log">
EOF
            inspircd --config "$dir/inspircd.conf" --nofork --nopid --runasroot >"$dir/log" 2>&1 &
            server_pid=$!
            addr="127.0.0.1:$port"
            wait_port "$port" || { log "inspircd did not start: $(tail -5 "$dir/log")"; return 1; }
            ;;
        redis)
            port="$(free_port)"
            # No persistence, no output-buffer limit for pub/sub clients, room for the clients.
            # protected-mode off: it refuses every client not from 127.0.0.1 itself, and past a
            # few thousand connections flood spreads its sources over 127.0.0.2, .3, ...
            redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no --maxclients 19000 \
                --client-output-buffer-limit 'pubsub 0 0 0' --dir "$dir" --daemonize no >"$dir/log" 2>&1 &
            server_pid=$!
            addr="127.0.0.1:$port"
            wait_port "$port" || { log "redis-server did not start: $(tail -5 "$dir/log")"; return 1; }
            ;;
    esac
}

available() {
    case "$1" in
        chimed) [ -x "$chimed_bin" ] ;;
        ngircd) command -v ngircd >/dev/null 2>&1 ;;
        inspircd) command -v inspircd >/dev/null 2>&1 ;;
        redis) command -v redis-server >/dev/null 2>&1 ;;
        *) return 1 ;;
    esac
}

flood_target() {
    case "$1" in
        chimed) echo chimed ;;
        ngircd | inspircd) echo irc ;;
        redis) echo redis ;;
    esac
}

# Runs workload $1 against a fresh server of kind $2; the JSON line goes to $work/$1-$2.json.
run_one() {
    local workload="$1" kind="$2" out="$work/$1-$2.json" args=()
    if ! available "$kind"; then
        log "skipping $kind: not installed"
        return 0
    fi
    start_server "$kind" || { stop_server; return 0; }
    local target
    target="$(flood_target "$kind")"
    case "$workload" in
        fanout | paced)
            args=(fanout --subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS" --messages "$MESSAGES"
                --size "$SIZE" --window "$WINDOW" --duration 120 --drain-timeout 15)
            [ "$workload" = paced ] && args+=(--rate "$RATE")
            ;;
        connect)
            args=(connect --connections "$CONNECTIONS" --hold 1)
            if [ "$target" = irc ]; then
                args+=(--channel-members "$IRC_CHANNEL_MEMBERS")
            fi
            ;;
    esac
    local concurrency="$CONCURRENCY"
    if [ -z "$concurrency" ]; then
        concurrency=256
        [ "$kind" = ngircd ] && concurrency=8
    fi
    log "$workload against $kind ($addr, $concurrency connects in flight)"
    timeout -k 5 "$RUN_TIMEOUT" "$flood_bin" "${args[@]}" --target "$target" --addr "$addr" \
        --server-pid "$server_pid" --concurrency "$concurrency" --setup-timeout 180 \
        >"$work/$workload-$kind.out" 2>"$work/$workload-$kind.err" || true
    grep -v '^\s' "$work/$workload-$kind.out" | tail -1 >"$out" || true
    sed 's/^/    /' "$work/$workload-$kind.out" | grep -v '^    {' >&2 || true
    if ! jq -e . "$out" >/dev/null 2>&1; then
        log "$workload against $kind gave no JSON line: $(tail -3 "$work/$workload-$kind.err")"
        rm -f "$out"
    fi
    stop_server
}

for workload in $WORKLOADS; do
    for kind in $TARGETS; do
        log "load average $(cut -d' ' -f1-3 /proc/loadavg)"
        run_one "$workload" "$kind"
    done
done

# ---- the table --------------------------------------------------------------------------

# value WORKLOAD KIND JQ-PATH: the figure, or "-".
value() {
    local f="$work/$1-$2.json"
    [ -f "$f" ] || { echo "-"; return; }
    jq -r "($3) // \"-\"" "$f" 2>/dev/null || echo "-"
}

ratio() {
    local a="$1" b="$2"
    if [[ "$a" =~ ^[0-9.]+$ && "$b" =~ ^[0-9.]+$ ]] && awk "BEGIN{exit !($b > 0)}"; then
        awk "BEGIN{printf \"%.2f\", $a / $b}"
    else
        echo "-"
    fi
}

peers=()
for kind in $TARGETS; do
    [ "$kind" = chimed ] || peers+=("$kind")
done

echo
echo "chimed vs peers on 127.0.0.1 (fanout: 1 server/channel x $SUBSCRIBERS subscribers, $PUBLISHERS publishers x $MESSAGES posts of $SIZE bytes, window $WINDOW; paced: the same at $RATE posts/s; connect: $CONNECTIONS connections, IRC in channels of $IRC_CHANNEL_MEMBERS; connects in flight: ${CONCURRENCY:-256, ngircd 8}; $(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg))"
header="$(printf '%-34s %12s' metric chimed)"
for p in "${peers[@]}"; do header+="$(printf ' %12s' "$p")"; done
for p in "${peers[@]}"; do header+="$(printf ' %16s' "chimed/$p")"; done
echo "$header"

row() {
    local label="$1" workload="$2" path="$3" c line
    c="$(value "$workload" chimed "$path")"
    line="$(printf '%-34s %12s' "$label" "$c")"
    for p in "${peers[@]}"; do line+="$(printf ' %12s' "$(value "$workload" "$p" "$path")")"; done
    for p in "${peers[@]}"; do line+="$(printf ' %16s' "$(ratio "$c" "$(value "$workload" "$p" "$path")")")"; done
    echo "$line"
}

row "fanout deliveries/s" fanout '.deliveries_per_s'
row "fanout acked posts/s" fanout '.acked_per_s'
row "fanout latency p50 (us)" fanout '.latency_us.p50'
row "fanout latency p99 (us)" fanout '.latency_us.p99'
row "fanout latency p99.9 (us)" fanout '.latency_us.p999'
row "fanout latency max (us)" fanout '.latency_us.max'
row "fanout lost" fanout '.lost'
row "fanout duplicated" fanout '.duplicated'
row "fanout reordered" fanout '.reordered'
row "fanout server CPU (s)" fanout '.server_cpu_s'
row "fanout server RSS after (KiB)" fanout '.rss_after_kb'
row "paced deliveries/s" paced '.deliveries_per_s'
row "paced latency p50 (us)" paced '.latency_us.p50'
row "paced latency p99 (us)" paced '.latency_us.p99'
row "paced latency p99.9 (us)" paced '.latency_us.p999'
row "paced latency max (us)" paced '.latency_us.max'
row "paced lost+dup+reordered" paced '.lost + .duplicated + .reordered'
row "paced server CPU (s)" paced '.server_cpu_s'
row "connect connected" connect '.connected'
row "connect ready in (s)" connect '.ready_s'
row "connect connections/s" connect '.connects_per_s'
row "connect RSS per connection (B)" connect '.rss_per_conn_bytes'
row "connect server RSS after (KiB)" connect '.rss_after_kb'
echo "(ratios are chimed/peer: above 1 means chimed is higher — better for throughput, worse for latency and memory)"
echo "(chimed commits every post to SQLite with synchronous=FULL before it is delivered; the peers persist nothing)"
echo
echo "JSON lines:"
for workload in $WORKLOADS; do
    for kind in $TARGETS; do
        [ -f "$work/$workload-$kind.json" ] && echo "$workload $kind $(cat "$work/$workload-$kind.json")"
    done
done
