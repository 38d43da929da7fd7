#!/usr/bin/env bash
# clipblip on an NVIDIA GPU: fp32 parity and fp16 gates on CUDAExecutionProvider, the decoder on the
# device (argmax too), and timings against PyTorch eager fp32 and fp16, in one script of at most 10
# minutes. Meant for the lent GPU machine (CUDA 13, PyTorch with CUDA, no network): the onnxruntime-gpu
# wheel comes in parts prepared here by benchmarks/gpu_wheels.sh, one folder per device call.
#
#   bash benchmarks/gpu.sh --receive DIR             store one carried folder of wheel parts; nothing else
#   bash benchmarks/gpu.sh [--receive DIR] --check   say what this machine has (GPU, Python, packages, wheels)
#   bash benchmarks/gpu.sh [--receive DIR] [--run] [--out DIR] [--budget SECONDS]
#                                                    join the parts, set up, check and benchmark (the default)
#   bash benchmarks/gpu.sh --setup-only              set up and check the environment, measure nothing
#                                                    (needs no GPU: how the script is tested without one)
#
#   --out      results folder (default: $OUT when set, as on the device, else benchmarks/results/DATE-gpu)
#   --budget   wall-clock seconds for the whole run, set-up included (default 540; at most 600)
#   --store    where wheels and the environment live, outside the repository (default /tmp/clipblip-gpu,
#              or $CLIPBLIP_GPU_STORE)
#   --python   the Python that has PyTorch with CUDA (default python3, or $CLIPBLIP_GPU_PYTHON)
#
# The run writes results.json, results.md and log.txt into --out. The environment is a virtual
# environment in the store that sees the machine's packages (torch, numpy, onnx, ...) through symlinks,
# all but its CPU-only onnxruntime: clipblip refuses provider "cuda" while two ONNX Runtime
# distributions are installed. Nothing outside the store and --out is changed.
#
# Exit status: 0 done (goals met or not: see results.md); 2 usage; 3 no NVIDIA GPU on this machine
# (nothing was measured or written); 4 not ready (wheel parts missing, wrong Python, set-up failed);
# 124 the budget ran out (partial results are in --out); other: the benchmark failed (see log.txt).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
NO_GPU=3
NOT_READY=4
START=$SECONDS

store=${CLIPBLIP_GPU_STORE:-/tmp/clipblip-gpu}
python=${CLIPBLIP_GPU_PYTHON:-python3}
budget=540
out=""
mode=""
receive=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
say() { echo "gpu.sh: $*" >&2; }
bad_usage() { say "$* (see --help)"; exit 2; }
not_ready() { say "$*"; exit "$NOT_READY"; }
need_value() { [[ $# -ge 2 && -n $2 ]] || bad_usage "$1 needs a value"; }
set_mode() { [[ -z $mode || $mode == "$1" ]] || bad_usage "--$mode and --$1 exclude each other"; mode=$1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --receive) need_value "$@"; receive+=("$2"); shift 2 ;;
        --check) set_mode check; shift ;;
        --run) set_mode run; shift ;;
        --setup-only) set_mode setup-only; shift ;;
        --out) need_value "$@"; out=$2; shift 2 ;;
        --budget) need_value "$@"; budget=$2; shift 2 ;;
        --store) need_value "$@"; store=$2; shift 2 ;;
        --python) need_value "$@"; python=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) bad_usage "unknown argument '$1'" ;;
    esac
done
if ! [[ $budget =~ ^[1-9][0-9]*$ ]] || (( budget < 120 || budget > 600 )); then
    bad_usage "--budget $budget: give whole seconds from 120 to 600"
fi
if [[ -z $mode ]]; then
    if (( ${#receive[@]} )); then mode=receive; else mode=run; fi
fi
case $store in /*) ;; *) store=$PWD/$store ;; esac

# --- is there a GPU? ----------------------------------------------------------------------------------
gpu_why=""
gpu_present() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        gpu_why="nvidia-smi not found"
        return 1
    fi
    local listing status
    listing=$(nvidia-smi -L 2>&1)
    status=$?
    if (( status != 0 )); then
        gpu_why="nvidia-smi -L failed with status $status${listing:+: $(head -n 1 <<<"$listing")}"
        return 1
    fi
    if ! grep -q '^GPU [0-9]' <<<"$listing"; then
        gpu_why="nvidia-smi lists no GPU"
        return 1
    fi
    return 0
}
require_gpu() {
    gpu_present || { say "no NVIDIA GPU on this machine ($gpu_why): nothing was measured"; exit "$NO_GPU"; }
}

# --- wheels: receive the carried parts, join them ------------------------------------------------------
parts_dir=$store/parts
wheels_dir=$store/wheels
manifest=$store/MANIFEST

receive_folder() {  # copy one carried folder's pieces and its MANIFEST into the store
    local folder=$1
    [[ -d $folder && -f $folder/MANIFEST ]] \
        || not_ready "--receive $folder: not a folder written by benchmarks/gpu_wheels.sh (no MANIFEST)"
    mkdir -p "$parts_dir" || not_ready "cannot create $parts_dir"
    if [[ -f $manifest ]] && ! cmp -s "$manifest" "$folder/MANIFEST"; then
        say "the carried MANIFEST differs from the one in $store: starting the store afresh"
        rm -rf "$parts_dir" "$wheels_dir" "$store/env" "$store"/mirror-*
        mkdir -p "$parts_dir"
    fi
    cp "$folder/MANIFEST" "$manifest" || not_ready "cannot write $manifest"
    local piece
    for piece in "$folder"/*; do
        [[ $(basename "$piece") == MANIFEST ]] && continue
        cp "$piece" "$parts_dir/" || not_ready "cannot copy $piece into $parts_dir"
    done
    say "received $folder into $parts_dir"
}

missing_pieces() {  # print the pieces that are neither joined nor received; empty when all are here
    local sha size parts name k
    while read -r sha size parts name; do
        [[ -f $wheels_dir/$name ]] && continue
        if (( parts == 0 )); then
            [[ -f $parts_dir/$name ]] || echo "$name"
        else
            for ((k = 0; k < parts; k++)); do
                printf -v piece '%s.part-%02d' "$name" "$k"
                [[ -f $parts_dir/$piece ]] || echo "$piece"
            done
        fi
    done <"$manifest"
}

join_wheels() {  # every wheel of the MANIFEST in $wheels_dir, checked against its sha256
    [[ -f $manifest ]] || not_ready "no wheels in $store: carry the folders that benchmarks/gpu_wheels.sh wrote, with --receive"
    local missing
    missing=$(missing_pieces)
    [[ -z $missing ]] || not_ready "wheel parts still missing in $store (carry their call-N folders with --receive): $(tr '\n' ' ' <<<"$missing")"
    mkdir -p "$wheels_dir"
    local sha size parts name
    while read -r sha size parts name; do
        if [[ -f $wheels_dir/$name ]] && [[ $(sha256sum "$wheels_dir/$name" | cut -d' ' -f1) == "$sha" ]]; then
            continue
        fi
        if (( parts == 0 )); then
            cp "$parts_dir/$name" "$wheels_dir/$name.tmp"
        else
            cat "$parts_dir/$name".part-* >"$wheels_dir/$name.tmp"
        fi
        if [[ $(sha256sum "$wheels_dir/$name.tmp" | cut -d' ' -f1) != "$sha" ]]; then
            rm -f "$wheels_dir/$name.tmp"
            not_ready "$name: joined pieces do not match its sha256 (a part is damaged or from another run)"
        fi
        mv "$wheels_dir/$name.tmp" "$wheels_dir/$name"
        say "joined $name ($((size / 1048576)) MiB)"
    done <"$manifest"
}

python_tag() { "$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null; }

python_tag_problem() {  # says why the wheels do not fit this Python; nothing when they do
    local tag name
    if ! tag=$(python_tag); then
        echo "$python does not run: give the Python that has PyTorch with --python"
        return
    fi
    while read -r _ _ _ name; do
        if [[ $name =~ -(cp[0-9]+)-(cp[0-9]+|abi3)- && ${BASH_REMATCH[1]} != "$tag" ]]; then
            echo "$name is for ${BASH_REMATCH[1]} but $python is $tag: prepare the wheels with" \
                "'bash benchmarks/gpu_wheels.sh --python ${tag:2:1}.${tag:3}'"
            return
        fi
    done <"$manifest"
}

check_python_tag() {
    local problem
    problem=$(python_tag_problem)
    [[ -z $problem ]] || not_ready "$problem"
}

# --- the environment -----------------------------------------------------------------------------------
env_dir=$store/env
env_python=$env_dir/bin/python

mirror_site_packages() {  # symlink mirrors of the Python's site-packages, without ONNX Runtime
    local dirs dir entry name i=0
    mapfile -t dirs < <("$python" - <<'EOF'
import os, site
dirs = list(site.getsitepackages())
user = site.getusersitepackages()
if site.ENABLE_USER_SITE and os.path.isdir(user):
    dirs.append(user)
seen = set()
for d in dirs:
    if os.path.isdir(d) and os.path.realpath(d) not in seen:
        seen.add(os.path.realpath(d))
        print(d)
EOF
)
    (( ${#dirs[@]} )) || not_ready "$python has no site-packages folder"
    rm -rf "$store"/mirror-*
    mirrors=()
    for dir in "${dirs[@]}"; do
        mkdir -p "$store/mirror-$i"
        for entry in "$dir"/*; do
            name=$(basename "$entry")
            case $name in  # every ONNX Runtime distribution that clipblip counts, and their module
                onnxruntime|onnxruntime-*.dist-info|onnxruntime-*.egg-info|onnxruntime_gpu-*|onnxruntime_openvino-*|onnxruntime_directml-*)
                    say "hiding $entry from the environment"
                    continue ;;
            esac
            ln -s "$entry" "$store/mirror-$i/$name"
        done
        mirrors+=("$store/mirror-$i")
        i=$((i + 1))
    done
}

pip=()
purelib=""
find_pip() {  # the machine's pip, run for the environment's Python
    if "$env_python" -m pip --version >/dev/null 2>&1; then
        pip=("$env_python" -m pip)  # through the mirror
    elif "$python" -m pip --python "$env_python" --version >/dev/null 2>&1; then
        pip=("$python" -m pip --python "$env_python")
    else
        pip=()
        say "no pip here: wheels will be unpacked as they are, without their dependencies"
    fi
}

install_wheel() {  # offline, into the environment; dependencies from the machine (or the store)
    local wheel=$1
    shift
    if (( ${#pip[@]} )); then
        "${pip[@]}" install --no-index --find-links "$wheels_dir" --no-cache-dir --no-compile \
            --disable-pip-version-check --no-warn-script-location --quiet "$@" "$wheel"
    else  # a wheel is a zip of what goes into site-packages (those we carry have no .data folder)
        "$env_python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
            "$wheel" "$purelib"
    fi
}

setup_env() {
    local stamp ready=$env_dir/.clipblip-ready
    stamp="$(sha256sum "$manifest" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.executable)')"
    if [[ -x $env_python && -f $ready && $(cat "$ready") == "$stamp" ]]; then
        say "reusing the environment in $env_dir"
        return 0
    fi
    say "setting up $env_dir (the machine's packages through symlinks, onnxruntime hidden)"
    rm -rf "$env_dir"
    mirror_site_packages
    "$python" -m venv --without-pip "$env_dir" || not_ready "$python -m venv failed"
    purelib=$("$env_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
        || not_ready "the new environment's Python does not run"
    "$env_python" - "$purelib/zz-clipblip-gpu-mirror.pth" "${mirrors[@]}" <<'EOF' || not_ready "cannot write the .pth file"
import sys
path, mirrors = sys.argv[1], sys.argv[2:]
with open(path, "w") as f:  # site dirs: their own .pth files (editable installs, namespace packages) apply
    f.write("".join(f"import site; site.addsitedir({m!r})\n" for m in mirrors))
EOF
    find_pip
    local name names
    mapfile -t names < <(awk '$4 ~ /^onnxruntime_gpu-/ { print $4 }' "$manifest")
    for name in "${names[@]}"; do  # the one that must go in
        say "installing $name"
        install_wheel "$wheels_dir/$name" || { say "retrying $name without its dependencies";
            install_wheel "$wheels_dir/$name" --no-deps; } || not_ready "cannot install $name"
    done
    mapfile -t names < <(awk '$4 !~ /^onnxruntime_gpu-/ { print $4 }' "$manifest")
    for name in "${names[@]}"; do  # newer versions, if they fit
        say "installing $name"
        install_wheel "$wheels_dir/$name" \
            || say "cannot install $name offline (its needs are not met here): keeping the machine's own version"
    done
    echo "$stamp" >"$ready"
}

pythonpath=$REPO${PYTHONPATH:+:$PYTHONPATH}  # clipblip from this checkout, not installed

probe() {  # imports, one ONNX Runtime distribution, and (with a GPU) a session that really runs on CUDA
    PYTHONPATH=$pythonpath "$env_python" "$HERE/gpu.py" --probe "$@"
}

output_dir() {
    if [[ -n $out ]]; then echo "$out"
    elif [[ -n ${OUT:-} ]]; then echo "$OUT"
    else echo "$REPO/benchmarks/results/$(date +%F)-gpu"
    fi
}

check_report() {
    echo "== GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n 1
    echo "== Python: $(command -v "$python") ($("$python" -V 2>&1))"
    "$python" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "onnxruntime", "onnxruntime-gpu", "transformers", "tokenizers", "onnx", "safetensors",
             "numpy", "pillow", "huggingface-hub", "regex", "matplotlib", "pip"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
try:
    import torch
    print(f"torch CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
except Exception as e:
    print(f"torch does not import: {e}")
EOF
    echo "== wheels in $store"
    if [[ -f $manifest ]]; then
        cat "$manifest"
        local missing
        missing=$(missing_pieces)
        if [[ -z $missing ]]; then echo "all pieces are here"; else echo "missing: $(tr '\n' ' ' <<<"$missing")"; fi
        local problem
        problem=$(python_tag_problem)
        echo "${problem:-the wheels fit $python}"
    else
        echo "none received yet"
    fi
}

# --- the modes -----------------------------------------------------------------------------------------
case $mode in run|check) require_gpu ;; esac  # before anything is written
for folder in "${receive[@]}"; do receive_folder "$folder"; done

case $mode in
    receive)
        missing=$(missing_pieces)
        if [[ -n $missing ]]; then
            say "still to carry: $(tr '\n' ' ' <<<"$missing")"
            exit 0
        fi
        join_wheels
        say "all wheels are in $wheels_dir"
        exit 0 ;;
    check)
        check_report
        exit 0 ;;
    setup-only)
        join_wheels
        check_python_tag
        setup_env
        if gpu_present; then probe; else say "no GPU here ($gpu_why): CUDA sessions not tried"; probe --no-cuda; fi
        status=$?
        (( status == 0 )) || not_ready "the environment in $env_dir fails its check"
        say "environment ready in $env_dir ($((SECONDS - START)) s)"
        exit 0 ;;
    run)
        join_wheels
        check_python_tag
        setup_env
        # CLIPBLIP_GPU_PY_ARGS: extra gpu.py arguments; "--device cpu --size tiny --quick" (with a stand-in
        # nvidia-smi) runs this path on a machine without a GPU, to test the script itself
        read -r -a extra <<<"${CLIPBLIP_GPU_PY_ARGS:-}"
        if [[ " ${extra[*]} " == *" --device cpu "* ]]; then probe --no-cuda; else probe; fi \
            || not_ready "the environment in $env_dir fails its check"
        results=$(output_dir)
        mkdir -p "$results" || not_ready "cannot create $results"
        left=$((budget - (SECONDS - START)))
        (( left >= 90 )) || { say "only $left s of the $budget s budget left after set-up: nothing measured"; exit 124; }
        say "benchmarking for at most $left s; results into $results"
        # gpu.py keeps to its own budget and writes results after each stage; timeout is the backstop
        PYTHONPATH=$pythonpath PYTHONUNBUFFERED=1 timeout --kill-after=10 "$left" \
            "$env_python" "$HERE/gpu.py" --out "$results" --budget $((left - 15)) --models "$store/models" "${extra[@]}" 2>&1 \
            | tee "$results/log.txt"
        status=${PIPESTATUS[0]}
        if (( status == 124 || status == 137 )); then
            say "stopped at the $budget s budget: partial results in $results"
            exit 124
        fi
        (( status == 0 )) || say "gpu.py failed with status $status: see $results/log.txt"
        exit "$status" ;;
esac
