#!/usr/bin/env bash
# Score every shape in a folder with one model; keep one JSON line per shape in a JSONL file
# and count the failures. A bad file does not stop the others: `affcli predict` reports it
# (a warning on stderr, an "error" line in the JSONL) and exits 2 at the end.
#
#   ./examples/predict_folder.sh SHAPES_DIR [QUESTION] [MODEL]
#   MODEL defaults to the newest run under runs/pointrefer/; the outputs go to $OUT (default
#   predictions/) and the JSON lines to $LOG (default $OUT/predictions.jsonl).
set -uo pipefail  # no -e: exit code 2 (some shapes failed) is a result to count, not a crash
DIR=${1:?usage: $0 SHAPES_DIR [QUESTION] [MODEL]}
QUESTION=${2:-"Where would you grasp this object?"}
OUT=${OUT:-predictions}
LOG=${LOG:-$OUT/predictions.jsonl}
mkdir -p "$OUT"

# --force: a rerun replaces this script's own earlier outputs in $OUT
# find | affcli predict - : file names with spaces are fine, and the argument list never gets
# too long for a big folder (one model load for all shapes)
find "$DIR" -maxdepth 1 -type f \
  \( -iname '*.ply' -o -iname '*.obj' -o -iname '*.off' -o -iname '*.stl' -o -iname '*.xyz' \
     -o -iname '*.txt' -o -iname '*.pts' -o -iname '*.csv' -o -iname '*.npy' -o -iname '*.npz' \) \
  | sort \
  | affcli predict - --question "$QUESTION" ${3:+--model "$3"} --out "$OUT" --force --json --quiet \
  > "$LOG"
code=$?

python3 - "$LOG" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
bad = [r for r in rows if "error" in r]
good = [r for r in rows if "error" not in r]
print(f"{len(good)} scored, {len(bad)} failed, written to {sys.argv[1]}")
for r in bad:
    print(f"  failed: {r['error']}")
if good:
    top = max(good, key=lambda r: r["fraction_above_0.5"])
    print(f"  most affordance: {top['path']} ({top['fraction_above_0.5']:.1%} of points > 0.5)")
PY
exit "$code"  # 0: all shapes scored; 2: some failed (listed above); 1: internal error
