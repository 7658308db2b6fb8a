#!/usr/bin/env bash
# Copies the generated CRDs and admission policies (crds/ at the repository root) into the chart.
# Helm can only read files inside the chart directory, so the chart carries a copy in files/crds/;
# tests/chart.rs fails when the copy differs from crds/. Run this after `cargo run --bin crdgen -- crds`.
set -euo pipefail

CHART=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$CHART/../../crds
TARGET=$CHART/files/crds

[[ -d $SOURCE ]] || { echo "sync-crds: no $SOURCE directory" >&2; exit 1; }
shopt -s nullglob
sources=("$SOURCE"/*.yaml)
((${#sources[@]} > 0)) || { echo "sync-crds: $SOURCE holds no .yaml files" >&2; exit 1; }

mkdir -p "$TARGET"
# Files removed from crds/ must disappear from the chart too.
rm -f "$TARGET"/*.yaml
cp "${sources[@]}" "$TARGET"/
echo "sync-crds: copied ${#sources[@]} files into ${TARGET#"$CHART"/}" >&2
