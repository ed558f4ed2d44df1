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

# ---- the users: sadad runs the agent (extra group dialout: the readers);
# sadad-ui runs the checkout and is in no group of the agent's, so nothing
# it can write is read by the agent. The agent joins the group sadad-ui per
# process (SupplementaryGroups=) to give its socket to it.
if [ "$make_user" = 1 ]; then
    if ! getent group dialout >/dev/null; then groupadd --system dialout; fi
    if ! id sadad >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/sadad-agent --no-create-home \
            --shell /usr/sbin/nologin --groups dialout --comment "Sadad terminal agent" sadad
        echo "install.sh: created the system user sadad"
    elif ! id -nG sadad | tr ' ' '\n' | grep -qx dialout; then
        usermod --append --groups dialout sadad
    fi
    if ! id sadad-ui >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "Sadad checkout screen" sadad-ui
        echo "install.sh: created the system user sadad-ui"
    fi
fi

# Owner and mode of a path, never through a symbolic link: the path is opened
# O_NOFOLLOW and changed through its descriptor (chown/chmod on a name would
# follow a link planted there to, say, /etc/shadow). "-" leaves the owner.
# In a --destdir stage owners are never set (no users there).
own() {  # PATH USER:GROUP MODE
    "$python" - "$1" "$2" "$3" "$destdir" <<'PY' || die "cannot set the owner and mode of $1"
import grp, os, pwd, stat, sys
path, owner, mode, destdir = sys.argv[1:]
try:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
except OSError as exc:
    sys.exit(f"install.sh: refusing {path}: {exc.strerror} (a symbolic link?)")
try:
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        sys.exit(f"install.sh: refusing {path}: not a regular file or directory")
    if owner != "-" and not destdir:
        user, group = owner.split(":")
        os.fchown(fd, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
    os.fchmod(fd, int(mode, 8))
finally:
    os.close(fd)
PY
}

# A directory we create or keep: never one that is a symbolic link.
real_dir() {  # PATH MODE
    if [ -L "$1" ]; then die "refusing $1: it is a symbolic link (move it away, then run again)"; fi
    install -d -m "$2" "$1"
}

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

# ---- configuration: /etc/sadad-agent is root:sadad 0770: the agent (group
# sadad) writes agent.toml when the setup screen saves (the checkout asks it;
# its user sadad-ui cannot even read here). The keys the agent trusts live in
# keys/, root:sadad 0750, which the agent cannot change: the gateway's public
# key and the technician PIN's hash root:sadad 0640, the terminal's private
# key root:root 0600, reaching the agent through LoadCredential= (or 0640
# root:sadad if agent.toml names it directly). The agent refuses keys that
# anyone but root could replace (agent.config.untrusted).
real_dir "$confdir" 0770
real_dir "$confdir/keys" 0750
if [ -L "$confdir/agent.toml" ]; then
    die "refusing $confdir/agent.toml: it is a symbolic link (move it away, then run again)"
fi
if [ ! -e "$confdir/agent.toml" ]; then
    tmp=$(mktemp "$confdir/.agent.toml.XXXXXX")
    cat "$here/agent.toml.example" >"$tmp"
    chmod 0640 "$tmp"
    mv -f "$tmp" "$confdir/agent.toml"
    echo "install.sh: wrote the example config $confdir/agent.toml"
fi
own "$confdir" root:sadad 0770
own "$confdir/keys" root:sadad 0750
own "$confdir/agent.toml" - 0640
for key in gateway_public.pem technician.pin; do
    if [ -e "$confdir/keys/$key" ] || [ -L "$confdir/keys/$key" ]; then
        own "$confdir/keys/$key" root:sadad 0640
    fi
done
if [ -e "$confdir/keys/terminal_private.pem" ] || [ -L "$confdir/keys/terminal_private.pem" ]; then
    own "$confdir/keys/terminal_private.pem" root:root 0600
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
  1. put the terminal key at $confdir/keys/terminal_private.pem and the
     gateway key at $confdir/keys/gateway_public.pem, set the technician PIN
     ($prefix/venv/bin/sadad-agent pin set), edit $confdir/agent.toml, then
     run this again: it gives every key its owner and mode
  2. $prefix/venv/bin/sadad-agent config check --config $confdir/agent.toml
  3. systemctl enable --now sadad-agent sadad-ui
     (after an update: systemctl restart sadad-agent sadad-ui)
EOF
fi
