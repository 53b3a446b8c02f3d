#!/bin/sh
# Runs each Criterion test binary given on the command line and closes with one totals line,
# "N passed, N failed", that CI reads. Exits non-zero when any test failed or crashed, or when
# a binary could not run at all.
passed=0; failed=0; status=0
# Sanitizer builds: report everything of ours, nothing of Criterion's own runner.
LSAN_OPTIONS="suppressions=$(dirname "$0")/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export LSAN_OPTIONS
for t in "$@"; do
    echo "== $t"
    out=$(mktemp)
    "$t" --jobs 2 2>&1 | tee "$out"
    rc=$?
    # Criterion's closing line: [====] Synthesis: Tested: 9 | Passing: 9 | Failing: 0 | Crashing: 0
    line=$(grep 'Synthesis:' "$out" | tail -n 1 | sed 's/\x1b\[[0-9;]*m//g')
    rm -f "$out"
    if [ -z "$line" ]; then
        echo "run.sh: $t printed no Criterion summary" >&2
        failed=$((failed + 1)); status=1; continue
    fi
    p=$(echo "$line" | sed -n 's/.*Passing: *\([0-9]*\).*/\1/p')
    f=$(echo "$line" | sed -n 's/.*Failing: *\([0-9]*\).*/\1/p')
    c=$(echo "$line" | sed -n 's/.*Crashing: *\([0-9]*\).*/\1/p')
    passed=$((passed + p)); failed=$((failed + f + c))
    [ "$rc" -ne 0 ] && status=1
done
[ "$failed" -ne 0 ] && status=1
echo "$passed passed, $failed failed"
exit $status
