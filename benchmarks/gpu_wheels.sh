#!/usr/bin/env bash
# Prepare, HERE (a machine that reaches PyPI), the wheels that benchmarks/gpu.sh installs on a lent GPU
# machine, which reaches no network and receives at most 64 MiB per call: download them for the device's
# Python, split every file over --chunk-mib into numbered parts, and group the pieces into folders
# call-1, call-2, ... of at most --chunk-mib each, to carry one folder per device call.
#
#   bash benchmarks/gpu_wheels.sh [--python 3.12] [--platform TAG]... [--chunk-mib 56]
#                                 [--out bench-output/gpu-wheels] [--package SPEC]... [--dry-run]
#
#   --python     the device's Python (default 3.12: the lent image's python3 is 3.12.3, in
#                /work/.library/device/KINDS.md; `bash benchmarks/gpu.sh --check` there prints it)
#   --platform   wheel platform tag, repeatable (default: manylinux 2_28, 2_27, 2_17 and 2014, x86_64)
#   --chunk-mib  largest piece and largest folder per call, MiB (default 56: the working tree, ~4 MiB,
#                travels beside it within the 64 MiB of a call)
#   --out        where to write (default bench-output/gpu-wheels, git-ignored); replaced on each run
#   --package    a requirement to download, repeatable; given once, it replaces the default list:
#                onnxruntime-gpu==1.31.1 (links CUDA 13) and transformers==5.24.0 (the version this
#                project is developed with; gpu.sh keeps the machine's own if its needs are unmet there)
#   --from DIR   take the files in DIR (wheels downloaded before) instead of downloading
#   --dry-run    print the plan and the pip command; download and write nothing
#
# Downloads are --no-deps: the lent image already has torch (CUDA), numpy, onnx, tokenizers, safetensors,
# pillow, protobuf, flatbuffers... (KINDS.md lists them). Each call-N folder holds a MANIFEST of every
# wheel (sha256, bytes, number of parts, name), so the device can tell what is still missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
DEFAULT_PACKAGES=("onnxruntime-gpu==1.31.1" "transformers==5.24.0")
DEFAULT_PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)

python_version=3.12
chunk_mib=56
out=bench-output/gpu-wheels
dry_run=0
from=""
packages=()
platforms=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
fail() { echo "gpu_wheels.sh: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n $2 ]] || fail "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --python) need_value "$@"; python_version=$2; shift 2 ;;
        --platform) need_value "$@"; platforms+=("$2"); shift 2 ;;
        --chunk-mib) need_value "$@"; chunk_mib=$2; shift 2 ;;
        --out) need_value "$@"; out=$2; shift 2 ;;
        --package) need_value "$@"; packages+=("$2"); shift 2 ;;
        --from) need_value "$@"; from=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) fail "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $python_version =~ ^3\.[0-9]{1,2}$ ]] || fail "--python $python_version: give MAJOR.MINOR, such as 3.12"
if ! [[ $chunk_mib =~ ^[1-9][0-9]*$ ]] || (( chunk_mib < 1 || chunk_mib > 60 )); then
    fail "--chunk-mib $chunk_mib: give a whole number of MiB from 1 to 60 (a call carries at most 64 MiB)"
fi
(( ${#packages[@]} )) || packages=("${DEFAULT_PACKAGES[@]}")
(( ${#platforms[@]} )) || platforms=("${DEFAULT_PLATFORMS[@]}")
for spec in "${packages[@]}"; do
    [[ $spec =~ ^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$ ]] \
        || fail "--package $spec: pin one version, NAME==VERSION (the device cannot resolve anything)"
done
[[ -z $from || -d $from ]] || fail "--from $from: not a folder"
case $out in /*) ;; *) out=$REPO/$out ;; esac
chunk_bytes=$((chunk_mib * 1024 * 1024))
pip_python=${PIP_PYTHON:-}
if [[ -z $pip_python ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then pip_python=$REPO/.venv/bin/python; else pip_python=python3; fi
fi
pip_cmd=("$pip_python" -m pip download --no-deps --only-binary=:all: --implementation cp
         --python-version "$python_version" --disable-pip-version-check --progress-bar off)
for tag in "${platforms[@]}"; do pip_cmd+=(--platform "$tag"); done
rel_out=${out#"$REPO"/}
[[ $rel_out != /* ]] || echo "note: $out is outside the repository: a device call carries only paths inside it" >&2

echo "plan: wheels for CPython $python_version on ${platforms[*]}: ${packages[*]}"
echo "plan: into $rel_out/download, files over $chunk_mib MiB split into parts of $chunk_mib MiB,"
echo "plan: pieces grouped into $rel_out/call-N folders of at most $chunk_mib MiB, one per device call"
if [[ -n $from ]]; then
    echo "plan: the files in $from instead of a download"
else
    echo "plan: ${pip_cmd[*]} -d $rel_out/download ${packages[*]}"
fi
if (( dry_run )); then
    echo "dry run: nothing downloaded or written"
    exit 0
fi

# replace only a folder this script wrote (or an empty / new one)
if [[ -e $out ]]; then
    if [[ -f $out/PLAN.txt || -z $(ls -A "$out") ]]; then rm -rf "$out"; else
        fail "$rel_out exists and was not written by gpu_wheels.sh (no PLAN.txt): choose another --out"
    fi
fi
mkdir -p "$out/download" "$out/parts"
if [[ -n $from ]]; then
    find "$from" -maxdepth 1 -type f -exec cp {} "$out/download/" \;
else
    "${pip_cmd[@]}" -d "$out/download" "${packages[@]}"
fi

# pieces: the parts of big files (in order), then whole small files
pieces=()
manifest=$out/MANIFEST
: >"$manifest"
shopt -s nullglob
files=("$out"/download/*)
(( ${#files[@]} )) || fail "no files to carry (pip downloaded nothing, or --from is empty)"
big=() small=()
for file in "${files[@]}"; do
    if (( $(stat -c %s "$file") > chunk_bytes )); then big+=("$file"); else small+=("$file"); fi
done
for file in "${big[@]}"; do
    name=$(basename "$file")
    split -b "$chunk_bytes" -d -a 2 "$file" "$out/parts/$name.part-"
    parts=("$out/parts/$name".part-*)
    pieces+=("${parts[@]}")
    echo "$(sha256sum "$file" | cut -d' ' -f1) $(stat -c %s "$file") ${#parts[@]} $name" >>"$manifest"
done
for file in "${small[@]}"; do
    name=$(basename "$file")
    cp "$file" "$out/parts/$name"
    pieces+=("$out/parts/$name")
    echo "$(sha256sum "$file" | cut -d' ' -f1) $(stat -c %s "$file") 0 $name" >>"$manifest"
done

# pack pieces into call folders, in order, none over chunk_bytes
call=0 used=$chunk_bytes
for piece in "${pieces[@]}"; do
    size=$(stat -c %s "$piece")
    if (( used + size > chunk_bytes )); then
        call=$((call + 1)) used=0
        mkdir -p "$out/call-$call"
    fi
    mv "$piece" "$out/call-$call/"
    used=$((used + size))
done
for ((k = 1; k <= call; k++)); do cp "$manifest" "$out/call-$k/MANIFEST"; done
rm -rf "$out/parts"

{
    echo "# written by benchmarks/gpu_wheels.sh for CPython $python_version; $call device calls"
    echo "# each call: run(carry=[\"$rel_out/call-N\"], command=...); \$OUT is the folder that comes back"
    for ((k = 1; k <= call; k++)); do
        mib=$(( ($(du -sb "$out/call-$k" | cut -f1) + 1048575) / 1048576 ))
        if (( k == 1 && call > 1 )); then
            command="bash benchmarks/gpu.sh --receive $rel_out/call-$k --check"
        elif (( k < call )); then
            command="bash benchmarks/gpu.sh --receive $rel_out/call-$k"
        else
            command="bash benchmarks/gpu.sh --receive $rel_out/call-$k --run --out \"\$OUT\""
        fi
        echo "call $k ($mib MiB): carry $rel_out/call-$k ; command: $command"
    done
} >"$out/PLAN.txt"
cat "$out/PLAN.txt"
