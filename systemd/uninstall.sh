#!/usr/bin/env bash
# Remove what install.sh put in place. Keeps /etc/sadad-agent and the journal
# in /var/lib/sadad-agent (unfinished payments are resolved from it) unless
# --purge is given. Run as root.
set -euo pipefail
purge=0
[ "${1:-}" = "--purge" ] && purge=1
if [ "$(id -u)" != 0 ]; then echo "uninstall.sh: run as root" >&2; exit 1; fi
if command -v systemctl >/dev/null; then
    systemctl disable --now sadad-ui sadad-agent 2>/dev/null || true
fi
rm -f /etc/systemd/system/sadad-agent.service /etc/systemd/system/sadad-ui.service
rm -f /etc/udev/rules.d/99-sadad-readers.rules
rm -rf /opt/sadad-terminal
if [ "$purge" = 1 ]; then
    rm -rf /etc/sadad-agent /var/lib/sadad-agent
    userdel sadad 2>/dev/null || true
fi
command -v systemctl >/dev/null && systemctl daemon-reload || true
command -v udevadm >/dev/null && udevadm control --reload || true
