#!/usr/bin/env bash
# Runs every test: host unit tests, then the in-QEMU self-tests in each configuration that must
# pass, and the runs that must fail (no device, the harness's own failing test). Prints one line
# per step and a closing "N passed, N failed" over every test of every step.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

# Adds the counts of every "N passed, N failed" line (ours) and "test result:" line (cargo's).
count() {
    local p f
    p=$(grep -Eo '^[0-9]+ passed, [0-9]+ failed' "$1" | awk '{s+=$1} END {print s+0}')
    f=$(grep -Eo '^[0-9]+ passed, [0-9]+ failed' "$1" | awk '{s+=$3} END {print s+0}')
    p=$((p + $(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$1" | awk '{s+=$4} END {print s+0}')))
    f=$((f + $(grep -Eo '[0-9]+ failed;' "$1" | awk '{s+=$1} END {print s+0}')))
    echo "$p $f"
}

# step NAME EXPECT(pass|fail) ENV... -- COMMAND...
# A passing step must also print $MUST_PRINT (a line containing it), when that is set.
step() {
    local name=$1 expect=$2
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local log="$log_dir/$(echo "$name" | tr -c 'a-zA-Z0-9' '_').log"
    local start=$SECONDS
    env "${envs[@]}" "$@" >"$log" 2>&1
    local status=$?
    local secs=$((SECONDS - start))
    read -r p f < <(count "$log")
    # An interrupt on a vector without a handler is a bug in any run, passing or not.
    if grep -q "unexpected interrupt" "$log"; then
        failed=$((failed + 1))
        echo "FAILED $name: printed 'unexpected interrupt':"
        grep -m3 "unexpected interrupt" "$log" | sed 's/^/    | /'
    fi
    if [ "$expect" = prints ]; then
        if [ $status -eq 0 ] && grep -qx -- "$MUST_PRINT" "$log"; then
            passed=$((passed + 1))
            echo "ok     $name: printed '$MUST_PRINT' (${secs}s)"
            return
        fi
        failed=$((failed + 1))
        echo "FAILED $name: expected exit 0 and the line '$MUST_PRINT', got exit $status; its output:"
    elif [ "$expect" = pass ]; then
        local printed=yes
        if [ -n "${MUST_PRINT:-}" ] && ! grep -qF -- "$MUST_PRINT" "$log"; then
            printed=no
            echo "FAILED $name: no line '$MUST_PRINT'"
        fi
        if [ $status -eq 0 ] && [ "$f" -eq 0 ] && [ "$p" -gt 0 ] && [ $printed = yes ]; then
            passed=$((passed + p))
            echo "ok     $name: $p passed (${secs}s)"
            return
        fi
        passed=$((passed + p))
        failed=$((failed + (f > 0 ? f : 1)))
        echo "FAILED $name: exit $status, $p passed, $f failed (${secs}s); its output:"
    else
        if [ $status -ne 0 ] && grep -q -- "$EXPECT_LINE" "$log"; then
            passed=$((passed + 1))
            echo "ok     $name: failed as it must (${secs}s)"
            return
        fi
        failed=$((failed + 1))
        echo "FAILED $name: expected a failure mentioning '$EXPECT_LINE', got exit $status; its output:"
    fi
    sed 's/^/    | /' "$log" | tail -60
}

step "host unit tests" pass -- cargo hosttest
MUST_PRINT="layering: no upward references"
step "layers only look down" prints -- scripts/check-layers.sh
MUST_PRINT=
step "report tool: cargo results run -- bench data dur=50, figures hold the run's numbers" pass -- scripts/check-report.sh
MUST_PRINT="cpus online: 2"
step "self-tests, 2 CPUs, 1 device" pass VCRYPT_SMP=2 VCRYPT_DEVICES=1 -- cargo run --quiet
MUST_PRINT="cpus online: 1"
step "self-tests, 1 CPU" pass VCRYPT_SMP=1 -- cargo run --quiet
MUST_PRINT="cpus online: 4"
step "self-tests, 4 CPUs" pass VCRYPT_SMP=4 -- cargo run --quiet
MUST_PRINT="cpus online: 8"
step "self-tests, 8 CPUs" pass VCRYPT_SMP=8 -- cargo run --quiet
MUST_PRINT=
step "self-tests, 2 devices" pass VCRYPT_DEVICES=2 -- cargo run --quiet
MUST_PRINT="cpus online: 4"
step "self-tests, 4 CPUs, 4 devices (per-CPU queues)" pass VCRYPT_SMP=4 VCRYPT_DEVICES=4 -- cargo run --quiet
MUST_PRINT=
step "service suites, 1 CPU, 2 devices" pass VCRYPT_SMP=1 VCRYPT_DEVICES=2 -- cargo run --quiet -- test service:: crypto::compl
step "driver suites, ctrl=poll" pass -- cargo run --quiet -- test crypto:: ctrl=poll
step "driver suites, kick=locked" pass -- cargo run --quiet -- test crypto:: kick=locked
MUST_PRINT="no usable MSI-X; using INTx"
step "driver suites, no MSI-X (INTx through the I/O APIC)" pass VCRYPT_VECTORS=0 -- cargo run --quiet -- test crypto::
step "driver suites, 2 devices sharing one INTx line" pass VCRYPT_DEVICES=2 VCRYPT_VECTORS=0 -- cargo run --quiet -- test crypto:: irq::
step "driver suites, 1 MSI-X vector (falls back to INTx)" pass VCRYPT_VECTORS=1 -- cargo run --quiet -- test crypto:: irq::
MUST_PRINT="interrupts SharedVector"
step "driver suites, 2 MSI-X vectors (configuration + one shared by the queues)" pass VCRYPT_VECTORS=2 -- cargo run --quiet -- test crypto:: irq:: log=info
MUST_PRINT=
MUST_PRINT="samples      %  function"
step "profiler: samples resolved to functions" prints -- scripts/profile.sh test crypto::known
MUST_PRINT=7649abac8119b246cee98e9b12e9197d
step "kcapi one-shot: SP 800-38A CBC block" prints -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' \
    -k 2b7e151628aed2a6abf7158809cf4f3c -i 000102030405060708090a0b0c0d0e0f -p 6bc1bee22e409f96e93d7e117393172a
MUST_PRINT=8b19050f66582cb7f7e4b6c873819b7108afa0eaa7de29bac7d903576b674c32
step "kcapi -d 2: the seed's chained CBC stream (first block = libkcapi's answer)" prints -- cargo run --quiet -- kcapi -d 2 -e -c 'cbc(aes)' \
    -k 8d7dd9b0170ce0b5f2f8e1aa768e01e91da8bfc67fd486d081b28254c99eb423 -i 7fbc02ebf5b93322329df9bfccb635af -p 48981da18e4bb9ef7e2e3162d16b1910
step "kcapi -s 16 chain=serial: the same stream in 16-byte chunks" prints -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' chain=serial -s 16 \
    -k 8d7dd9b0170ce0b5f2f8e1aa768e01e91da8bfc67fd486d081b28254c99eb423 -i 7fbc02ebf5b93322329df9bfccb635af -p 48981da18e4bb9ef7e2e3162d16b191048981da18e4bb9ef7e2e3162d16b1910
MUST_PRINT=
EXPECT_LINE="error: kcapi: -k: \"2b7g\" is not hexadecimal"
step "kcapi with a bad argument" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' -k 2b7g -p 00
EXPECT_LINE="no virtio-crypto device found"
step "no device: clear error" fail VCRYPT_DEVICES=0 -- cargo run --quiet
EXPECT_LINE="test harness_must_fail ... FAILED"
step "a failing test fails the run" fail -- cargo run --quiet -- test harness_must_fail
EXPECT_LINE="test harness_fault_must_fail ... FAILED: exception 14 (page fault)"
step "a fault inside a test fails the run and names it" fail -- cargo run --quiet -- test harness_fault_must_fail

EXPECT_LINE="stack overflow in task 'overflow' (#"
step "a task stack overflow is reported" fail -- cargo run --quiet -- test sched_stack_overflow_must_fail

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
