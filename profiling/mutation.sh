#!/usr/bin/env bash
# The mutation run (issue 19; TESTING.md has the scores): mutmut on the modules where a silent
# break costs most -- skyd/privilege.py, skyd/requests/slots.py, skyd/store/,
# skyd/protocol/ ([tool.mutmut] in pyproject.toml) -- against the tests that exercise them.
# Not in CI: minutes on two cores.
#
#   profiling/mutation.sh                       # all four modules
#   profiling/mutation.sh 'skyd.privilege.*'    # one module (mutmut's mutant-name globs)
#   MUTATION_DIR=/tmp/m profiling/mutation.sh   # keep the work there (then `cd /tmp/m &&
#                                               # mutmut show NAME` for a survivor's diff)
#
# It runs in a copy of the working tree under /tmp (mutmut writes mutants/ beside the
# sources; the checkout is never touched), as root (the privilege tests act as alice).
# Needs: pip install -e '.[mutation]'.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${MUTATION_DIR:-$(mktemp -d /tmp/skyd-mut.XXXXXX)}"
mkdir -p "$work"
chmod 711 "$work"
# Tracked and untracked-but-not-ignored files, as they are now.
git -C "$root" ls-files -z --cached --others --exclude-standard \
    | (cd "$root" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) \
    | tar -C "$root" --null -T - -cf - | tar -C "$work" -xf -
cd "$work"
echo "mutation run in $work"
# mutmut's own workers: one per core (it forks one pytest per mutant).
python3 -m mutmut run --max-children "${MUTATION_JOBS:-$(nproc)}" "$@" || true
python3 -m mutmut results --all true > results.txt || true
# Per module: killed / all (timeouts count as killed). A survivor whose only change is the
# case of a string (SQL keywords and names: SQLite ignores it) is equivalent by construction
# and counted apart; TESTING.md lists the other survivors and why each is equivalent.
python3 - <<'EOF'
import collections
import re
import subprocess
from pathlib import Path

counts = collections.defaultdict(collections.Counter)
survivors = []
for line in Path("results.txt").read_text().splitlines():
    m = re.match(r"\s*((skyd\.[\w.]+?)\.(?:x_|xǁ)\S*): (.+)$", line)
    if not m:
        continue
    name, module, status = m.group(1), m.group(2), m.group(3).strip()
    if status == "survived":
        diff = subprocess.run(["python3", "-m", "mutmut", "show", name], capture_output=True,
                              text=True).stdout.splitlines()
        old = [d[1:] for d in diff if d.startswith("- ")]
        new = [d[1:] for d in diff if d.startswith("+ ")]
        if old and len(old) == len(new) and all(a != b and a.lower() == b.lower()
                                                for a, b in zip(old, new)):
            status = "case only"
        else:
            survivors.append(name)
    counts[module][status] += 1
print(f"{'module':22} {'mutants':>7} {'killed':>7} {'timeout':>7} {'case only':>9} {'survived':>8}"
      f" {'no tests':>8} {'score':>6} {'w/o case':>8}")
for module, c in sorted(counts.items()):
    total = sum(c.values()) - c["skipped"] - c["not checked"]
    killed = c["killed"] + c["timeout"] + c["segfault"] + c["suspicious"]
    rest = total - c["case only"]
    print(f"{module:22} {total:7} {c['killed']:7} {c['timeout']:7} {c['case only']:9} "
          f"{c['survived']:8} {c['no tests']:8} {100 * killed / max(total, 1):5.1f}% "
          f"{100 * killed / max(rest, 1):7.1f}%")
print("other survivors:", *survivors, sep="\n  ")
EOF
echo "a survivor's diff: cd $work && python3 -m mutmut show NAME"
