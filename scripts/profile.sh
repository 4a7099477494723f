#!/usr/bin/env bash
# Runs the kernel with the sampling profiler on and prints the 30 functions where the CPUs spent
# the most timer ticks, with percentages. The kernel prints "profile-sample <address> <count>"
# lines at exit; addr2line resolves each address against the kernel ELF (the innermost inlined
# function counts).
#
#   scripts/profile.sh bench data dur=500     # any kernel words; profile=on is added
#   PROFILE_LOG=run.log scripts/profile.sh    # keep the kernel's output
set -uo pipefail
cd "$(dirname "$0")/.."

command -v addr2line >/dev/null 2>&1 || { echo "profile.sh: addr2line not found (apt-get install binutils)" >&2; exit 1; }
log=${PROFILE_LOG:-$(mktemp)}
cargo build --quiet || exit 1
elf=target/x86_64-unknown-none/debug/vcrypt
echo "profile.sh: running: cargo run -- $* profile=on" >&2
cargo run --quiet -- "$@" profile=on >"$log" 2>&1
status=$?
grep -q '^profile-sample ' "$log" || { echo "profile.sh: the run printed no samples (exit $status); its output: $log" >&2; exit 1; }

grep '^profile: [0-9]' "$log"
grep '^profile-sample ' "$log" | awk '{print $2, $3}' >"$log.samples"
# One addr2line call for every address; -f names the function, -i adds inlined frames (innermost
# first), so each address's block starts with its innermost function.
cut -d' ' -f1 "$log.samples" | addr2line -e "$elf" -f -i -C -a >"$log.symbols"
awk -v samples="$log.samples" '
    BEGIN { while ((getline line < samples) > 0) { split(line, f, " "); count[f[1]] = f[2]; total += f[2] } }
    /^0x/ { addr = $1; sub(/^0x0*/, "0x", addr); want = 1; next }
    want { for (a in count) if (a == addr) { by[$0] += count[a] } ; want = 0 }
    END {
        for (fn in by) printf "%d\t%s\n", by[fn], fn
    }' "$log.symbols" | sort -rn | head -30 |
    awk -F'\t' -v total="$(awk '{s += $2} END {print s}' "$log.samples")" '
        BEGIN { printf "%7s %6s  %s\n", "samples", "%", "function" }
        { printf "%7d %5.1f%%  %s\n", $1, 100 * $1 / total, $2 }'
other=$(grep '^profile-other ' "$log" | awk '{print $2}')
[ -n "$other" ] && echo "(and $other samples at addresses not printed by the kernel)"
[ -n "${PROFILE_LOG:-}" ] || rm -f "$log" "$log.samples" "$log.symbols"
exit 0
