"""Markdown rows for experiments/BENCHMARKS.md from the JSONs of experiments/latency_bench.sh.

    python experiments/latency_table.py <out_dir>

Prints two tables: batch-1 / batch-N latency (bare network eager and CUDA graphs, flmk's inference path eager
and compiled, the ratio against issue 18's goal) and training throughput without and with CUDA graphs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path) -> list[tuple[str, dict]]:
    runs = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "latency" in data or "runs" in data:
            runs.append((path.stem, data))
    return runs


def latency_rows(runs: list[tuple[str, dict]]) -> list[str]:
    out = ["| model | crop | batch | net eager (ms) | net CUDA graphs (ms) | flmk eager (ms) | flmk compiled (ms) "
           "| flmk compiled, inputs on the GPU (ms) | flmk compiled / net CUDA graphs | goal <= 1.25 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs:
        lat = r.get("latency")
        if not lat:
            continue
        for n in lat["batch_sizes"]:
            row = lat[f"b{n}"]
            out.append(f"| {name} | {r['crop_size']} | {n} | {row['net_eager_ms']:.2f} | {row['net_compiled_ms']:.2f} "
                       f"| {row['flmk_eager_ms']:.2f} | {row['flmk_compiled_ms']:.2f} "
                       f"| {row.get('flmk_compiled_on_device_ms', float('nan')):.2f} | {row['ratio']:.2f} "
                       f"| {'met' if row['meets_goal'] else 'not met'} |")
    return out


def training_rows(runs: list[tuple[str, dict]]) -> list[str]:
    out = ["| model | crop | batch | precision | train img/s eager | train img/s compiled | speed-up |",
           "|---|---|---|---|---|---|---|"]
    for name, r in runs:
        by = {(x["precision"], x["compile"]): x for x in r.get("runs", [])}
        for precision in dict.fromkeys(p for p, _ in by):
            eager, compiled = by.get((precision, False)), by.get((precision, True))
            if eager is None or compiled is None:
                continue
            e, c = eager["train_img_s_memory"], compiled["train_img_s_memory"]
            out.append(f"| {name} | {r['crop_size']} | {r['batch_size']} | {precision} | {e:.0f} | {c:.0f} | {c / e:.2f}x |")
    return out


def main(folder: str) -> None:
    runs = load(Path(folder))
    if not runs:
        raise SystemExit(f"{folder}: no flmk.bench JSON files")
    first = runs[0][1]
    print(f"Device: {first['device']}, torch {first['torch']}\n")
    print("\n".join(latency_rows(runs)))
    print()
    print("\n".join(training_rows(runs)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python experiments/latency_table.py <out_dir of experiments/latency_bench.sh>")
    main(sys.argv[1])
