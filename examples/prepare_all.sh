#!/usr/bin/env bash
# Convert every setting (and AGPIL view) of the three datasets into HDF5, failing fast.
# With no real data at hand, synthesise stand-ins first:  SYNTH=1 ./examples/prepare_all.sh
set -euo pipefail
RAW=${RAW:-data/raw}
if [[ "${SYNTH:-0}" == 1 ]]; then
  for ds in laso piad agpil; do affcli synth "$ds" "$RAW/$ds" -k 4 --force --quiet; done
fi
for setting in seen unseen; do
  affcli prepare laso --root "$RAW/laso" --setting "$setting" --force --quiet
  affcli prepare piad --root "$RAW/piad" --setting "$setting" --force --quiet
  for view in full partial rotation; do
    affcli prepare agpil --root "$RAW/agpil" --setting "$setting" --view "$view" --force --quiet
  done
done
# A machine-readable summary of one file, e.g. for a CI log:
affcli prepare laso --root "$RAW/laso" --out /tmp/laso_check.h5 --force --json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: v["samples"] for k, v in d["splits"].items()})'
ls -l data/*.h5
