#!/usr/bin/env bash
# Installs the Lua interpreters that tests/examples_gitops.rs runs the Argo CD health check with:
# lua5.1 (the language of Argo CD's gopher-lua) and lua5.4. Does nothing when both are on PATH.
# Debian/Ubuntu (apt-get), as root or through sudo. Run it, or source it and call ensure_lua.
# Fails naming the step when an interpreter cannot be installed.

ensure_lua() {
  local missing=() pkg
  for pkg in lua5.1 lua5.4; do
    command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0

  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || {
      printf '[ensure-lua] error: step install: %s missing, and not root and no sudo: install them (apt-get install %s)\n' \
        "${missing[*]}" "${missing[*]}" >&2
      return 1
    }
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || {
    printf '[ensure-lua] error: step install: %s missing and no apt-get here: install them with the package manager\n' \
      "${missing[*]}" >&2
    return 1
  }
  printf '[ensure-lua] installing %s\n' "${missing[*]}" >&2
  # A fresh machine has no package lists yet: update once if the first attempt finds nothing.
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq >&2 || {
      printf '[ensure-lua] error: step apt-get update failed\n' >&2
      return 1
    }
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || {
      printf '[ensure-lua] error: step apt-get install %s failed\n' "${missing[*]}" >&2
      return 1
    }
  fi
  for pkg in "${missing[@]}"; do
    command -v "$pkg" >/dev/null 2>&1 || {
      printf '[ensure-lua] error: step verify: %s is still not on PATH after installing it\n' "$pkg" >&2
      return 1
    }
  done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  ensure_lua
fi
