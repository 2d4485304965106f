#!/usr/bin/env bash
# One prepared, unattended GPU check (issue 30; docs/device-check.md):
#
#   bench/device_check.sh OUT_DIR           # on an NVIDIA machine: finishes inside 8 minutes on an H100
#   bench/device_check.sh OUT_DIR --smoke   # the same parts on the CPU at tiny sizes (CI)
#
# 1. installs latentfuse from this tree, and the wheels of bench/device_wheels.txt found in .device_wheels/,
#    into a throwaway --target folder, with --no-deps: the machine's own torch is used and never touched;
# 2. runs the parts of latentfuse.bench.device_check (machine, latency, aoti, tensorrt, cpp), each in its
#    own process under `timeout`, within the run's budget: a part that hangs loses only its unfinished rows;
# 3. after every part writes OUT_DIR/device_check.json and device_check.md (atomically); the whole
#    output is also in OUT_DIR/device_check.log.
#
# Environment: PYTHON (default python3: on the GPU image the one that holds torch), DEVICE_CHECK_BUDGET_S
# (the whole run's seconds: 450 by default, 210 with --smoke), DEVICE_CHECK_AOTI_GRAPHS (docs/device-check.md),
# DEVICE_CHECK_KEEP_WORK=1 (keep the work folder, whose path the log's first line gives), LATENTFUSE_COMMIT
# (the commit a tree copied without .git comes from, for the report).
set -uo pipefail

usage="usage: bench/device_check.sh OUT_DIR [--smoke]"
out="" smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "device_check.sh: unknown option $arg ($usage)" >&2; exit 2 ;;
    *) if [ -n "$out" ]; then echo "device_check.sh: one OUT_DIR only, got '$out' and '$arg' ($usage)" >&2; exit 2; fi
       out="$arg" ;;
  esac
done
[ -n "$out" ] || { echo "device_check.sh: OUT_DIR is missing ($usage)" >&2; exit 2; }
py="${PYTHON:-python3}"
command -v "$py" >/dev/null 2>&1 || { echo "device_check.sh: no Python interpreter '$py' (set PYTHON)" >&2; exit 2; }
budget="${DEVICE_CHECK_BUDGET_S:-$([ "$smoke" = 1 ] && echo 210 || echo 450)}"
case "$budget" in ''|*[!0-9]*) echo "device_check.sh: DEVICE_CHECK_BUDGET_S must be whole seconds, got '$budget'" >&2; exit 2 ;; esac
mkdir -p "$out" 2>/dev/null && [ -w "$out" ] || { echo "device_check.sh: cannot write to OUT_DIR '$out'" >&2; exit 2; }
out="$(cd "$out" && pwd)"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
started=$(date +%s)
deadline=$((started + budget))
work="$(mktemp -d "${TMPDIR:-/tmp}/latentfuse-device-check.XXXXXX")"
site="$work/site"
# the work folder (installed package, packages, builds) goes when the run ends, unless asked to keep it
[ "${DEVICE_CHECK_KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
smoke_flag=()
[ "$smoke" = 1 ] && smoke_flag=(--smoke)
exec > >(tee "$out/device_check.log") 2>&1
say() { echo "[device_check.sh $(date +%H:%M:%S)] $*"; }
say "$([ "$smoke" = 1 ] && echo 'smoke run (CPU, tiny sizes)' || echo 'GPU run'), budget ${budget} s, out $out, work $work"

fail_install() {  # nothing can be measured: a minimal device_check.json that says why, then stop
  say "stopped: $1"
  "$py" - "$out/device_check.json" "$1" "$budget" <<'EOF'
import json, sys
path, reason, budget = sys.argv[1:]
json.dump({"schema": "latentfuse.device_check/1", "status": "failed", "reason": reason, "budget_s": float(budget),
           "parts": {}, "rows": []}, open(path, "w"), indent=1)
EOF
  exit 1
}
if [ "$smoke" = 0 ] && ! gpu="$("$py" -c 'import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0))' 2>/dev/null)"; then
  # eight minutes of parts that each fail the same way tell nothing more than this line
  fail_install "torch ($("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'not importable')) sees no CUDA GPU here: run on a GPU machine, or add --smoke for the CPU check"
fi
[ "$smoke" = 1 ] || say "GPU: $gpu"

# ------------------------------------------------------------------------------ 1. install
t0=$(date +%s)
wheels_dir="$repo/.device_wheels"
runtime_wheels=() build_wheels=() missing=()
section=runtime
while IFS= read -r line; do
  case "$line" in "# build:"*) section=build ;; esac
  spec="${line%%#*}"; spec="$(echo "$spec" | tr -d '[:space:]')"
  [ -n "$spec" ] || continue
  name="${spec%%==*}" version="${spec#*==}"
  file="$(find "$wheels_dir" -maxdepth 1 -iname "$(echo "$name" | tr '.-' '__')-${version}-*.whl" 2>/dev/null | head -n 1)"
  if [ -z "$file" ]; then missing+=("$spec"); continue; fi
  if [ "$section" = build ]; then build_wheels+=("$file"); else runtime_wheels+=("$file"); fi
done < "$repo/bench/device_wheels.txt"
if [ "${#missing[@]}" -gt 0 ]; then
  say "not in $wheels_dir: ${missing[*]} (the interpreter's own copies are used; fetch them with the command in bench/device_wheels.txt)"
fi
if [ "${#runtime_wheels[@]}" -gt 0 ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" \
    "${runtime_wheels[@]}" || fail_install "pip could not install ${runtime_wheels[*]}"
fi
if [ "${#build_wheels[@]}" -gt 0 ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$work/build-tools" \
    "${build_wheels[@]}" || fail_install "pip could not install the build tools ${build_wheels[*]}"
fi
# build from a copy: setuptools writes build/ and *.egg-info beside the sources
mkdir -p "$work/src"
tar -C "$repo" --exclude=runtime/cpp/build --exclude=__pycache__ --exclude='*.egg-info' -cf - \
  pyproject.toml README.md model runtime export calibration bench | tar -C "$work/src" -xf - \
  || fail_install "could not copy the tree from $repo"
PYTHONPATH="$work/build-tools" "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --disable-pip-version-check --target "$site" "$work/src" > "$work/pip.log" 2>&1 \
  || fail_install "pip install of the tree failed: $(grep -m1 -iE 'error' "$work/pip.log" || tail -n 1 "$work/pip.log")"
export PYTHONPATH="$site"
check="$("$py" - "$site" <<'EOF' 2>&1
import sys
import torch, diffusers, latentfuse.runtime.pipeline as p
site = sys.argv[1]
if torch.__file__.startswith(site):
    sys.exit(f"torch was imported from the throwaway folder {torch.__file__}, not the machine's")
if not p.__file__.startswith(site):
    sys.exit(f"latentfuse was imported from {p.__file__}, not from {site}")
print(f"torch {torch.__version__} from {torch.__file__}; latentfuse from {p.__file__}")
EOF
)" || fail_install "the installed package does not import: $(echo "$check" | tail -n 1)"
say "installed in $(( $(date +%s) - t0 )) s: $check"
# a copied tree has no .git: LATENTFUSE_COMMIT names the commit it was copied from
commit="${LATENTFUSE_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
"$py" - "$work/install.json" "$site" "$(( $(date +%s) - t0 ))" "$check" "${missing[*]:-}" \
  "${runtime_wheels[@]##*/}" <<'EOF'
import json, sys
path, site, seconds, check, missing, *wheels = sys.argv[1:]
json.dump({"status": "ok", "site": site, "seconds": int(seconds), "imports": check, "wheels": wheels,
           "missing_wheels": missing.split() if missing else []}, open(path, "w"), indent=1)
EOF

# ------------------------------------------------------------------------------ 2. the parts
report() {
  "$py" -m latentfuse.bench.device_check report --work "$work" --out "$out" --budget "$budget" --started "$started" \
    || say "report failed"
}
run_part() {  # NAME WANTED_SECONDS MIN_SECONDS
  local name="$1" want="$2" min="$3" left seconds rc
  left=$((deadline - $(date +%s) - 10))  # 10 s kept for the last report
  seconds=$(( want < left ? want : left ))
  if [ "$seconds" -lt "$min" ]; then
    say "part $name skipped: ${left} s of the run's budget left, it needs at least ${min} s"
    "$py" -m latentfuse.bench.device_check skip "$name" --work "$work" "${smoke_flag[@]}" \
      --reason "the run's ${budget} s budget is spent: $((left > 0 ? left : 0)) s left, the part needs at least ${min} s"
  else
    say "part $name: up to ${seconds} s"
    # the part plans with 10 s less than its hard limit, so it normally ends by itself and says why
    LATENTFUSE_COMMIT="$commit" timeout -k 10 "$seconds" "$py" -m latentfuse.bench.device_check part "$name" \
      --work "$work" --budget "$((seconds > 20 ? seconds - 10 : seconds))" --repo "$repo" "${smoke_flag[@]}"
    rc=$?
    echo "$rc" > "$work/$name.rc"
    [ "$rc" = 0 ] || say "part $name exited $rc"
  fi
  report
}
export TORCHINDUCTOR_CACHE_DIR="$work/inductor-cache"  # compile times are measured cold, and nothing lingers
if [ "$smoke" = 1 ]; then
  run_part machine 30 10; run_part latency 90 20; run_part aoti 30 10; run_part tensorrt 30 10; run_part cpp 30 10
else
  run_part machine 45 15; run_part latency 210 60; run_part aoti 240 60; run_part tensorrt 120 15; run_part cpp 300 30
fi
say "done in $(( $(date +%s) - started )) s: $out/device_check.json, $out/device_check.md"
