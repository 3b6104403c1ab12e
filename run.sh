#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./run.sh cluster   set up, then start a local cluster (master + 3 daemons) in ./cluster
#   ./run.sh test      set up, then run lint, type checks and the whole test suite
#   ./run.sh setup     only set up (.venv with the package and its test tools)
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
venv="$here/.venv"

need_debian() {
    # Debian packages the project or its tests use. Installed only when missing and
    # when we may (root); otherwise we say what is missing.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        return 1
    fi
}

setup() {
    local py=${PYTHON:-python3.11}
    command -v "$py" >/dev/null || py=python3
    if command -v dpkg-query >/dev/null; then
        need_debian python3-venv
    fi
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv"
    fi
    # Reinstall only when the dependency list changed.
    local stamp="$venv/.store-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q -e ".[test]"
        touch "$stamp"
    fi
}

setup_test_tools() {
    command -v dpkg-query >/dev/null || return 0
    # iproute2: network namespaces for multi-host tests.
    need_debian $(grep -v '^#' scripts/debian-test-packages.txt)
}

case "${1:-}" in
    setup)
        setup
        ;;
    cluster)
        setup
        shift
        "$venv/bin/store" cluster up --dir "$here/cluster" "$@"
        ;;
    test)
        setup
        setup_test_tools
        shift
        "$venv/bin/ruff" check store tests benchmarks
        "$venv/bin/ruff" format --check store tests benchmarks
        "$venv/bin/mypy"
        # Two workers, each taking whole files (a module's cluster is set up once); most
        # tests wait on daemons rather than compute. The slowest are listed, to keep CI short.
        "$venv/bin/pytest" -n "${STORE_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
        ;;
    *)
        echo "usage: $0 cluster|test|setup [args...]" >&2
        exit 2
        ;;
esac
