#!/usr/bin/env bash
# The kernel's layers only look down: each top-level module of kernel/src may name (crate::X)
# only the modules of its own layer and the layers below it. Upper layers register what lower
# ones call (interrupt entry hooks, timer and line handlers, the fatal reporter). Prints every
# upward reference and exits non-zero if there is one.
set -uo pipefail
cd "$(dirname "$0")/../kernel/src"

# module: the modules it may name besides itself (console's macros println/print count as console).
declare -A allowed=(
    [arch]="mm console"
    [mm]="arch console"
    [console]="arch"
    [cmdline]="console"
    [pci]="arch mm console"
    [sched]="arch mm console"
    [sync]="arch mm console sched"
    [virtio]="arch mm console pci sched sync cmdline"
)

violations=0
for module in "${!allowed[@]}"; do
    files=$( { [ -d "$module" ] && find "$module" -name '*.rs'; [ -f "$module.rs" ] && echo "$module.rs"; } )
    for file in $files; do
        # crate::X, $crate::X and the names inside use crate::{X, Y::Z}
        # Comments do not count: only code can make a dependency.
        code=$(grep -vE '^[[:space:]]*//' "$file")
        names=$( { grep -oE '(\$)?crate::[a-z_]+' <<<"$code" | sed -E 's/.*crate:://';
                   grep -oE 'crate::\{[^}]*' <<<"$code" | sed -E 's/crate::\{//' | tr ',' '\n' |
                       sed -E 's/^[[:space:]]*//; s/::.*//; s/[^a-z_].*//'; } | sort -u)
        for name in $names; do
            case $name in println | print) name=console ;; esac
            [ -z "$name" ] || [ "$name" = "$module" ] && continue
            if ! [[ " ${allowed[$module]} " == *" $name "* ]]; then
                echo "layering: kernel/src/$file ($module) names crate::$name, a layer above it"
                violations=$((violations + 1))
            fi
        done
    done
done
# The driver core (drivers/src): ring memory, engine, device, services, API, each file may
# name files of its own layer and below (super::X, crate::virtio_crypto::X, crate::X).
declare -A rank=(
    [wire]=0 [status]=0 [config]=0 [routing]=0
    [ring]=1 [slots]=1 [queue]=2 [request]=3
    [lifecycle]=4 [device]=4
    [session]=5 [cipher]=5 [akcipher]=5
    [crypto]=6 [stream]=6 [service]=7 [cmdline]=7 [switches]=7
)
cd ../../drivers/src
for file in virtio_crypto/*.rs virtio_crypto/*/*.rs crypto.rs stream.rs service.rs cmdline.rs switches.rs; do
    name=$(basename "$file" .rs)
    # A file in a folder (virtio_crypto/akcipher/keys.rs) is in its folder's layer.
    case $file in virtio_crypto/*/*) name=$(basename "$(dirname "$file")") ;; esac
    case $(basename "$file" .rs) in fake | *_tests | tests | lifecycle_props) continue ;; esac
    [ "$file" = virtio_crypto/mod.rs ] && continue
    [ -n "${rank[$name]:-}" ] || { echo "layering: drivers/src/$file has no layer in check-layers.sh"; violations=$((violations + 1)); continue; }
    code=$(grep -vE '^[[:space:]]*//' "$file")
    names=$( { grep -oE '(super|crate::virtio_crypto|crate)::[a-z_]+' <<<"$code" | sed -E 's/.*:://';
               grep -oE '(super|crate::virtio_crypto|crate)::\{[^}]*' <<<"$code" | sed -E 's/.*::\{//' | tr ',' '\n' |
                   sed -E 's/^[[:space:]]*//; s/::.*//; s/[^a-z_].*//'; } | sort -u)
    for other in $names; do
        [ "$other" = "$name" ] || [ -z "${rank[$other]:-}" ] && continue
        if [ "${rank[$other]}" -gt "${rank[$name]}" ]; then
            echo "layering: drivers/src/$file (layer ${rank[$name]}) names $other (layer ${rank[$other]}), a layer above it"
            violations=$((violations + 1))
        fi
    done
done

if [ "$violations" -ne 0 ]; then
    echo "layering: $violations upward reference(s); register a hook instead (see docs/ARCHITECTURE.md, Layers)"
    exit 1
fi
echo "layering: no upward references"
