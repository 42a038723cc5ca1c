#!/usr/bin/env bash
# Run the test suite N times while every core is kept busy by scripts/cpu_burner.py.
#   scripts/test_under_load.sh            one run of the whole suite
#   scripts/test_under_load.sh 5          five runs in a row
#   scripts/test_under_load.sh 3 tests/test_workflow.py -k retry    (pytest arguments)
# Prints pass/fail and the time of each run, and a summary; the exit status is 0 only
# when every run passed. Each run's output is kept in data/under-load/run-<i>.log.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-1}
shift || true
logs=data/under-load
mkdir -p "$logs"

./run test --co -q "$@" >/dev/null 2>&1 || true   # create the virtualenv outside the timings

# The burner stops by itself after a day at most, and with this script.
.venv/bin/python scripts/cpu_burner.py --seconds 86400 &
burner=$!
trap 'kill -TERM "$burner" 2>/dev/null; wait "$burner" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
sleep 1

failed=0
for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    ./run test -q -p no:cacheprovider "$@" >"$logs/run-$i.log" 2>&1
    status=$?
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$logs/run-$i.log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        echo "run $i: PASS in ${took}s  ${summary}"
    else
        failed=$((failed + 1))
        echo "run $i: FAIL (status $status) in ${took}s  ${summary}"
        grep -E '^(FAILED|ERROR) ' "$logs/run-$i.log" | sed 's/^/    /'
    fi
done
echo "under load: $((runs - failed)) of $runs runs passed (logs in $logs/)"
[ "$failed" -eq 0 ]
