"""Start-up cost of the package: ``splitldm --help`` and ``import splitldm`` against their references.

Each command runs in a fresh interpreter, interleaved with its reference, several repeats; the medians
are reported with their ratios (these machines are noisy: compare side by side, in the same run):

* ``splitldm --help`` (the console script) vs ``python -c pass`` (the interpreter's own start-up);
  target: under 1 s;
* ``python -c "import splitldm"`` vs ``python -c pass``: the lazy public API costs almost nothing;
* ``python -c "import splitldm; splitldm.SplitPipeline"`` vs ``python -c "import diffusers"``: the first
  use of a public name costs what importing diffusers costs.

    python bench/startup.py [--quick] [--repeats 7]

The last line printed is one JSON object with the figures (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd="/", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats of the light cases, 1 of the heavy ones")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    if repeats < 1:
        raise SystemExit("--repeats: expected at least 1")
    script = shutil.which("splitldm") or os.path.join(os.path.dirname(sys.executable), "splitldm")
    py = sys.executable
    cases = {
        "python_pass": [py, "-c", "pass"],
        "help": [script, "--help"],
        "import_splitldm": [py, "-c", "import splitldm"],
        "first_use": [py, "-c", "import splitldm; splitldm.SplitPipeline"],
        "import_diffusers": [py, "-c", "import diffusers"],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    heavy = {"first_use", "import_diffusers"}
    for i in range(repeats):
        for name, cmd in cases.items():  # interleaved: load changes hit every case alike
            if args.quick and name in heavy and i > 0:
                continue
            times[name].append(_time(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "help_s": round(med["help"], 3),
        "python_pass_s": round(med["python_pass"], 3),
        "import_splitldm_s": round(med["import_splitldm"], 3),
        "first_use_s": round(med["first_use"], 3),
        "import_diffusers_s": round(med["import_diffusers"], 3),
        "help_vs_python": round(med["help"] / med["python_pass"], 2),
        "import_vs_python": round(med["import_splitldm"] / med["python_pass"], 2),
        "first_use_vs_diffusers": round(med["first_use"] / med["import_diffusers"], 2),
        "help_under_1s": med["help"] < 1.0,
        "repeats": repeats,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
