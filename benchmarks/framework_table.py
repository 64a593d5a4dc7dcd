"""The native framework modules' table (docs/guides/deploy.md), generated from the tests that
measure it.

Runs the tutorial-style tests of ``tests/backends/frameworks/`` against the real packages and prints
one markdown row per framework: for each habit, how many of its test cases pass (over the zoo SNNs:
lenet, vgg11, resnet20 in both resets, per-layer and per-channel thresholds, v0 = 0 and 0.5, and
wrn16-4 with the compile defaults).

    .venv/bin/python benchmarks/framework_table.py      # a few minutes on 2 cores
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("norse", "snntorch", "spikingjelly", "sinabs")
# column -> (test file, test function, framework given by: a parameter or the function's name)
COLUMNS = {
    "its own step loop, reset and layouts: the runtime's logits and spike counts": (
        "test_framework_habits.py", {
        "snntorch": "test_snntorch_step_loop_with_utils_reset",
        "spikingjelly": "test_spikingjelly_both_step_modes_with_reset_net",
        "sinabs": "test_sinabs_batch_time_layouts_with_reset_states",
        "norse": "test_norse_time_first_sequences_and_cells"}),
    "dtype, state_dict, torch.save": ("test_framework_habits.py",
                                      "test_dtype_state_dict_and_torch_save"),
    "gradient = runtime's BPTT": ("test_framework_habits.py",
                                  "test_gradients_are_the_runtimes_bptt_through_the_finetuning_surrogate"),
    "20 training steps keep accuracy": ("test_framework_habits.py",
                                        "test_twenty_training_steps_in_the_framework_keep_the_accuracy"),
}


def main() -> int:
    tests = ROOT / "tests" / "backends" / "frameworks"
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junit-xml={report}", str(tests / "test_framework_habits.py")],
                       cwd=ROOT, check=False, stdout=sys.stderr)  # stdout: the table only
        cases = ElementTree.parse(report).getroot().iter("testcase")
        outcome: dict[tuple[str, str], list[bool]] = defaultdict(list)
        for case in cases:
            name = case.get("name", "")
            function, _, params = name.partition("[")
            passed = not any(child.tag in ("failure", "error", "skipped") for child in case)
            framework = next((f for f in FRAMEWORKS if re.search(rf"\b{f}\b", params)), None)
            outcome[(function, framework or "")].append(passed)
    print("| framework | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for framework in FRAMEWORKS:
        cells = []
        for _, functions in COLUMNS.values():
            function = functions[framework] if isinstance(functions, dict) else functions
            results = outcome.get((function, framework)) or outcome.get((function, ""), [])
            passed = sum(results)
            cells.append("not run" if not results else
                         f"yes ({passed}/{len(results)})" if passed == len(results)
                         else f"**no** ({passed}/{len(results)})")
        print(f"| {framework} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
