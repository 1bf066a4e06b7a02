#!/usr/bin/env bash
# Editable (re)build of mcgr for development, serialised with a lock so that parallel builds never
# trample each other. Incremental: only changed sources recompile (build dir build/dev).
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/mcgr-dev-build.lock python -m pip install --no-build-isolation --no-deps -q \
  -Cbuild-dir=build/dev -Ceditable.rebuild=false -e . "$@"
