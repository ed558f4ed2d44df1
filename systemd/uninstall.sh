#!/usr/bin/env bash
# Remove what install.sh put in place: the units, the udev rules and the venv.
# Idempotent. Run as root.
#
#   systemd/uninstall.sh [--destdir DIR] [--prefix DIR] [--purge]
#
#   --destdir DIR  remove from a staged tree (also: DESTDIR=DIR); nothing is
#                  stopped, reloaded or deleted outside DIR
#   --prefix DIR   where the venv is (default /opt/sadad-terminal)
#   --purge        also delete /etc/sadad-agent (config, keys), the journal in
#                  /var/lib/sadad-agent and the users sadad and sadad-ui
#
# Without --purge the config and the journal stay: unfinished payments are
# resolved from the journal when the agent is installed again.
set -euo pipefail

destdir="${DESTDIR:-}"
prefix=/opt/sadad-terminal
purge=0

die() { echo "uninstall.sh: $1" >&2; exit "${2:-1}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory" 2; destdir="$2"; shift 2 ;;
        --destdir=*) destdir="${1#*=}"; shift ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory" 2; prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" 2 ;;
    esac
done
case "$prefix" in
    /?*) prefix="${prefix%/}" ;;
    *) die "--prefix must be an absolute path other than /, got $prefix" 2 ;;
esac
if [ -n "$destdir" ]; then
    [ -d "$destdir" ] || exit 0  # nothing staged: nothing to remove
    destdir="$(cd "$destdir" && pwd)"
    [ "$destdir" != / ] || die "--destdir / is the live system: leave --destdir out" 2
elif [ "$(id -u)" != 0 ]; then
    die "run as root (or remove from a staged tree with --destdir DIR)"
fi
root="$destdir"
live=0  # a running systemd to stop the units and reload
if [ -z "$destdir" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    live=1
fi

if [ "$live" = 1 ]; then
    systemctl disable --now sadad-ui.service sadad-agent.service 2>/dev/null || true
fi
rm -f "$root/etc/systemd/system/sadad-agent.service" "$root/etc/systemd/system/sadad-ui.service"
rm -f "$root/etc/udev/rules.d/99-sadad-readers.rules" "$root/etc/udev/rules.d/99-sadad-readers.rules.new"
rm -rf "$root$prefix"  # prefix is absolute and never / (checked above)

if [ "$purge" = 1 ]; then
    rm -rf "$root/etc/sadad-agent" "$root/var/lib/sadad-agent"
    for user in sadad sadad-ui; do
        if [ -z "$destdir" ] && id "$user" >/dev/null 2>&1; then
            userdel "$user" || echo "uninstall.sh: could not remove the user $user" >&2
        fi
    done
fi

if [ "$live" = 1 ]; then
    systemctl daemon-reload
fi
if [ -z "$destdir" ] && command -v udevadm >/dev/null 2>&1 && [ -d /run/udev ]; then
    udevadm control --reload
fi
exit 0
