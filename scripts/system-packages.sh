#!/usr/bin/env bash
# The Debian packages Maestro uses beside Python, for `make demo` and `make test` (`make debs`).
# Usage: scripts/system-packages.sh PACKAGE...   (bubblewrap, chromium, postgresql)
# Installs the missing ones where this machine allows it (root, or passwordless sudo, and
# apt-get); elsewhere it prints the exact command to run, says what works without them, and goes
# on (exit 0): nothing here stops the demo or the tests.
set -u

# PACKAGE -> the command that shows it is there, and what is missing without it
have() {
  case "$1" in
    bubblewrap) command -v bwrap >/dev/null 2>&1 ;;
    chromium) command -v chromium >/dev/null 2>&1 || [ -x "${MAESTRO_CHROMIUM:-/nonexistent}" ] ;;
    # Debian keeps pg_ctl in /usr/lib/postgresql/VERSION/bin
    postgresql) command -v pg_ctl >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null ;;
    *) echo "system-packages: unknown package $1" >&2; return 0 ;;
  esac
}
without() {
  case "$1" in
    bubblewrap) echo "the autograder grades in its weaker fallback sandbox (it says so loudly), and the bubblewrap tests skip" ;;
    chromium) echo "the browser tests (JupyterLab widgets, leaderboard page) skip" ;;
    postgresql) echo "the PostgreSQL tests skip (SQLite is used everywhere else)" ;;
  esac
}

missing=()
for pkg in "$@"; do
  have "$pkg" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="-"; fi
fi
explain() {
  echo "maestro: $1; run this once, then make again:" >&2
  echo "    sudo apt-get install -y ${missing[*]}" >&2
  for pkg in "${missing[@]}"; do echo "  without $pkg: $(without "$pkg")" >&2; done
}
if ! command -v apt-get >/dev/null 2>&1; then
  echo "maestro: no apt-get here; install with your system's package manager: ${missing[*]}" >&2
  for pkg in "${missing[@]}"; do echo "  without $pkg: $(without "$pkg")" >&2; done
  exit 0
fi
if [ "$sudo" = "-" ]; then
  explain "missing Debian packages (${missing[*]}), and installing them needs root or passwordless sudo"
  exit 0
fi
echo "maestro: installing Debian packages: ${missing[*]}"
if ! { $sudo apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  explain "apt-get could not install ${missing[*]} (output above)"
fi
exit 0
