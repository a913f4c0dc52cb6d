#!/usr/bin/env bash
# Train the zoo's WRN-16-1s on CIFAR-10, one `nad train` each; a model already in zoo/ is skipped.
# Usage, from the repository root: zoo/build.sh PROFILE [NAME ...]   (NAME: clean or an attack; default all)
# Needs the CIFAR-10 copy at data/cifar10 (python ../shared/data/cifar10/prepare.py data/cifar10).
set -euo pipefail
profile=$1
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(clean badnets trojan blend cl sig refool wanet)
for name in "${names[@]}"; do
  out=zoo/$profile-$name
  [ -f "$out/model.safetensors" ] && { echo "skip $out"; continue; }
  attack=()
  [ "$name" = clean ] || attack=(--attack "$name")
  nad train --data cifar10:data/cifar10 --arch wrn16_1 --profile "$profile" "${attack[@]}" --seed 0 \
    --out "$out" --resume --quiet  # --resume: an interrupted model continues from its last epoch
done
python -m benchmarks.zoo_table  # zoo/README.md from every model's results.json
