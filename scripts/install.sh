#!/usr/bin/env bash
# Installs chimed as a systemd service.
#
#   scripts/install.sh [--prefix DIR] [--destdir DIR] [--no-build] [--yes]
#
# - builds the release binary (`cargo build --release --bin chimed`; --no-build uses the one in
#   target/release) and installs it to PREFIX/bin (PREFIX: /usr/local);
# - creates the `chimed` system user and group if missing;
# - installs scripts/chimed.service to /etc/systemd/system/chimed.service (ExecStart pointing at
#   PREFIX/bin/chimed);
# - installs chimed.example.toml as /etc/chimed/chimed.toml with state under /var/lib/chimed
#   (db = "sqlite:///var/lib/chimed/chimed.db", files_dir = "/var/lib/chimed/files"), unless a
#   config is already there (it is never overwritten; the new example goes next to it as
#   chimed.toml.example for comparison);
# - creates /var/lib/chimed (owned by chimed, 0750);
# - runs `systemctl daemon-reload` if systemd is running.
#
# DESTDIR (--destdir or the environment) stages everything under a directory instead, for
# packaging or testing without root: no user is created, nothing is chown'd, systemctl is not
# run, nothing outside DESTDIR is written (DESTDIR=/ is refused: that is a real install).
#
# A real install (no DESTDIR) changes the system, so it needs root and --yes; without --yes
# it only says what it would do. Re-running it upgrades the binary and the unit, keeps the
# config; restart the service afterwards (`systemctl restart chimed`).
#
#   DESTDIR=$(mktemp -d) scripts/install.sh        # try it
#   sudo scripts/install.sh --yes && sudo systemctl enable --now chimed
set -euo pipefail

prefix=/usr/local
destdir=${DESTDIR:-}
build=1
yes=0
while [ $# -gt 0 ]; do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --destdir=*)
        destdir=${1#*=}
        [ -n "$destdir" ] || { echo "install.sh: --destdir= needs a directory" >&2; exit 2; }
        shift ;;
    --no-build) build=0; shift ;;
    --yes) yes=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case $prefix in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac
# The prefix goes into sed expressions and the unit's ExecStart: plain path characters only.
case $prefix in *[!A-Za-z0-9/._-]*) echo "install.sh: --prefix may hold only A-Z a-z 0-9 / . _ -" >&2; exit 2 ;; esac
prefix=${prefix%/}
if [ -n "$destdir" ]; then
    # Absolute, normalised; `/` (or `//`, `/./`) would be the live system.
    destdir=$(realpath -m -- "$destdir")
    if [ "$destdir" = / ]; then
        echo "install.sh: DESTDIR=/ is the live system; drop DESTDIR and pass --yes for a real install" >&2
        exit 2
    fi
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=$prefix/bin
unit_dir=/etc/systemd/system
conf_dir=/etc/chimed
state_dir=/var/lib/chimed
user=chimed

say() { echo "install.sh: $*"; }

if [ -z "$destdir" ]; then
    if [ "$yes" != 1 ]; then
        cat >&2 <<EOF
install.sh: a real install changes this system:
  - installs $bin_dir/chimed (building it first unless --no-build)
  - creates the system user and group '$user' if missing
  - installs $unit_dir/chimed.service and runs 'systemctl daemon-reload'
  - installs $conf_dir/chimed.toml (an existing one is kept)
  - creates $state_dir (owned by $user, 0750)
Run it again with --yes to do that, or with DESTDIR=DIR to stage it under DIR.
EOF
        exit 2
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: installing to / needs root (or set DESTDIR/--destdir to stage it)" >&2
        exit 1
    fi
fi

# 1. The binary.
if [ "$build" = 1 ]; then
    say "building the release binary"
    (cd "$repo" && cargo build --release --bin chimed)
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
binary=$target_dir/release/chimed
[ -x "$binary" ] || { echo "install.sh: no binary at $binary (build it, or drop --no-build)" >&2; exit 1; }
install -D -m 0755 "$binary" "$destdir$bin_dir/chimed"
say "installed $destdir$bin_dir/chimed"

# 2. The user.
if [ -z "$destdir" ]; then
    if getent passwd "$user" >/dev/null; then
        say "user $user exists"
    else
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        if command -v useradd >/dev/null; then
            useradd --system --user-group --home-dir "$state_dir" --no-create-home --shell "$nologin" \
                --comment "chimed chat server" "$user"
        else
            addgroup -S "$user" && adduser -S -D -H -h "$state_dir" -s "$nologin" -G "$user" "$user"
        fi
        say "created system user $user"
    fi
else
    say "DESTDIR set: not creating user $user"
fi

# 3. The unit.
unit_tmp=$(mktemp)
trap 'rm -f "$unit_tmp" "$unit_tmp.conf"' EXIT
sed "s#^ExecStart=/usr/local/bin/chimed #ExecStart=$bin_dir/chimed #" "$repo/scripts/chimed.service" >"$unit_tmp"
grep -q "^ExecStart=$bin_dir/chimed " "$unit_tmp" || { echo "install.sh: could not set ExecStart" >&2; exit 1; }
install -D -m 0644 "$unit_tmp" "$destdir$unit_dir/chimed.service"
say "installed $destdir$unit_dir/chimed.service"

# 4. The config (never overwritten).
sed -e "s#^db = .*#db = \"sqlite://$state_dir/chimed.db\"#" \
    -e "s#^files_dir = .*#files_dir = \"$state_dir/files\"#" \
    "$repo/chimed.example.toml" >"$unit_tmp.conf"
if ! grep -q "^db = \"sqlite://$state_dir/chimed.db\"$" "$unit_tmp.conf" ||
    ! grep -q "^files_dir = \"$state_dir/files\"$" "$unit_tmp.conf"; then
    echo "install.sh: could not set db and files_dir in the config" >&2
    exit 1
fi
install -d -m 0755 "$destdir$conf_dir"
conf=$destdir$conf_dir/chimed.toml
if [ -e "$conf" ]; then
    install -m 0644 "$unit_tmp.conf" "$conf.example"
    say "kept the existing $conf (the new example is $conf.example)"
else
    # 0640 root:chimed: it may hold the TURN secret or a MySQL password.
    install -m 0640 "$unit_tmp.conf" "$conf"
    [ -n "$destdir" ] || chgrp "$user" "$conf"
    say "installed $conf"
fi

# 5. The state directory (systemd's StateDirectory= would create it too; this also makes
#    files_dir and lets `chimed` be run by hand as the user).
install -d -m 0750 "$destdir$state_dir" "$destdir$state_dir/files"
[ -n "$destdir" ] || chown "$user:$user" "$state_dir" "$state_dir/files"
say "state in $destdir$state_dir"

# 6. systemd.
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "systemd reloaded; start with: systemctl enable --now chimed (if it runs: systemctl restart chimed)"
else
    say "systemd not reloaded (DESTDIR set or systemd not running)"
fi
