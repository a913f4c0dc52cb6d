"""``nad bench``: a grid of attacks x defenses x clean ratios x seeds from one YAML file, resumable and shardable.

``load_bench`` reads a preset or file into a ``BenchConfig``; ``run_bench`` runs the cells that have no result
yet into an output folder and writes ``results.jsonl``, ``results.md`` and ``report.html`` there.
"""

from nad.bench.config import BenchConfig, Study, load_bench
from nad.bench.grid import Cell, ModelSpec, Shard, expand
from nad.bench.run import Outcome, run_bench

__all__ = ["BenchConfig", "Cell", "ModelSpec", "Outcome", "Shard", "Study", "expand", "load_bench", "run_bench"]
