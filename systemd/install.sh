#!/usr/bin/env bash
# Install sadad-terminal on a terminal: venv under /opt, the sadad user,
# directories, units, udev rules and an example config. Idempotent; run as root.
#
#   systemd/install.sh [--destdir DIR] [--no-user] [--no-venv]
#
# --destdir installs into DIR (for image builds and tests): no user is made,
# nothing is reloaded and no service is enabled.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
destdir=""
make_user=1
make_venv=1
while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) destdir="$2"; shift 2 ;;
        --no-user) make_user=0; shift ;;
        --no-venv) make_venv=0; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or use --destdir)" >&2
    exit 1
fi
[ -n "$destdir" ] && make_user=0

prefix="$destdir/opt/sadad-terminal"
etc="$destdir/etc"

if [ "$make_user" = 1 ] && ! id sadad >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/sadad-agent --shell /usr/sbin/nologin \
        --groups dialout,tty --user-group sadad
fi

install -d -m 0755 "$prefix"
if [ "$make_venv" = 1 ]; then
    python3 -m venv "$prefix/venv"
    "$prefix/venv/bin/pip" install --quiet --upgrade pip
    "$prefix/venv/bin/pip" install --quiet "$repo"
fi
install -m 0644 "$repo/README.md" "$prefix/README.md"

install -d -m 0750 "$etc/sadad-agent"
if [ ! -e "$etc/sadad-agent/agent.toml" ]; then
    install -m 0640 "$here/agent.toml.example" "$etc/sadad-agent/agent.toml"
fi
install -d -m 0755 "$etc/systemd/system" "$etc/udev/rules.d"
install -m 0644 "$here/sadad-agent.service" "$here/sadad-ui.service" "$etc/systemd/system/"
install -m 0644 "$here/99-sadad-readers.rules" "$etc/udev/rules.d/"
if [ -z "$destdir" ]; then
    chown -R root:sadad "$etc/sadad-agent" 2>/dev/null || true
    command -v systemctl >/dev/null && systemctl daemon-reload || true
    command -v udevadm >/dev/null && udevadm control --reload || true
    echo "Installed. Edit /etc/sadad-agent/agent.toml, then:"
    echo "  systemctl enable --now sadad-agent sadad-ui"
fi
