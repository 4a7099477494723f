#!/usr/bin/env bash
# Runs every test: the tree's hygiene (fmt, clippy, rustdoc), host unit tests, then the in-QEMU
# self-tests in each configuration that must pass, the front door's answers to bad and unusual
# input, and the runs that must fail (no device, the harness's own failing test). Prints one line
# per step and a closing "N passed, N failed, N skipped" over every test of every step (skipped:
# self-tests that do not apply to a configuration, e.g. MSI-X ones without MSI-X).
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
skipped=0
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

# Adds the counts of every "N passed, N failed[, N skipped]" line (ours) and "test result:" line
# (cargo's). Prints "passed failed skipped".
count() {
    local p f k
    p=$(grep -Eo '^[0-9]+ passed, [0-9]+ failed' "$1" | awk '{s+=$1} END {print s+0}')
    f=$(grep -Eo '^[0-9]+ passed, [0-9]+ failed' "$1" | awk '{s+=$3} END {print s+0}')
    k=$(grep -Eo '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$1" | awk '{s+=$5} END {print s+0}')
    p=$((p + $(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$1" | awk '{s+=$4} END {print s+0}')))
    f=$((f + $(grep -Eo '[0-9]+ failed;' "$1" | awk '{s+=$1} END {print s+0}')))
    echo "$p $f $k"
}

# step NAME EXPECT(pass|fail|prints|clean) ENV... -- COMMAND...
# pass: exit 0, tests ran, none failed, and none skipped unless $MAY_SKIP is set; it must also
# print $MUST_PRINT (a line containing it), when that is set, and no line matching the extended
# regular expression $MUST_NOT_PRINT. prints: exit 0 and the whole line
# $MUST_PRINT. clean: exit 0 (a hygiene check; counts as one). fail: non-zero exit and a line
# containing $EXPECT_LINE.
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
    read -r p f k < <(count "$log")
    # An interrupt on a vector without a handler is a bug in any run, passing or not.
    if grep -q "unexpected interrupt" "$log"; then
        failed=$((failed + 1))
        echo "FAILED $name: printed 'unexpected interrupt':"
        grep -m3 "unexpected interrupt" "$log" | sed 's/^/    | /'
    fi
    read -r p f k < <(count "$log")
    if [ "$expect" = clean ]; then
        if [ $status -eq 0 ]; then
            passed=$((passed + 1))
            echo "ok     $name (${secs}s)"
            return
        fi
        failed=$((failed + 1))
        echo "FAILED $name: exit $status; its output:"
    elif [ "$expect" = prints ]; then
        if [ $status -eq 0 ] && grep -qx -- "$MUST_PRINT" "$log"; then
            passed=$((passed + 1))
            local shown=$MUST_PRINT
            [ ${#shown} -le 80 ] || shown="${shown:0:64}... (${#MUST_PRINT} characters)"
            echo "ok     $name: printed '$shown' (${secs}s)"
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
        if [ -n "${MUST_NOT_PRINT:-}" ] && grep -qE -- "$MUST_NOT_PRINT" "$log"; then
            printed=no
            echo "FAILED $name: printed a line matching '$MUST_NOT_PRINT':"
            grep -E -- "$MUST_NOT_PRINT" "$log" | head -3 | sed 's/^/    ! /'
        fi
        if [ "$k" -gt 0 ] && [ -z "${MAY_SKIP:-}" ]; then
            echo "FAILED $name: $k tests said they do not apply, in a configuration where all must"
            printed=no
        fi
        skipped=$((skipped + k))
        if [ $status -eq 0 ] && [ "$f" -eq 0 ] && [ "$p" -gt 0 ] && [ $printed = yes ]; then
            passed=$((passed + p))
            echo "ok     $name: $p passed, $k skipped (${secs}s)"
            return
        fi
        passed=$((passed + p))
        failed=$((failed + (f > 0 ? f : 1)))
        echo "FAILED $name: exit $status, $p passed, $f failed, $k skipped (${secs}s); its output:"
    else
        if [ $status -ne 0 ] && grep -q -- "$EXPECT_LINE" "$log"; then
            passed=$((passed + 1))
            echo "ok     $name: failed as it must (${secs}s)"
            return
        fi
        failed=$((failed + 1))
        echo "FAILED $name: expected a failure mentioning '$EXPECT_LINE', got exit $status; its output:"
    fi
    # The failing tests by name first (they may be far above the tail), then the tail.
    grep -E '\.\.\. FAILED|^fatal:' "$log" | sed 's/^/    ! /' | head -20
    sed 's/^/    | /' "$log" | tail -60
}

# The tree stays clean: formatted, no clippy warning for either crate on either target, rustdoc
# without a warning.
step "cargo fmt --check" clean -- cargo fmt --check
step "clippy kernel (x86_64-unknown-none, all targets)" clean -- \
    cargo clippy -p vcrypt-kernel --all-targets -- -D warnings
step "clippy drivers (x86_64-unknown-none)" clean -- cargo clippy -p vcrypt-drivers -- -D warnings
step "clippy drivers (host, with tests)" clean -- \
    cargo clippy -p vcrypt-drivers --target x86_64-unknown-linux-gnu --all-targets -- -D warnings
step "clippy report tool (host, with tests)" clean -- \
    cargo clippy -p vcrypt-report --target x86_64-unknown-linux-gnu --all-targets -- -D warnings
step "cargo doc without warnings (kernel, drivers)" clean RUSTDOCFLAGS=-Dwarnings -- \
    cargo doc --workspace --exclude vcrypt-report --no-deps
step "cargo doc without warnings (report tool, host)" clean RUSTDOCFLAGS=-Dwarnings -- \
    cargo doc -p vcrypt-report --target x86_64-unknown-linux-gnu --no-deps
EXPECT_LINE="run-qemu.sh: cargo test runs no test here: run 'cargo hosttest'"
step "root cargo test says where the tests are and fails" fail -- cargo test

step "host unit tests" pass -- cargo hosttest
MUST_PRINT="layering: no upward references"
step "layers only look down" prints -- scripts/check-layers.sh
MUST_PRINT=
step "report tool: cargo results run -- bench data dur=50, figures hold the run's numbers" pass -- scripts/check-report.sh
MUST_PRINT="cpus online: 2"
# QEMU's complaint about the bad-input test's unknown session is set aside by run-qemu.sh, and
# every interrupt has its handler (a test once unregistered the reschedule IPI's).
MUST_NOT_PRINT='^(qemu-system-x86_64: Cannot find a valid session id: 3735928559|.*unexpected interrupt on vector)' 
step "self-tests, 2 CPUs, 1 device" pass VCRYPT_SMP=2 VCRYPT_DEVICES=1 -- cargo run --quiet
MUST_NOT_PRINT=
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
MUST_PRINT="test pci::msix_entries_read_back ... not applicable: no device has an MSI-X capability (VCRYPT_VECTORS=0)"
MAY_SKIP=yes
step "self-tests, no MSI-X (INTx through the I/O APIC)" pass VCRYPT_VECTORS=0 -- cargo run --quiet
MAY_SKIP=
MUST_PRINT="no usable MSI-X; using INTx"
step "driver suites, 2 devices sharing one INTx line" pass VCRYPT_DEVICES=2 VCRYPT_VECTORS=0 -- cargo run --quiet -- test crypto:: irq::
step "driver suites, 1 MSI-X vector (falls back to INTx)" pass VCRYPT_VECTORS=1 -- cargo run --quiet -- test crypto:: irq::
MUST_PRINT="interrupts SharedVector"
step "driver suites, 2 MSI-X vectors (configuration + one shared by the queues)" pass VCRYPT_VECTORS=2 -- cargo run --quiet -- test crypto:: irq:: log=info
MUST_PRINT=
MUST_PRINT="samples      %  function"
step "profiler: samples resolved to functions" prints -- scripts/profile.sh test crypto::known
# Fault injection: QEMU flags NEEDS_RESET on a malformed request (and prints a complaint the
# test announces); 20 reset cycles in one boot at each CPU count.
MUST_PRINT="reset cycles: 20"
for smp in 1 2 4; do
    step "reset cycles with fault injection, $smp CPU(s)" pass VCRYPT_SMP=$smp -- \
        cargo run --quiet -- test reset::twenty_cycles_with_fault_injection
done
step "reset cycles with fault injection, 2 devices on one INTx line" pass VCRYPT_DEVICES=2 VCRYPT_VECTORS=0 -- \
    cargo run --quiet -- test reset::twenty_cycles_with_fault_injection
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

# The front door: every input taken exactly or refused with its error (issue 15).
hex_of() { od -An -v -tx1 | tr -d ' \n'; }
unhex() { local h; h=$(cat); printf "$(printf '%s' "$h" | sed 's/../\\x&/g')"; }
key=2b7e151628aed2a6abf7158809cf4f3c
iv=f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff
# 4,000 bytes of data: a command line of over 8 KiB, which QEMU's PVH buffer (4 KiB) cannot carry.
plain=$(head -c 4000 /dev/urandom | hex_of)
if command -v openssl >/dev/null 2>&1; then
    MUST_PRINT=$(printf '%s' "$plain" | unhex |
        openssl enc -aes-128-cbc -K $key -iv $iv -nopad 2>/dev/null | hex_of)
    step "kcapi, 8 KiB command line, CBC vs openssl" prints -- cargo run --quiet -- kcapi -e \
        -c 'cbc(aes)' -k $key -i $iv -p "$plain"
    # CTR of a length that is not a whole number of blocks (the device takes whole blocks only).
    for len in 1 17 1000; do
        MUST_PRINT=$(printf '%s' "${plain:0:$((2 * len))}" | unhex |
            openssl enc -aes-128-ctr -K $key -iv $iv 2>/dev/null | hex_of)
        step "kcapi, ctr(aes) of $len bytes vs openssl" prints -- cargo run --quiet -- kcapi -e \
            -c 'ctr(aes)' -k $key -i $iv -p "${plain:0:$((2 * len))}" unadvertised=try
    done
else
    failed=$((failed + 1))
    echo "FAILED kcapi vs openssl: openssl is not installed (scripts/ensure-tools.sh installs it)"
fi
MUST_PRINT=
EXPECT_LINE="run-qemu.sh: the kernel command line is "
step "a command line over the limit is refused before boot" fail -- cargo run --quiet -- kcapi \
    -p "$(head -c 33000 /dev/zero | hex_of)"
EXPECT_LINE="error: kcapi: -k: \"+b7e151628aed2a6abf7158809cf4f3c\" is not hexadecimal"
step "hex with a sign is refused" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' \
    -k +b7e151628aed2a6abf7158809cf4f3c -p 00
EXPECT_LINE="error: kcapi: -p: \"0é\" is not hexadecimal"
step "non-ASCII hex is refused, not a panic" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' \
    -k $key -p 0é
EXPECT_LINE="error: kcapi: invalid key length of 0 bytes"
step "an empty key is an empty key" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' -k '' \
    -i $iv -p 00
EXPECT_LINE="error: kcapi: the request has no data"
step "empty data is empty data" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' -k $key \
    -i $iv -p ''
EXPECT_LINE="error: command line: unknown switch \"kik=locked\" (known: log="
step "an unknown switch is refused" fail -- cargo run --quiet -- kcapi kik=locked
EXPECT_LINE="error: command line: switch ctrl= is given more than once"
step "a repeated switch is refused" fail -- cargo run --quiet -- test ctrl=poll ctrl=sleep
EXPECT_LINE="error: kcapi: -k is given more than once"
step "a repeated option is refused" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' -k $key \
    -k $key -p 00
EXPECT_LINE="error: test: an empty filter ('') matches every test"
step "an empty test filter is refused" fail -- cargo run --quiet -- test ''
EXPECT_LINE="run-qemu.sh: VCRYPT_MEM=1M is 1 MiB; the kernel needs at least 8M"
step "too little RAM is refused before boot" fail VCRYPT_MEM=1M -- cargo run --quiet
MUST_PRINT=7649abac8119b246cee98e9b12e9197d
step "kcapi with the least RAM (8 MiB)" prints VCRYPT_MEM=8M -- cargo run --quiet -- kcapi -e \
    -c 'cbc(aes)' -k $key -i 000102030405060708090a0b0c0d0e0f -p 6bc1bee22e409f96e93d7e117393172a
MUST_PRINT=

EXPECT_LINE="no virtio-crypto device found"
step "no device: clear error" fail VCRYPT_DEVICES=0 -- cargo run --quiet
EXPECT_LINE="test harness_must_fail ... FAILED"
step "a failing test fails the run" fail -- cargo run --quiet -- test harness_must_fail
EXPECT_LINE="test harness_fault_must_fail ... FAILED: exception 14 (page fault)"
step "a fault inside a test fails the run and names it" fail -- cargo run --quiet -- test harness_fault_must_fail

EXPECT_LINE="stack overflow in task 'overflow' (#"
step "a task stack overflow is reported" fail -- cargo run --quiet -- test sched_stack_overflow_must_fail

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
