#!/usr/bin/env bash
# Installs the Lua interpreters that tests/examples_gitops.rs runs the Argo CD health check with:
# lua5.1 (the language of Argo CD's gopher-lua) and lua5.4. Does nothing when both are on PATH.
# Run it, or source it and call ensure_lua (see ensure-packages.sh).

# shellcheck source=hack/lib/ensure-packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/ensure-packages.sh"

ensure_lua() {
  ensure_packages lua5.1=lua5.1 lua5.4=lua5.4
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  ensure_lua
fi
