#!/usr/bin/env bash
# Run the tests of workers, storage and faults N times in a row, keeping every run's logs
# (pytest's output and each test's tmp_path, worker logs included) for the runs that fail.
# Not part of the suite: a flaky test of these is a defect, and this is how one is caught.
#
# Usage: tests/repeat_fault_tests.sh [N=20] [LOG_DIR=/tmp/spnas-repeat] [-- PYTEST_ARGS...]
#   e.g. tests/repeat_fault_tests.sh 20 /tmp/rep -- -k postgres_restart
# Prints one line per run and, at the end, "N passed, N failed" (runs, not tests); exits 1
# when any run failed. The logs of passing runs are removed to save disk.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-20}
log_dir=${2:-/tmp/spnas-repeat}
shift $(( $# >= 2 ? 2 : $# ))
[[ "${1:-}" == "--" ]] && shift
PY=${PY:-.venv/bin/python}
TESTS=(
    tests/search/test_search_workers.py
    tests/search/test_search_waiting.py
    tests/search/test_search_preemption.py
    tests/search/test_search_liveness.py
    tests/search/test_search_gc.py
    tests/search/test_search_disk_full.py
    tests/search/test_search_data_parallel.py
    tests/test_storage.py
    tests/test_storage_proxy.py
)

mkdir -p "$log_dir"
passed=0
failed=0
for ((i = 1; i <= runs; i++)); do
    run_dir="$log_dir/run-$i"
    rm -rf "$run_dir"
    mkdir -p "$run_dir"
    start=$SECONDS
    CI=true OMP_WAIT_POLICY=PASSIVE "$PY" -m pytest "${TESTS[@]}" -q -p no:cacheprovider \
        --basetemp="$run_dir/tmp" "$@" >"$run_dir/pytest.log" 2>&1
    rc=$?
    summary=$(tail -n 1 "$run_dir/pytest.log")
    if [[ $rc -eq 0 ]]; then
        passed=$((passed + 1))
        rm -rf "$run_dir"
        echo "run $i/$runs: ok in $((SECONDS - start)) s ($summary)"
    else
        failed=$((failed + 1))
        echo "run $i/$runs: FAILED in $((SECONDS - start)) s ($summary); logs in $run_dir"
    fi
done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
