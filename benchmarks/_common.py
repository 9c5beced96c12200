"""Helpers shared by the benchmark scripts.

* :func:`percentile` of a sample, :func:`markdown_table` to show results;
* :func:`replace_readme_section` to publish a table between the markers
  ``<!-- bench:KEY:start -->`` and ``<!-- bench:KEY:end -->`` of a README;
* :func:`machine_info` to record what the numbers were measured on;
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "machine_info",
    "markdown_table",
    "percentile",
    "replace_readme_section",
]


def percentile(values: Iterable[float], q: float) -> float:
    """Return the ``q``-th percentile (0 to 100) of ``values``.

    Linear interpolation between the two nearest ranks, as NumPy's default
    method: ``percentile([1, 2, 3, 4], 50) == 2.5``. Raises :exc:`ValueError`
    for an empty sample or a ``q`` outside 0-100.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of an empty sample")
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def markdown_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    align: str | None = None,
) -> str:
    """Render a GitHub-flavoured Markdown table, padded to line up as text.

    Cells are converted with :func:`str` (format numbers before passing them
    in). ``align`` has one letter per column, ``l``, ``r`` or ``c``; when
    omitted, columns whose cells are all numbers (or empty) are right-aligned
    and the others left-aligned. ``|`` inside a cell is escaped.
    """
    table = [[_cell(value) for value in row] for row in rows]
    for number, row in enumerate(table, 1):
        if len(row) != len(headers):
            raise ValueError(f"row {number} has {len(row)} cells, expected {len(headers)}")
    if align is None:
        align = "".join("r" if table and all(_numeric(row[i]) for row in table) else "l" for i in range(len(headers)))
    if len(align) != len(headers) or set(align) - set("lrc"):
        raise ValueError(f"align must be {len(headers)} letters of l, r, c; got {align!r}")
    header_cells = [_cell(h) for h in headers]
    widths = [max(3, len(header_cells[i]), *(len(row[i]) for row in table)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(w) if a == "r" else cell.center(w) if a == "c" else cell.ljust(w)
            for cell, w, a in zip(cells, widths, align, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rules = {
        "l": lambda w: ":" + "-" * (w - 1),
        "r": lambda w: "-" * (w - 1) + ":",
        "c": lambda w: ":" + "-" * (w - 2) + ":",
    }
    separator = [rules[a](w) for a, w in zip(align, widths, strict=True)]
    return "\n".join([line(header_cells), line(separator), *(line(row) for row in table)])


def replace_readme_section(path: str | os.PathLike[str], key: str, text: str) -> None:
    """Replace what lies between the ``bench:KEY`` markers in ``path``.

    The file must contain ``<!-- bench:KEY:start -->`` followed later by
    ``<!-- bench:KEY:end -->``; both markers stay, and ``text`` goes between
    them on lines of its own. Everything else in the file is left as it was.
    Raises :exc:`ValueError` if the markers are missing or out of order.
    """
    file = Path(path)
    content = file.read_text(encoding="utf-8")
    start = f"<!-- bench:{key}:start -->"
    end = f"<!-- bench:{key}:end -->"
    begin = content.find(start)
    finish = content.find(end, begin + len(start)) if begin >= 0 else -1
    if begin < 0 or finish < 0:
        raise ValueError(f"{file}: markers {start} ... {end} not found")
    updated = content[: begin + len(start)] + "\n" + text.strip("\n") + "\n" + content[finish:]
    if updated != content:
        file.write_text(updated, encoding="utf-8")


def machine_info(packages: Sequence[str] = ()) -> dict[str, str]:
    """Describe this machine and interpreter, for the record of a benchmark.

    Keys: ``cpu`` (model name from ``/proc/cpuinfo``, else the platform's
    answer), ``cores`` (logical CPUs), ``cores_usable`` (CPUs this process
    may run on), ``os``, ``python`` (version and implementation), and one
    key per distribution named in ``packages`` with its installed version
    (``"not installed"`` when missing).
    """
    cores = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS and Windows
        usable = cores
    info = {
        "cpu": _cpu_model(),
        "cores": str(cores),
        "cores_usable": str(usable),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
    }
    for package in packages:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def _cpu_model() -> str:
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


_NUMBER = re.compile(r"^[-+]?[\d,_]*\.?\d+(?:[eE][-+]?\d+)?[%x]?$")


def _numeric(cell: str) -> bool:
    return cell == "" or bool(_NUMBER.match(cell.strip()))


def ratio_text(value: float, target: float) -> str:
    """``value`` as ``0.72x``; with a third decimal when two would show the
    target itself, so that "0.50x, not met" never appears for 0.498."""
    digits = 3 if round(value, 2) == target and value != target else 2
    return f"{value:.{digits}f}x"
