#!/usr/bin/env bash
# Blocks and seconds from RequestBuild to Reproducible, minus the build itself.
exec "$(dirname "$0")/run-release.sh" build_overhead "$@"
