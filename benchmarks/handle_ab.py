"""In-process A/B of ``handle()``: another commit's handlers against this tree's, same archive.

One archive of the digits MLP is built by this tree's packaging (``--compiler``, default eager)
and unpacked twice: once with this tree's ``handlers/``, once with the handlers of ``--base``
(default: the last commit that touched ``handlers/`` before 2026-11-25, found with ``git log``),
its ``servegate.json`` given the schema-1 ``input`` too, which old handlers read. Both handlers
are loaded in this process, one torch thread, and their ``handle()`` is timed on the same request
bodies, interleaved (A B B A ...), batch 1 and batch 8. Printed per request: each side's median
CPU time and the median of the paired differences with its 10th-90th percentile range::

    PYTHONPATH=$PWD/src .venv/bin/python -m benchmarks.handle_ab [--rounds 400] [--base REV]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HANDLER_MODULES = ("tensor_classifier", "tensor_handler")
BASE_UNTIL = "2026-11-25"


def base_commit(until: str = BASE_UNTIL) -> str:
    """The last commit before ``until`` that changed ``handlers/``."""
    out = subprocess.run(["git", "log", "-1", f"--until={until}", "--format=%H", "--", "handlers"],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
    if not out:
        raise SystemExit(f"no commit touched handlers/ before {until}")
    return out


def _unpack(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(into)


def _checkout_handlers(rev: str, into: Path) -> None:
    """``handlers/*.py`` of ``rev`` in ``into``, instead of the archive's own copies."""
    for own in (REPO / "handlers").glob("*.py"):
        (into / own.name).unlink(missing_ok=True)
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "handlers/"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=REPO, check=True,
                                  capture_output=True, text=True).stdout
            (into / Path(name).name).write_text(text)


def _load(model_dir: Path) -> Any:
    """The archive's handler, initialised from ``model_dir``; its modules are then dropped from
    ``sys.modules`` so that the other side imports its own (each class keeps its own)."""
    from servegate.harness import HarnessContext

    before = set(sys.modules)
    sys.path.insert(0, str(model_dir))
    try:
        name = next(m for m in HANDLER_MODULES if (model_dir / f"{m}.py").exists())
        module = importlib.import_module(name)
        cls = next(v for v in vars(module).values()
                   if isinstance(v, type) and v.__module__ == name and hasattr(v, "handle"))
        handler = cls()
        handler.initialize(HarnessContext(str(model_dir), "digits", {}))
    finally:
        sys.path.remove(str(model_dir))
        for key in set(sys.modules) - before:
            if key.startswith("sg_") or key in HANDLER_MODULES:
                del sys.modules[key]
    return handler


def _time_batch(handler: Any, data: list[dict[str, bytes]], calls: int) -> float:
    """CPU µs per request over ``calls`` calls of ``handle(data)``."""
    from servegate.harness import HarnessContext

    context = HarnessContext(".", "digits", {})
    start = time.thread_time_ns()
    for _ in range(calls):
        handler.handle(data, context)
    elapsed = time.thread_time_ns() - start
    if context.statuses:
        raise RuntimeError(f"a benchmark request failed: {context.statuses}")
    return elapsed / 1e3 / calls / len(data)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(base: str, rounds: int, calls: int, compiler: str) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from servegate.config import BatchingConfig
    from servegate.harness import HarnessContext
    from servegate.packaging.builder import package_model
    from servegate.sources.digits import builtin_digits

    torch.set_num_threads(1)
    digits = builtin_digits(epochs=2)
    rows = digits.eval_x[:8]
    results = []
    with tempfile.TemporaryDirectory(prefix="handle-ab-") as tmp:
        archive = package_model(digits, name="digits", version="1", compiler=compiler,
                                batching=BatchingConfig(batch_size=8), output_dir=Path(tmp) / "store")
        new_dir, old_dir = Path(tmp) / "new", Path(tmp) / "old"
        _unpack(archive, new_dir)
        _unpack(archive, old_dir)
        _checkout_handlers(base, old_dir)
        spec = json.loads((old_dir / "servegate.json").read_text())
        first = spec["inputs"][0]
        spec["input"] = {k: first[k] for k in ("shape", "dtype", "allow_non_finite") if k in first}
        (old_dir / "servegate.json").write_text(json.dumps(spec))
        if not (old_dir / "tensor_classifier.py").exists():
            raise SystemExit(f"{base} has no tensor_classifier.py: pick a commit of that era")
        shutil.copy(new_dir / "MAR-INF" / "MANIFEST.json", old_dir / "MAR-INF" / "MANIFEST.json")
        sides = {"base": _load(old_dir), "ours": _load(new_dir)}
        for batch in (1, 8):
            data = [{"body": json.dumps({"inputs": r.tolist()}).encode()} for r in rows[:batch]]
            for handler in sides.values():  # warm-up, and both answer the same
                _time_batch(handler, data, 20)
            got = [np.array([json.loads(a)["outputs"]["probabilities"]
                             for a in h.handle(data, HarnessContext(".", "digits", {}))])
                   for h in sides.values()]
            if np.abs(got[0] - got[1]).max() > 1e-5:
                raise RuntimeError("the two handlers answer differently")
            samples: dict[str, list[float]] = {k: [] for k in sides}
            diffs = []
            for i in range(rounds):
                order = ("base", "ours") if i % 2 == 0 else ("ours", "base")
                t = {k: _time_batch(sides[k], data, calls) for k in order}
                for k in sides:
                    samples[k].append(t[k])
                diffs.append(t["ours"] - t["base"])
            results.append({
                "batch": batch,
                "base_us": statistics.median(samples["base"]),
                "ours_us": statistics.median(samples["ours"]),
                "diff_us": statistics.median(diffs),
                "diff_p10": _pct(diffs, 0.1),
                "diff_p90": _pct(diffs, 0.9),
            })
    return results


def markdown(results: list[dict[str, Any]], base: str, compiler: str) -> str:
    lines = [f"handle() CPU µs per request, {compiler}, base {base[:10]} vs this tree "
             "(median; paired difference median [p10, p90])", "",
             "| batch | base | ours | ours - base | ours / base |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['batch']} | {r['base_us']:.1f} | {r['ours_us']:.1f} | "
                     f"{r['diff_us']:+.1f} [{r['diff_p10']:+.1f}, {r['diff_p90']:+.1f}] | "
                     f"{r['ours_us'] / r['base_us']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="commit of the base handlers")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--calls", type=int, default=10, help="handle() calls per timed sample")
    parser.add_argument("--compiler", default="eager")
    args = parser.parse_args(argv)
    base = args.base or base_commit()
    print(markdown(run(base, args.rounds, args.calls, args.compiler), base, args.compiler))


if __name__ == "__main__":
    main()
