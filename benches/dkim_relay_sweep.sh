#!/usr/bin/env bash
# What DKIM signing costs the relay, beside Postfix with OpenDKIM as its milter: the size sweep
# of benches/relay_vs_postfix.sh run without signing, then with both relays signing every
# message (ALGORITHMS: ed25519 and rsa by default, RSA-2048), then one table: each relay's
# messages per second signed over unsigned, per size (the target: deliverypool with Ed25519 at
# 0.9 or more).
#
#   bash benches/dkim_relay_sweep.sh
#   SIZES="2048 102400" ALGORITHMS=ed25519 bash benches/dkim_relay_sweep.sh
#
# Every variable of relay_vs_postfix.sh (SIZES, MESSAGES, SESSIONS, ...) passes through.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ALGORITHMS=${ALGORITHMS:-"ed25519 rsa"}
OUT=$(mktemp -d /tmp/dkim-sweep.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

for dkim in off $ALGORITHMS; do
    echo "=== DKIM $dkim"
    DKIM=$dkim KEEP_RESULTS="$OUT/$dkim" bash benches/relay_vs_postfix.sh
done
echo
"$PY" - "$OUT" $ALGORITHMS <<'PY'
import json, sys
from pathlib import Path
out, algorithms = Path(sys.argv[1]), sys.argv[2:]
def rates(kind):
    found = {}
    for path in (out / kind).glob("*-result.json"):
        r = json.loads(path.read_text())
        found[(r["name"], r["size"])] = r["messages_per_second"]
    return found
off = rates("off")
print("| size | relay | unsigned msg/s | " + " | ".join(f"{a} msg/s | {a} / unsigned" for a in algorithms) + " |")
print("| --- " * (3 + 2 * len(algorithms)) + "|")
for size in sorted({s for _, s in off}):
    for name in ("deliverypool", "postfix"):
        base = off.get((name, size), 0.0)
        cells = []
        for a in algorithms:
            signed = rates(a).get((name, size), 0.0)
            cells += [f"{signed:,.0f}", f"**{signed / base:.2f}**" if base else "-"]
        label = "Postfix + OpenDKIM" if name == "postfix" else name
        print(f"| {size:,} | {label} | {base:,.0f} | " + " | ".join(cells) + " |")
PY
