#!/usr/bin/env bash
# asv history of this machine ("fastppo-2core"): the reduced benchmark set of
# benchmarks/RESULTS.md ("Issue 12 target 6: asv history"), one build per commit.
#
#   bash benchmarks/history.sh                        # the commits in history_commits.txt
#   bash benchmarks/history.sh HEAD~3..HEAD           # a range (git rev-list --first-parent)
#   bash benchmarks/history.sh HASHFILE:my_list.txt --skip-existing   # extra asv run flags
#   bash benchmarks/history.sh publish                # HTML in benchmarks/html/ (ignored)
#
# Results land in benchmarks/results/fastppo-2core/ (tracked); compare with
#   cd benchmarks && asv compare --machine fastppo-2core e2f1953 d58f311
set -euo pipefail
cd "$(dirname "$0")"
range=${1:-HASHFILE:history_commits.txt}
shift $(( $# > 0 ? 1 : 0 ))

# .asv-history.conf.json (ignored) is asv.conf.json with two changes for this script:
# - "branches": asv publish draws a line per branch along its first parents, so the
#   commits of merged feature branches would be left out of the graphs ("Couldn't find
#   ... in branches"); each listed commit that is not a first parent of another listed
#   commit, or of HEAD, becomes a branch;
# - the wheel is built without build isolation (the environment has setuptools, wheel,
#   Cython and numpy) and through ccache when it is installed: the Cython modules a commit
#   leaves unchanged come from the cache (same compiler, flags and generated C).
python - <<'PY'
import json
import subprocess

from asv import util

def first_parents(rev):
    out = subprocess.run(["git", "rev-list", "--first-parent", rev], check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())

commits = open("history_commits.txt").read().split()
lines = {c: first_parents(c) for c in commits + ["HEAD"]}
tips = [c for c in commits
        if not any(c in lines[o] for o in commits + ["HEAD"] if o != c)]
conf = util.load_json("asv.conf.json", js_comments=True)
conf["branches"] = ["HEAD"] + tips
conf["build_command"] = ["python -m build --wheel --no-isolation -o {build_cache_dir} {build_dir}"]
with open(".asv-history.conf.json", "w") as f:
    json.dump(conf, f, indent=4)
PY
if [[ $range == publish ]]; then
    exec asv --config .asv-history.conf.json publish "$@"
fi
if command -v ccache > /dev/null; then
    # cc and gcc first on PATH are ccache (it runs the next compiler of that name): not
    # CC="ccache gcc", which setup.py's probes would run as one program name, fail, and
    # build without -march=native and OpenMP
    wrap=$(mktemp -d)
    for name in cc gcc; do ln -s "$(command -v ccache)" "$wrap/$name"; done
    export PATH="$wrap:$PATH"
    export CCACHE_DIR=${CCACHE_DIR:-$PWD/env/ccache}
fi

# register the machine name once (asv keeps it in ~/.asv-machine.json; `asv machine --yes
# --machine NAME` would store the name alone, without os/cpu/ram)
python - <<'PY'
from asv.machine import Machine, MachineCollection
try:
    MachineCollection.load("fastppo-2core")
except Exception:
    info = Machine.get_defaults()
    info["machine"] = "fastppo-2core"
    MachineCollection.save("fastppo-2core", info)
PY

export FASTPPO_ASV_SLOW=1  # unlocks the 50,000-state parameters selected below
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$(mktemp -d)}
exec nice -n 19 asv --config .asv-history.conf.json run --machine fastppo-2core --show-stderr \
    -b "PPOUpdateSuite\.time_ppo_update\('(numba|cython)', 50000, '(none|forward-kl)', 1\)" \
    -b "(PPOStepSuite|SolveSuite)\.\w+\('numba', 10000, 'garnet', 1\)" \
    -b "KernelSuite\.time_kernel\('bellman_(matvec|rmatvec|products)', '(numba|cython)', 50000, 'garnet', 1\)" \
    "$range" "$@"
