#!/usr/bin/env bash
# Checks the report tool end to end: `cargo results run -- bench data dur=50` boots the kernel,
# must print its result folder as its last line, and that folder's index.html must hold a figure
# per bench with every ops/s value of the run's rows (read back from the figures' number tables).
# Prints "N passed, N failed" over its checks.
set -uo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0
failed=0
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "check-report: FAILED: $what"
    fi
}

printed=$(cargo results run --out "$out/run" -- bench data dur=50)
status=$?
echo "$printed"
check "cargo results run exits 0 (got $status)" test "$status" -eq 0
check "the folder's path is printed last" test "$(echo "$printed" | tail -1)" = "$out/run"
for file in index.html summary.md rows.jsonl serial.log meta.json; do
    check "$file written" test -s "$out/run/$file"
done
html=$out/run/index.html
check "a section and figures for bench data" grep -q '<h2 id="data">bench data</h2>' "$html"
figures=$(grep -o '<figure ' "$html" | wc -l)
svgs=$(grep -o '<svg ' "$html" | wc -l)
check "every figure drawn ($figures figures, $svgs SVGs)" test "$figures" -ge 6 -a "$figures" -eq "$svgs"
# Every ops/s of the run appears in the figures' numbers as a (field, value) table cell pair.
values=$(grep -o '"ops_per_s":[0-9]*' "$out/run/rows.jsonl" | cut -d: -f2)
count=$(echo "$values" | grep -c .)
# 7 sizes, 9 depths at 16 B and at 4 KiB, 3 zero-copy sizes.
check "28 data rows (got $count)" test "$count" -eq 28
for ops in $values; do
    check "ops_per_s $ops in index.html" grep -q "<td>ops_per_s</td><td>$ops</td>" "$html"
done
check "QEMU's vCPU threads were sampled" grep -q '"host_cpu_pct":{[^}]*CPU 0/TCG' "$out/run/rows.jsonl"
check "summary names the QEMU it ran on" grep -q '^- qemu: `QEMU emulator version' "$out/run/summary.md"

# Two runs whose measured texts differ (limited_by) still match row for row: rows match on what
# identifies them, and the texts are compared.
mkdir -p "$out/other"
sed 's/"limited_by":"[^"]*"/"limited_by":"guest CPU (changed)"/' "$out/run/rows.jsonl" >"$out/other/rows.jsonl"
message=$(cargo results compare "$out/run" "$out/other" --out "$out/cmp-texts" 2>&1)
status=$?
check "compare of two runs with other limited_by texts exits 0 (got $status)" test "$status" -eq 0
check "every row matched (no 'only in A/B')" test "$(grep -c 'only in' <<<"$message")" -eq 0
check "the changed texts are listed as differing" grep -q '| limited_by | .* | guest CPU (changed) | differs |' <<<"$message"

# Bad input: a folder without results gives a clear message and a failure.
mkdir -p "$out/empty"
message=$(cargo results compare "$out/run" "$out/empty" --out "$out/cmp" 2>&1)
check "compare with an empty folder fails clearly" grep -q "holds no results" <<<"$message"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
