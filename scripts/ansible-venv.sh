#!/usr/bin/env bash
# Makes (once) a Python venv with ansible-core and ansible-lint from PyPI,
# pinned, under a cache folder, and prints the venv's bin folder. Running it
# again with the same pins does nothing and prints the same folder, so the
# Ansible test (tests/ansible.rs) and operators can call it every time.
#
#   bash scripts/ansible-venv.sh          # -> ~/.cache/spoolhouse/ansible-2.19.14-26.10.1/bin
#   SPOOLHOUSE_CACHE_DIR=/some/dir bash scripts/ansible-venv.sh
#
# Exit status 3: no usable python3 with the venv module (callers skip then).
set -euo pipefail

# Pinned so lint results and module behaviour do not move under the project;
# raise both together and re-run the Ansible test.
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1

cache="${SPOOLHOUSE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/spoolhouse}"
venv="$cache/ansible-$ANSIBLE_CORE_VERSION-$ANSIBLE_LINT_VERSION"
stamp="$venv/.installed"

if [ -f "$stamp" ] && [ -x "$venv/bin/ansible-playbook" ] && [ -x "$venv/bin/ansible-lint" ]; then
  echo "$venv/bin"
  exit 0
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "ansible-venv: no python3 with the venv and ensurepip modules (Debian: apt-get install -y python3-venv)" >&2
  exit 3
fi

mkdir -p "$cache"
# A half-made venv from an interrupted run is replaced, not patched.
rm -rf "$venv"
echo "ansible-venv: installing ansible-core $ANSIBLE_CORE_VERSION and ansible-lint $ANSIBLE_LINT_VERSION into $venv" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION" >&2
touch "$stamp"
echo "$venv/bin"
