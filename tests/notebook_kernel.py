"""Run a notebook's code cells, in order, in one namespace, as a kernel would: ``python notebook_kernel.py NB``.

A script rather than ``python -c``: PySpark takes a ``-c`` main module for its doctest runner and exits
(status 0) when an ML module is first imported. Prints the segment stage's agreement with the planted
archetypes last, for the test to check.
"""

import json
import sys
from pathlib import Path

cells = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))["cells"]
code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
namespace: dict = {}
exec(compile(code, sys.argv[1], "exec"), namespace)
print("truth_adjusted_rand_index", namespace["result"].stages["segment"].metrics["truth_adjusted_rand_index"])
