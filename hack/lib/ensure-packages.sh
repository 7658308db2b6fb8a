#!/usr/bin/env bash
# Installs Debian packages for commands the tests need, when the commands are missing:
#   hack/lib/ensure-packages.sh lua5.1=lua5.1 buildah=buildah musl-gcc=musl-tools
# Each argument is <command>=<package>. Debian/Ubuntu (apt-get), as root or through sudo. Does nothing
# when every command is on PATH; fails naming the step when one cannot be installed.

ensure_packages() {
  local missing=() commands=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || { missing+=("${pair#*=}"); commands+=("${pair%%=*}"); }
  done
  ((${#missing[@]} == 0)) && return 0

  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || {
      printf '[ensure-packages] error: step install: %s missing, and not root and no sudo: install them (apt-get install %s)\n' \
        "${commands[*]}" "${missing[*]}" >&2
      return 1
    }
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || {
    printf '[ensure-packages] error: step install: %s missing and no apt-get here: install %s with the package manager\n' \
      "${commands[*]}" "${missing[*]}" >&2
    return 1
  }
  printf '[ensure-packages] installing %s\n' "${missing[*]}" >&2
  # A fresh machine has no package lists yet: update once if the first attempt finds nothing.
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq >&2 || {
      printf '[ensure-packages] error: step apt-get update failed\n' >&2
      return 1
    }
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || {
      printf '[ensure-packages] error: step apt-get install %s failed\n' "${missing[*]}" >&2
      return 1
    }
  fi
  local command
  for command in "${commands[@]}"; do
    command -v "$command" >/dev/null 2>&1 || {
      printf '[ensure-packages] error: step verify: %s is still not on PATH after installing it\n' "$command" >&2
      return 1
    }
  done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  ensure_packages "$@"
fi
