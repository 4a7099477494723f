#!/usr/bin/env bash
# Cargo runner for the kernel: run-qemu.sh <kernel ELF> [kernel command line words...]
#
# The words reach the kernel exactly, each one, empty ones and ones with spaces or quotes
# included: each is written in single quotes with ' doubled ('it''s'), joined by spaces, and
# handed over as the fw_cfg file opt/vcrypt/cmdline (not -append, which QEMU's PVH loader copies
# into a 4096-byte buffer without a bound). The encoded line may be at most 65536 bytes
# (MAX_CMDLINE_BYTES in drivers/src/cmdline.rs); a longer one is refused here, before boot.
#
# Boots the kernel under QEMU (PVH entry, serial on stdout) and turns QEMU's exit status into a
# plain pass/fail: the kernel writes 0x10 (pass) or 0x11 (fail) to isa-debug-exit, which QEMU
# turns into 33 or 35. Everything else is a failure with a one-line reason on stderr.
#
# Environment:
#   VCRYPT_SMP      vCPUs (default 2)
#   VCRYPT_MEM      guest RAM (default 256M; at least 12M, MIN_RAM_MIB in kernel/src/mm/mod.rs)
#   VCRYPT_DEVICES  virtio-crypto-pci devices, each with its own builtin backend (default 1; 0 allowed)
#   VCRYPT_ACCEL    tcg (default) or kvm (falls back to tcg where KVM is unavailable)
#   VCRYPT_TIMEOUT  seconds before QEMU is stopped (default 300)
#   VCRYPT_VECTORS  MSI-X vectors per device (default 4: data + control + config + spare;
#                   0 = no MSI-X, the driver falls back to INTx through the I/O APIC)
#   VCRYPT_IOMMU    off (default) or on: q35 with an emulated Intel VT-d (intel-iommu,intremap=off)
#                   and every virtio-crypto-pci with iommu_platform=on,disable-legacy=on, so the
#                   device reaches only what the kernel maps for it
#   VCRYPT_QEMU_PIDFILE  if set, QEMU writes its pid there (the report tool samples QEMU's
#                   threads, which carry names: "CPU 0/TCG", "qemu-system-x86" for the main loop)
set -u
export LC_ALL=C # byte lengths and byte-exact substitutions below

max_cmdline_bytes=65536
min_mem_mib=12

fail() { echo "run-qemu.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] || fail "usage: run-qemu.sh <kernel ELF> [kernel command line words...]"
kernel=$1
shift
[ -f "$kernel" ] || fail "kernel image '$kernel' not found"
case $kernel in
*/deps/*)
    # `cargo test` for the kernel target: there is no test to run there.
    fail "cargo test runs no test here: run 'cargo hosttest' (host unit tests), 'cargo run' (in-QEMU self-tests) or scripts/test-all.sh (everything)"
    ;;
*/vcrypt-report)
    # The host tool's stub for the kernel's target (`cargo build --workspace` builds it).
    fail "vcrypt-report is a host tool: run it with 'cargo results ...' (see the README)"
    ;;
esac

smp=${VCRYPT_SMP:-2}
mem=${VCRYPT_MEM:-256M}
devices=${VCRYPT_DEVICES:-1}
accel=${VCRYPT_ACCEL:-tcg}
timeout_s=${VCRYPT_TIMEOUT:-300}
vectors=${VCRYPT_VECTORS:-4}
iommu=${VCRYPT_IOMMU:-off}

# Decimal only, without a leading zero (bash arithmetic reads 010 as octal 8 and refuses 09), and
# short enough that bash's 64-bit arithmetic cannot overflow.
is_count() { [[ $1 =~ ^(0|[1-9][0-9]{0,8})$ ]]; }
decimal="decimal, no leading zero"
is_count "$smp" && [ "$smp" -ge 1 ] && [ "$smp" -le 8 ] || fail "VCRYPT_SMP must be 1..8 ($decimal), got '$smp'"
is_count "$devices" && [ "$devices" -le 16 ] || fail "VCRYPT_DEVICES must be 0..16 ($decimal), got '$devices'"
is_count "$vectors" && [ "$vectors" -le 64 ] || fail "VCRYPT_VECTORS must be 0..64 ($decimal), got '$vectors'"
is_count "$timeout_s" && [ "$timeout_s" -ge 1 ] || fail "VCRYPT_TIMEOUT must be a positive number of seconds ($decimal, at most 9 digits), got '$timeout_s'"
[[ $mem =~ ^([1-9][0-9]{0,6})([MG]?)$ ]] ||
    fail "VCRYPT_MEM must look like 256M or 1G ($decimal, at most 7 digits; M is the default unit), got '$mem'"
mem_mib=${BASH_REMATCH[1]}
[ "${BASH_REMATCH[2]}" = G ] && mem_mib=$((mem_mib * 1024))
[ "$mem_mib" -ge "$min_mem_mib" ] ||
    fail "VCRYPT_MEM=$mem is ${mem_mib} MiB; the kernel needs at least ${min_mem_mib}M"
case "$accel" in
    tcg) accel_args=(-accel tcg) ;;
    kvm) accel_args=(-accel kvm -accel tcg) ;;
    *) fail "VCRYPT_ACCEL must be tcg or kvm, got '$accel'" ;;
esac

case "$iommu" in
    off) machine_args=() device_opts= ;;
    on) machine_args=(-machine q35 -device intel-iommu,intremap=off)
        device_opts=,iommu_platform=on,disable-legacy=on ;;
    *) fail "VCRYPT_IOMMU must be on or off, got '$iommu'" ;;
esac

qemu=${QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null 2>&1 ||
    fail "$qemu not found: install it with 'sudo apt-get install qemu-system-x86'"

# The kernel command line: every word quoted (see the top of this file).
cmdline=
for word in "$@"; do
    [ -n "$cmdline" ] && cmdline+=" "
    cmdline+="'${word//\'/\'\'}'"
done
[ "${#cmdline}" -le "$max_cmdline_bytes" ] ||
    fail "the kernel command line is ${#cmdline} bytes (quoted); the limit is $max_cmdline_bytes bytes"
cmdline_file=$(mktemp "${TMPDIR:-/tmp}/vcrypt-cmdline.XXXXXX") || fail "cannot create a temporary file"
stopped_file=$cmdline_file.stopped
trap 'rm -f "$cmdline_file" "$cmdline_file.pid" "$stopped_file"' EXIT
printf '%s' "$cmdline" >"$cmdline_file"

args=(
    "$qemu" -kernel "$kernel" -fw_cfg "name=opt/vcrypt/cmdline,file=${cmdline_file//,/,,}"
    "${machine_args[@]}" "${accel_args[@]}" -smp "$smp" -m "$mem"
    -serial stdio -display none -no-reboot -nic none
    -device isa-debug-exit,iobase=0xf4,iosize=0x04
    -name vcrypt,debug-threads=on
)
# QEMU's pid, for the report tool and for stopping a VM that QEMU reports as stopped (below).
pidfile=${VCRYPT_QEMU_PIDFILE:-$cmdline_file.pid}
args+=(-pidfile "$pidfile")
# One MSI-X vector per virtqueue (the builtin backend has a data and a control queue) plus one
# for configuration changes, with a spare.
for ((i = 0; i < devices; i++)); do
    args+=(-object "cryptodev-backend-builtin,id=crypto$i"
           -device "virtio-crypto-pci,cryptodev=crypto$i,vectors=$vectors$device_opts")
done

echo "run-qemu.sh: ${args[*]}" >&2
if [ "${#cmdline}" -le 300 ]; then
    echo "run-qemu.sh: kernel command line: $cmdline" >&2
else
    echo "run-qemu.sh: kernel command line: ${#cmdline} bytes, starting ${cmdline:0:200}..." >&2
fi
# QEMU's -serial stdio needs a usable stdin, which CI does not have. QEMU's own messages (its
# stderr) go through a filter that passes each line on as soon as it is read, so they stay in
# order with the kernel's output, and that does two things:
# - The bad-input self-test uses session id 0xdeadbeef (3735928559) on purpose, and QEMU's builtin
#   backend prints that it cannot find it: each such line is replaced by one saying so.
# - KVM can stop the VM and keep QEMU running ("KVM internal error", "emulation failure": QEMU's
#   accel/kvm/kvm-all.c pauses the VM on an exit it cannot handle). The filter then stops QEMU at
#   once, and the runner fails with QEMU's reason instead of waiting for the timeout.
expected="${qemu##*/}: Cannot find a valid session id: 3735928559"
filter() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
        "$expected")
            echo "run-qemu.sh: QEMU said \"Cannot find a valid session id: 3735928559\": expected, the bad-input self-test uses that unknown session on purpose" ;;
        "KVM internal error"* | "KVM: entry failed"* | "error: kvm run failed"*)
            echo "$line"
            if [ ! -e "$stopped_file" ]; then
                echo "$line" >"$stopped_file"
                [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
            fi
            ;;
        *) echo "$line" ;;
        esac
    done
}
# --foreground keeps QEMU in this script's process group: Ctrl-C, or a caller's time limit that
# signals the group (scripts/test-all.sh), reaches QEMU too instead of leaving it running
# until VCRYPT_TIMEOUT. On the timeout QEMU gets SIGTERM, and SIGKILL 5 s later.
exec 3>&1
timeout --foreground --kill-after=5 "$timeout_s" "${args[@]}" </dev/null 2>&1 1>&3 3>&- | filter >&2
status=${PIPESTATUS[0]}
exec 3>&-

if [ -s "$stopped_file" ]; then
    fail "QEMU stopped the VM: $(cat "$stopped_file") (the register dump above is QEMU's; KVM is not a tested configuration, see the README)"
fi
case $status in
    33) exit 0 ;;
    35) fail "the kernel reported failure (QEMU exit 35)" ;;
    0) fail "QEMU exited 0 without the kernel reporting a result (triple fault or reset?)" ;;
    124|137) fail "timed out after ${timeout_s}s (VCRYPT_TIMEOUT)" ;;
    *) fail "QEMU failed with exit status $status" ;;
esac
