"""The JSON report a benchmark script writes with ``--out``: machine, date, load and its results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def write_report(out: Path | None, results: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The report (machine, date, load average, ``extra``, ``results``), written to ``out``
    as JSON when given; returned either way."""
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor()}",
        "date": time.strftime("%Y-%m-%d"),
        "load_average": os.getloadavg(),
        **extra,
        "results": results,
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report
