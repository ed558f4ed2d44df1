#!/usr/bin/env bash
# Install sadad-terminal on a terminal: a venv under /opt with the project in
# it, the system user sadad, /etc/sadad-agent with an example config, the two
# units and the udev rules. Idempotent: run it again to update. Run as root.
#
#   systemd/install.sh [--destdir DIR] [--prefix DIR] [--python PY] [--no-user] [--no-venv]
#
#   --destdir DIR  stage into DIR (also: DESTDIR=DIR) for image builds and
#                  tests: no user is made, nothing is chowned or reloaded, and
#                  the venv is not built (its scripts would point into DIR:
#                  build it inside the image, e.g. run install.sh in a chroot)
#   --prefix DIR   where the venv goes (default /opt/sadad-terminal); the
#                  installed units are rewritten to match
#   --python PY    the interpreter for the venv (default python3, >= 3.11)
#   --no-user      do not create the user sadad
#   --no-venv      do not build the venv (units, rules and config only)
#
# Never overwritten: /etc/sadad-agent/agent.toml and an edited udev rules file
# (the new version is written beside it as 99-sadad-readers.rules.new).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
destdir="${DESTDIR:-}"
prefix=/opt/sadad-terminal
python=python3
make_user=1
make_venv=1

die() { echo "install.sh: $1" >&2; exit "${2:-1}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory" 2; destdir="$2"; shift 2 ;;
        --destdir=*) destdir="${1#*=}"; shift ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory" 2; prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter" 2; python="$2"; shift 2 ;;
        --python=*) python="${1#*=}"; shift ;;
        --no-user) make_user=0; shift ;;
        --no-venv) make_venv=0; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" 2 ;;
    esac
done

case "$prefix" in
    /*) prefix="${prefix%/}" ;;
    *) die "--prefix must be an absolute path, got $prefix" 2 ;;
esac
if [ -n "$destdir" ]; then
    mkdir -p "$destdir"
    destdir="$(cd "$destdir" && pwd)"
    make_user=0
    if [ "$make_venv" = 1 ]; then
        die "--destdir cannot build the venv (its scripts would point into $destdir); add --no-venv and build the venv inside the image" 2
    fi
elif [ "$(id -u)" != 0 ]; then
    die "run as root (or stage into a directory with --destdir DIR)"
fi

root="$destdir"
etc="$root/etc"
confdir="$etc/sadad-agent"

# ---- the user: a system user whose only extra group is dialout (the readers);
# the units add dialout / tty per process with SupplementaryGroups=.
if [ "$make_user" = 1 ]; then
    if ! getent group dialout >/dev/null; then groupadd --system dialout; fi
    if ! id sadad >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/sadad-agent --no-create-home \
            --shell /usr/sbin/nologin --groups dialout --comment "Sadad terminal agent" sadad
        echo "install.sh: created the system user sadad"
    elif ! id -nG sadad | tr ' ' '\n' | grep -qx dialout; then
        usermod --append --groups dialout sadad
    fi
fi

# ---- the venv, with the project (not editable) in it
install -d -m 0755 "$root$prefix"
if [ "$make_venv" = 1 ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is older than 3.11"
    "$python" -m venv "$prefix/venv"
    "$prefix/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$repo"
    echo "install.sh: installed $("$prefix/venv/bin/python" -m pip show sadad-terminal \
        | sed -n 's/^Version: //p') into $prefix/venv"
    # sadad-agent.service runs with PYTHONOPTIMIZE=2: its .opt-2.pyc files, for
    # the venv and the interpreter's standard library, must exist beforehand
    # (the service user cannot write them; compiling at each start costs ~1 s).
    stdlib=$("$prefix/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
    "$prefix/venv/bin/python" -OO -m compileall -qq -j0 \
        -x '/(test|tests|idlelib|lib2to3|tkinter|turtledemo|ensurepip)/' \
        "$stdlib" "$prefix/venv/lib" \
        || echo "install.sh: warning: some modules did not compile for -OO; the agent compiles them at each start" >&2
fi
install -m 0644 "$repo/README.md" "$root$prefix/README.md"
install -m 0644 "$repo/firmware-notes.md" "$root$prefix/firmware-notes.md"

# ---- configuration: root:sadad 0770 so that the setup screen (sadad-ui, user
# sadad) can replace agent.toml atomically (temp file + rename in this
# directory); the agent sees it read-only (ProtectSystem=strict). Keys stay
# 0600 root:root here and reach the agent through LoadCredential=.
install -d -m 0770 "$confdir"
if [ ! -e "$confdir/agent.toml" ]; then
    install -m 0640 "$here/agent.toml.example" "$confdir/agent.toml"
    echo "install.sh: wrote the example config $confdir/agent.toml"
fi
if [ -z "$destdir" ]; then
    chown root:sadad "$confdir" "$confdir/agent.toml"
    chmod 0770 "$confdir"
fi

# ---- units (ExecStart follows --prefix) and udev rules
install -d -m 0755 "$etc/systemd/system" "$etc/udev/rules.d"
for unit in sadad-agent.service sadad-ui.service; do
    sed "s#/opt/sadad-terminal/#$prefix/#g" "$here/$unit" >"$etc/systemd/system/$unit.tmp"
    chmod 0644 "$etc/systemd/system/$unit.tmp"
    mv -f "$etc/systemd/system/$unit.tmp" "$etc/systemd/system/$unit"
done

rules="$etc/udev/rules.d/99-sadad-readers.rules"
stamp="$root$prefix/99-sadad-readers.rules.installed"  # what we last installed
if [ ! -e "$rules" ] || cmp -s "$rules" "$here/99-sadad-readers.rules" \
    || { [ -e "$stamp" ] && cmp -s "$rules" "$stamp"; }; then
    install -m 0644 "$here/99-sadad-readers.rules" "$rules"
    rm -f "$rules.new"
else
    install -m 0644 "$here/99-sadad-readers.rules" "$rules.new"
    echo "install.sh: kept your edited $rules; the new version is $rules.new"
fi
install -m 0644 "$here/99-sadad-readers.rules" "$stamp"

# ---- tell the running system (not when staging into a directory)
if [ -z "$destdir" ]; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    if command -v udevadm >/dev/null 2>&1 && [ -d /run/udev ]; then
        udevadm control --reload
        udevadm trigger --subsystem-match=tty --action=add || true
    fi
    cat <<EOF
Installed. Next:
  1. put the terminal key at $confdir/terminal_private.pem (0600 root:root) and
     the gateway key at $confdir/gateway_public.pem, edit $confdir/agent.toml
  2. $prefix/venv/bin/sadad-agent config check --config $confdir/agent.toml
  3. systemctl enable --now sadad-agent sadad-ui
     (after an update: systemctl restart sadad-agent sadad-ui)
EOF
fi
