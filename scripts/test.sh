#!/usr/bin/env bash
# The whole test suite (the README's test command): `cargo test` (unit, integration and doc tests, with
# respipe's default of one worker), then every integration test again with two workers
# (RESPIPE_WORKERS=2: the respipe binary reads it, and the tests' in-process proxies take it too), so every
# behaviour the suite proves holds when clients are spread over workers. A test about one shared upstream
# connection says `workers = 1` itself, as it says `pool_size = 1`.
# Needs redis-server, redis-cli, redis-benchmark, redis-sentinel and nutcracker (README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo test
printf '\n== the integration tests again with RESPIPE_WORKERS=2 ==\n'
RESPIPE_WORKERS=2 cargo test --test '*'
