#!/usr/bin/env bash
# Runs every test: the tree's hygiene (fmt, clippy, rustdoc), host unit tests, then the in-QEMU
# self-tests in each configuration that must pass, the front door's answers to bad and unusual
# input, and the runs that must fail (no device, the harness's own failing test). Prints one line
# per step and a closing "N passed, N failed, N skipped" over every test of every step (skipped:
# self-tests that do not apply to a configuration, e.g. MSI-X ones without MSI-X).
#
# Every step has a time limit, so that one hang cannot stall the run: STEP_LIMIT seconds
# (default below), set for one step as `STEP_LIMIT=1800 step ...`. A step past its limit gets
# SIGTERM (SIGKILL 10 s later) to its whole process group, cargo's children and QEMU included,
# and fails with "timed out after N s". Each QEMU boot also has run-qemu.sh's own
# VCRYPT_TIMEOUT, which is shorter and says which boot it was.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
skipped=0
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
# A step's time limit when it sets none: a build (about 2 minutes on a loaded 2-core machine)
# plus a boot up to run-qemu.sh's default VCRYPT_TIMEOUT (300 s), with room.
DEFAULT_STEP_LIMIT=600
# The running step's timeout process: stopped with the script (Ctrl-C, CI cancelling), which
# passes the signal on to the step's process group, which is not the terminal's.
step_pid=
stop_step() {
    [ -n "$step_pid" ] && kill -TERM "$step_pid" 2>/dev/null && wait "$step_pid"
    exit 130
}
trap stop_step INT TERM

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

# [STEP_LIMIT=seconds] step NAME EXPECT(pass|fail|prints|clean) ENV... -- COMMAND...
# pass: exit 0, tests ran, none failed, and none skipped unless $MAY_SKIP is set; it must also
# print $MUST_PRINT (a line containing it), when that is set, and no line matching the extended
# regular expression $MUST_NOT_PRINT. prints: exit 0 and the whole line
# $MUST_PRINT. clean: exit 0 (a hygiene check; counts as one). fail: non-zero exit and a line
# containing $EXPECT_LINE. Any expectation: done within STEP_LIMIT (else "timed out").
step() {
    local name=$1 expect=$2
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local log="$log_dir/$(echo "$name" | tr -c 'a-zA-Z0-9' '_').log"
    local start=$SECONDS limit=${STEP_LIMIT:-$DEFAULT_STEP_LIMIT}
    # Not --foreground: timeout then signals the step's whole process group, so a hung test
    # binary under cargo, or QEMU under run-qemu.sh, dies with the step.
    timeout --kill-after=10 "$limit" env "${envs[@]}" "$@" >"$log" 2>&1 &
    step_pid=$!
    wait "$step_pid"
    local status=$?
    step_pid=
    local secs=$((SECONDS - start))
    if { [ $status -eq 124 ] || [ $status -eq 137 ]; } && [ $secs -ge "$limit" ]; then
        failed=$((failed + 1))
        echo "FAILED $name: timed out after $limit s (STEP_LIMIT); its output:"
        sed 's/^/    | /' "$log" | tail -60
        return
    fi
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
# A Rust user's habits work: the host report tool builds as a stub for the kernel's target.
step "cargo build --workspace" clean -- cargo build --workspace
step "cargo clippy --workspace" clean -- cargo clippy --workspace -- -D warnings
EXPECT_LINE="run-qemu.sh: vcrypt-report is a host tool: run it with 'cargo results"
step "cargo run -p vcrypt-report (the kernel target's stub) says where the tool is" fail -- \
    cargo run --quiet -p vcrypt-report

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
# One CPU: the IPI test has no other CPU (and says so, which also proves the boot had one CPU).
MUST_PRINT="test irq::wakes_of_a_halted_cpu_share_one_ipi ... not applicable: one CPU"
MAY_SKIP=yes
step "self-tests, 1 CPU" pass VCRYPT_SMP=1 -- cargo run --quiet
MAY_SKIP=
MUST_PRINT="cpus online: 4"
step "self-tests, 4 CPUs" pass VCRYPT_SMP=4 -- cargo run --quiet
MUST_PRINT="cpus online: 8"
step "self-tests, 8 CPUs" pass VCRYPT_SMP=8 -- cargo run --quiet
MUST_PRINT=
step "self-tests, 2 devices" pass VCRYPT_DEVICES=2 -- cargo run --quiet
MUST_PRINT="cpus online: 4"
# The suites that depend on the device count (routing, the service, interrupts, many tasks);
# the whole suite runs with 4 CPUs and with 2 devices above.
step "device suites, 4 CPUs, 4 devices (per-CPU queues)" pass VCRYPT_SMP=4 VCRYPT_DEVICES=4 -- \
    cargo run --quiet -- test service:: irq:: crypto::known crypto::many_tasks stream::many_streams \
    bench::
MUST_PRINT=
step "service suites, 1 CPU, 2 devices" pass VCRYPT_SMP=1 VCRYPT_DEVICES=2 -- cargo run --quiet -- test service:: irq::completions
step "driver suites, ctrl=poll" pass -- cargo run --quiet -- test crypto:: stream:: ctrl=poll
step "driver suites, kick=locked" pass -- cargo run --quiet -- test crypto:: stream:: kick=locked
# Notification suppression by ring indices (the default) and by flags: the volume and
# differential tests among them.
MUST_PRINT="notifications by flags (no EVENT_IDX)"
step "driver suites, event_idx=off" pass -- cargo run --quiet -- test crypto:: stream:: event_idx=off
MUST_PRINT="notifications by ring index (EVENT_IDX)"
step "driver suites, event_idx=on" pass -- cargo run --quiet -- test crypto:: stream:: event_idx=on
MUST_PRINT=
MUST_PRINT="test pci::msix_entries_read_back ... not applicable: no device has an MSI-X capability (VCRYPT_VECTORS=0)"
MAY_SKIP=yes
step "self-tests, no MSI-X (INTx through the I/O APIC)" pass VCRYPT_VECTORS=0 -- cargo run --quiet
MAY_SKIP=
MUST_PRINT="no usable MSI-X; using INTx"
step "driver suites, 2 devices sharing one INTx line" pass VCRYPT_DEVICES=2 VCRYPT_VECTORS=0 -- cargo run --quiet -- test crypto:: stream:: irq::
step "driver suites, 1 MSI-X vector (falls back to INTx)" pass VCRYPT_VECTORS=1 -- cargo run --quiet -- test crypto:: stream:: irq::
MUST_PRINT="interrupts SharedVector"
step "driver suites, 2 MSI-X vectors (configuration + one shared by the queues)" pass VCRYPT_VECTORS=2 -- cargo run --quiet -- test crypto:: stream:: irq:: log=info
MUST_PRINT=
# Every documented MSI-X configuration passes the PCI suite (its MSI-X test adapts to 1 and 2).
step "pci suite, 1 MSI-X vector" pass VCRYPT_VECTORS=1 -- cargo run --quiet -- test pci::
step "pci suite, 2 MSI-X vectors" pass VCRYPT_VECTORS=2 -- cargo run --quiet -- test pci::
# With more RAM than fits below 3.5 GiB, QEMU puts the rest at 4 GiB: the moved BAR must avoid it.
step "pci suite, 3584 MiB of RAM (RAM from 4 GiB)" pass VCRYPT_MEM=3584M -- cargo run --quiet -- test pci::
step "pci suite, 8 GiB of RAM" pass VCRYPT_MEM=8G -- cargo run --quiet -- test pci::
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
# DMA confinement (VCRYPT_IOMMU=on: q35, VT-d, iommu_platform=on): the crypto suites (streams and
# volume among them), RSA, the fault test and reset cycles, on 1 CPU with 1 device and on 2 CPUs
# with 2 devices.
MUST_PRINT="iommu fault: request failed with a DMA fault"
for config in "1 1" "2 2"; do
    read -r smp devs <<<"$config"
    step "IOMMU on: crypto, RSA, iommu and reset suites, $smp CPU(s), $devs device(s)" pass \
        VCRYPT_IOMMU=on VCRYPT_SMP=$smp VCRYPT_DEVICES=$devs -- cargo run --quiet -- test crypto:: stream:: \
        rsa:: iommu:: reset::twenty_cycles_with_fault_injection
done
MUST_PRINT=7649abac8119b246cee98e9b12e9197d
step "kcapi one-shot: SP 800-38A CBC block" prints -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' \
    -k 2b7e151628aed2a6abf7158809cf4f3c -i 000102030405060708090a0b0c0d0e0f -p 6bc1bee22e409f96e93d7e117393172a
MUST_PRINT=8b19050f66582cb7f7e4b6c873819b7108afa0eaa7de29bac7d903576b674c32
step "kcapi -d 2: the AF_ALG discussion's chained CBC stream (first block = libkcapi's answer)" prints -- cargo run --quiet -- kcapi -d 2 -e -c 'cbc(aes)' \
    -k 8d7dd9b0170ce0b5f2f8e1aa768e01e91da8bfc67fd486d081b28254c99eb423 -i 7fbc02ebf5b93322329df9bfccb635af -p 48981da18e4bb9ef7e2e3162d16b1910
step "kcapi -s 16 chain=serial: the same stream in 16-byte chunks" prints -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' chain=serial -s 16 \
    -k 8d7dd9b0170ce0b5f2f8e1aa768e01e91da8bfc67fd486d081b28254c99eb423 -i 7fbc02ebf5b93322329df9bfccb635af -p 48981da18e4bb9ef7e2e3162d16b191048981da18e4bb9ef7e2e3162d16b1910
MUST_PRINT=
# RSA through kcapi -x 4 (RSA Laboratories example 1 key, 1024 bits; sha256). The public-key
# operations fit the 1 KiB command line; the private key's 1,214 hex digits need the larger
# command line (fw_cfg), so sign and decrypt run once the kernel carries it.
RSA_PRIV=3082025b02010002818100a56e4a0e701017589a5187dc7ea841d156f2ec0e36ad52a44dfeb1e61f7ad991d8c51056ffedb162b4c0f283a12a88a394dff526ab7291cbb307ceabfce0b1dfd5cd9508096d5b2b8b6df5d671ef6377c0921cb23c270a70e2598e6ff89d19f105acc2d3f0cb35f29280e1386b6f64c4ef22e1e1f20d0ce8cffb2249bd9a2137020301000102818033a5042a90b27d4f5451ca9bbbd0b44771a101af884340aef9885f2a4bbe92e894a724ac3c568c8f97853ad07c0266c8c6a3ca0929f1e8f11231884429fc4d9ae55fee896a10ce707c3ed7e734e44727a39574501a532683109c2abacaba283c31b4bd2f53c3ee37e352cee34f9e503bd80c0622ad79c6dcee883547c6a3b325024100e7e8942720a877517273a356053ea2a1bc0c94aa72d55c6e86296b2dfc967948c0a72cbccca7eacb35706e09a1df55a1535bd9b3cc34160b3b6dcd3eda8e6443024100b69dca1cf7d4d7ec81e75b90fcca874abcde123fd2700180aa90479b6e48de8d67ed24f9f19d85ba275874f542cd20dc723e6963364a1f9425452b269a6799fd024028fa13938655be1f8a159cbaca5a72ea190c30089e19cd274a556f36c4f6e19f554b34c077790427bbdd8dd3ede2448328f385d81b30e8e43b2fffa02786197902401a8b38f398fa712049898d7fb79ee0a77668791299cdfa09efc0e507acb21ed74301ef5bfd48be455eaeb6e1678255827580a8e4e8e14151d1510a82a3f2e729024027156aba4126d24a81f3a528cbfb27f56886f840a9f6e86e17a44b94fe9319584b8e22fdde1e5a2e3bd8aa5ba8d8584194eb2190acf832b847f13a3d24a79f4d
RSA_PUB=30818902818100a56e4a0e701017589a5187dc7ea841d156f2ec0e36ad52a44dfeb1e61f7ad991d8c51056ffedb162b4c0f283a12a88a394dff526ab7291cbb307ceabfce0b1dfd5cd9508096d5b2b8b6df5d671ef6377c0921cb23c270a70e2598e6ff89d19f105acc2d3f0cb35f29280e1386b6f64c4ef22e1e1f20d0ce8cffb2249bd9a21370203010001
RSA_DIGEST=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
RSA_SIG=90dc876980c42ab132a4e3f08267016c466ae84711b6b19f9e0fa629480cb380a06e169fa1e088ffe0d2844ff9648b7673266f23473641aacac5d89ae21eacf6b89c3b7b5353c3d41721e417579dfcb53083a49974c30422b7c9176c2a5986cd10f32ac5314ed6729fd891a2b2cfdabd38279b47d19df239d1bd55836d2f9663
RSA_MSG=76637279707420727361206b63617069
RSA_CT=3dc43844e7f74dcb6e2cff1dd058eb0cce2f93dac783def35f9955af70499e7131e79b3a9ca1fea5a1125febf6ba2047e1689319c2be6e13673d82046cca8c8b57fcaf2b042fad61b302ed36c0e3c207af4a90ae0e603d890e11995ad0213a136f216549d04966fc4ea1b43b93e63a90264eb71d5217eb49a2c2dbe3a8ceaa07
MUST_PRINT=ok
step "kcapi RSA verify (-o 3)" prints -- cargo run --quiet -- kcapi -x 4 -o 3 -c 'pkcs1pad(rsa,sha256)' \
    -j "$RSA_PUB" -p "$RSA_DIGEST" -t "$RSA_SIG"
MUST_PRINT=256
step "kcapi RSA encrypt (-o 0): a 128-byte ciphertext" prints -- bash -c "cargo run --quiet -- kcapi -x 4 -o 0 \
    -c 'pkcs1pad(rsa,sha256)' -j $RSA_PUB -p $RSA_MSG | tail -1 | tr -d '\r\n' | wc -c"
MUST_PRINT=
EXPECT_LINE="error: kcapi: the signature does not verify"
step "kcapi RSA verify of a bad signature fails" fail -- cargo run --quiet -- kcapi -x 4 -o 3 \
    -c 'pkcs1pad(rsa,sha256)' -j "$RSA_PUB" -p "$RSA_DIGEST" -t "00${RSA_SIG:2}"
# The private key's hex is about 1.3 KiB of command line (fw_cfg carries it whole).
MUST_PRINT=$RSA_SIG
step "kcapi RSA sign (-o 2)" prints -- cargo run --quiet -- kcapi -x 4 -o 2 -c 'pkcs1pad(rsa,sha256)' \
    -j "$RSA_PRIV" -p "$RSA_DIGEST"
MUST_PRINT=$RSA_MSG
step "kcapi RSA decrypt (-o 1)" prints -- cargo run --quiet -- kcapi -x 4 -o 1 -c 'pkcs1pad(rsa,sha256)' \
    -j "$RSA_PRIV" -p "$RSA_CT"
MUST_PRINT=
MUST_PRINT="rsa differential: 3000 per op per key size"
# About as long as the whole suite: longer limits than any other boot.
STEP_LIMIT=1800 step "RSA differential, 3,000 per operation per key size" pass VCRYPT_TIMEOUT=1500 -- \
    cargo run --quiet -- test rsa::differential_3000_per_op_vs_rustcrypto
MUST_PRINT=
EXPECT_LINE="error: kcapi: -k: \"2b7g\" is not hexadecimal"
step "kcapi with a bad argument" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' -k 2b7g -p 00

# The front door: every input taken exactly or refused with its error (docs/DESIGN.md, "Bad input and its errors").
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
EXPECT_LINE="error: event_idx=maybe: expected event_idx=on or event_idx=off"
step "a bad event_idx value is refused" fail -- cargo run --quiet -- test event_idx=maybe
EXPECT_LINE="error: kcapi: -k is given more than once"
step "a repeated option is refused" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' -k $key \
    -k $key -p 00
EXPECT_LINE="error: test: an empty filter ('') matches every test"
step "an empty test filter is refused" fail -- cargo run --quiet -- test ''
# Counts and sizes are bounded, never a panic; empty data and weak XTS keys are refused.
EXPECT_LINE="error: kcapi: -d: \"18446744073709551615\" is too large: at most 1048576 repetitions"
step "kcapi -d 2^64-1 is refused with its limit" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' \
    -k $key -i $iv -p 00112233445566778899aabbccddeeff -d 18446744073709551615
EXPECT_LINE="error: kcapi: -d 65537: 16 bytes of data 65537 times is more than one kcapi operation may hold (1048576 bytes)"
step "kcapi -d over 1 MiB of data is refused with its limit" fail -- cargo run --quiet -- kcapi -e \
    -c 'cbc(aes)' -k $key -i $iv -p 00112233445566778899aabbccddeeff -d 65537
EXPECT_LINE="error: kcapi: 1048576 bytes of input do not fit in the kernel's heap"
step "kcapi -d at the limit with 12 MiB of RAM: refused, no panic" fail VCRYPT_MEM=12M -- cargo run --quiet -- \
    kcapi -e -c 'cbc(aes)' -k $key -i $iv -p 00112233445566778899aabbccddeeff -d 65536
EXPECT_LINE="error: kcapi: -s: \"99999999999999999999999\" is too large: at most 65536 bytes"
step "kcapi -s with a huge number is refused with its limit" fail -- cargo run --quiet -- kcapi -e \
    -c 'cbc(aes)' -k $key -i $iv -p 00112233445566778899aabbccddeeff -s 99999999999999999999999
if command -v openssl >/dev/null 2>&1; then
    MUST_PRINT=$(head -c 1048576 /dev/zero | openssl enc -aes-128-cbc -K $key -iv $iv -nopad 2>/dev/null |
        hex_of | sha256sum | cut -d' ' -f1)
    step "kcapi -d at its limit (1 MiB in 4 KiB chunks) vs openssl" prints -- bash -c "cargo run --quiet -- \
        kcapi -e -c 'cbc(aes)' -k $key -i $iv -p $(head -c 4096 /dev/zero | hex_of) -d 256 |
        tail -1 | tr -d '\r\n' | sha256sum | cut -d' ' -f1"
    MUST_PRINT=
fi
EXPECT_LINE="error: kcapi: the request has no data"
step "empty data with -d 2 is refused like empty data" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' \
    -k $key -i $iv -p '' -d 2
step "empty data with -s 16 is refused like empty data" fail -- cargo run --quiet -- kcapi -e -c 'cbc(aes)' \
    -k $key -i $iv -p '' -s 16
EXPECT_LINE="error: kcapi: -k: the two halves of the xts(aes) key are equal"
step "an xts(aes) key with equal halves is refused" fail -- cargo run --quiet -- kcapi -e -c 'xts(aes)' \
    -k $key$key -i $iv -p 00112233445566778899aabbccddeeff unadvertised=try
# Each message names the real problem and the accepted values.
EXPECT_LINE="(the device refuses pkcs1pad(rsa,sha224) sessions: QEMU 7.2's builtin backend implements sha1, sha256 and sha512 only)"
step "a sha224 RSA session: the device's refusal, not the key's" fail -- cargo run --quiet -- kcapi -x 4 -o 2 \
    -c 'pkcs1pad(rsa,sha224)' -j "$RSA_PRIV" -p "${RSA_DIGEST:0:56}"
# (EXPECT_LINE is a grep pattern: "." stands for each bracket.)
EXPECT_LINE="(commands: test .filter...., bench .ctrl. .kick. .limit. .data. .scale. .chain. .rsa. .dur=ms., kcapi -e|-d ..., kcapi -x 4 ...)"
step "an unknown command lists every command" fail -- cargo run --quiet -- frobnicate
EXPECT_LINE="-d <n>, -s <bytes>; RSA: -x 4 -o <0|1|2|3>"
step "an unknown kcapi option lists every option" fail -- cargo run --quiet -- kcapi -e -q
EXPECT_LINE="\" (30000 characters); tests are:"
step "no test matches: a long filter is shown cut" fail -- cargo run --quiet -- test "$(head -c 30000 /dev/zero | tr '\0' x)"
EXPECT_LINE="error: dur=abc: expected milliseconds per point, 1..60000"
step "dur=abc is refused outside bench too" fail -- cargo run --quiet -- test pci::finds dur=abc
EXPECT_LINE="error: bench: ctrl is given more than once"
step "bench ctrl ctrl is refused" fail -- cargo run --quiet -- bench ctrl ctrl
MUST_PRINT="driver switches: ctrl=poll kick=locked chain=pipelined unadvertised=refuse reap=on queues=percpu event_idx=on"
step "the driver switches line spells switches as the parser takes them" prints -- cargo run --quiet -- \
    kcapi -e -c 'cbc(aes)' -k $key -i 000102030405060708090a0b0c0d0e0f -p 6bc1bee22e409f96e93d7e117393172a \
    ctrl=poll kick=locked
MUST_PRINT="last: 7649abac8119b246cee98e9b12e9197d"
step "kcapi with profile=on: the result is the last line" prints -- bash -c "cargo run --quiet -- kcapi -e \
    -c 'cbc(aes)' -k $key -i 000102030405060708090a0b0c0d0e0f -p 6bc1bee22e409f96e93d7e117393172a profile=on \
    2>/dev/null | tr -d '\r' | tail -1 | sed 's/^/last: /'"
MUST_PRINT=
EXPECT_LINE="run-qemu.sh: VCRYPT_MEM=1M is 1 MiB; the kernel needs at least 12M"
step "too little RAM is refused before boot" fail VCRYPT_MEM=1M -- cargo run --quiet
# Decimal only: bash reads 010 as octal 8 and refuses 09.
for bad in VCRYPT_DEVICES=010 VCRYPT_DEVICES=09 VCRYPT_VECTORS=010 VCRYPT_SMP=02; do
    EXPECT_LINE="run-qemu.sh: ${bad%%=*} must be "
    step "$bad is refused before boot (decimal, no leading zero)" fail "$bad" -- cargo run --quiet
done
EXPECT_LINE="run-qemu.sh: VCRYPT_MEM must look like 256M or 1G (decimal, no leading zero, at most 7 digits"
step "VCRYPT_MEM=9223372036854775807G is refused, not wrapped" fail VCRYPT_MEM=9223372036854775807G -- cargo run --quiet
# A VM that KVM stops keeps QEMU running: the runner stops it at once with QEMU's reason. A stand-in
# for QEMU prints what QEMU 7.2 prints there (accel/kvm/kvm-all.c) and waits.
fake_qemu=$log_dir/qemu-kvm-internal-error
cat >"$fake_qemu" <<'FAKE'
#!/usr/bin/env bash
while [ $# -gt 0 ]; do [ "$1" = -pidfile ] && echo $$ >"$2"; shift; done
printf 'KVM internal error. Suberror: 1\nemulation failure\nRAX=0000000000000000 RBX=0000000000000000\n' >&2
exec sleep 120
FAKE
chmod +x "$fake_qemu"
EXPECT_LINE="run-qemu.sh: QEMU stopped the VM: KVM internal error. Suberror: 1"
step "a VM stopped by KVM fails at once with QEMU's reason" fail QEMU="$fake_qemu" VCRYPT_TIMEOUT=100 -- \
    cargo run --quiet -- test arch::breakpoint
# QEMU's messages arrive in order (flushed per line), and the closing line is the last line. QEMU's
# stderr and the serial console are two pipes: the message is checked against the line of a test
# that runs after the one provoking it (a buffered filter delivers it only at exit).
MUST_PRINT="in order; last: 3 passed, 0 failed, 0 skipped"
step "QEMU's messages in order, the closing line last" prints -- bash -c '
    out=$(cargo run --quiet -- test crypto::bad_inputs rsa::bad_inputs rsa::every_key_size 2>&1 | tr -d "\r")
    message=$(grep -n "Cannot find a valid session id: 1\$" <<<"$out" | head -1 | cut -d: -f1)
    result=$(grep -n "^test rsa::bad_inputs.* ok" <<<"$out" | cut -d: -f1)
    [ -n "$message" ] && [ -n "$result" ] && [ "$message" -lt "$result" ] && echo "in order; last: $(tail -1 <<<"$out")"'
MUST_PRINT=
MUST_PRINT=7649abac8119b246cee98e9b12e9197d
step "kcapi with the least RAM (12 MiB)" prints VCRYPT_MEM=12M -- cargo run --quiet -- kcapi -e \
    -c 'cbc(aes)' -k $key -i 000102030405060708090a0b0c0d0e0f -p 6bc1bee22e409f96e93d7e117393172a
MUST_PRINT=

EXPECT_LINE="no virtio-crypto device found"
step "no device: clear error" fail VCRYPT_DEVICES=0 -- cargo run --quiet
EXPECT_LINE="test harness::must_fail ... FAILED"
step "a failing test fails the run" fail -- cargo run --quiet -- test harness::must_fail
EXPECT_LINE="test harness::fault_must_fail ... FAILED: exception 14 (page fault)"
step "a fault inside a test fails the run and names it" fail -- cargo run --quiet -- test harness::fault_must_fail

EXPECT_LINE="stack overflow in task 'overflow' (#"
step "a task stack overflow is reported" fail -- cargo run --quiet -- test sched::stack_overflow_must_fail

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
