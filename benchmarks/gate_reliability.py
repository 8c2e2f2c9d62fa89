"""How often the load gate's comparison with the champion is wrong on this machine
(``python -m benchmarks.gate_reliability``; issue 22's targets).

One local TorchServe serves three versions of a model whose forward pass waits ``--delay-ms``
(so the server's work, not the frontend, sets the latency): v1 the champion, v2 the same
model again, v3 the same weights waiting 1.5x as long. Each trial is the gate's own measurement
(``gates.load.run_ab``: alternating rounds, more while inconclusive, up to ``--max-rounds``) and
decision (``gates.load.load_checks``): v2 against v1 should never be rejected (false rejects),
v3 against v1 every time. Trials alternate between the two so that both see the same noise.

The decision is taken at each ``--regression`` (``max_regression_pct``) with the SLOs' default
``regression_floor_ms``; the default 50% cannot reject a copy exactly 1.5x slower, by design.
Each statistic of ``gates.compare`` (``pooled``, the gate's, and ``per-round``) decides on the same
measured rounds: rounds are added while any of them is inconclusive, and each decides at the
first round count where it is conclusive (as ``run_ab`` would stop), so their columns compare
like with like.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

PACED_NET = '''
import time

import torch
from torch import nn


class PacedNet(nn.Module):
    """A small classifier that waits delay_ms in every forward pass."""

    def __init__(self, delay_ms: float = 20.0) -> None:
        super().__init__()
        self.delay_s = delay_ms / 1000
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return self.net(x)
'''

RATIO_CHECKS = ("p95_ratio_vs_champion", "p99_ratio_vs_champion", "rps_ratio_vs_champion")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20, help="trials per challenger (20)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the champion's wait per batch (20)")
    parser.add_argument("--seconds", type=float, default=6.0, help="load seconds per target (6)")
    parser.add_argument("--users", type=int, default=8, help="Locust users (8)")
    parser.add_argument("--max-rounds", type=int, default=6, help="rounds cap while inconclusive (6)")
    parser.add_argument("--regression", type=float, nargs="+", default=[50.0, 20.0],
                        help="max_regression_pct values to decide at (50 20)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from servegate._resources import loadtests_dir
    from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
    from servegate.config import BatchingConfig, LoadSettings, SLOs, TorchServeSettings
    from servegate.gates.compare import STATISTICS
    from servegate.gates.load import conclusive, load_checks, merge, run_load, summarize
    from servegate.packaging.builder import package_model
    from servegate.sources import load_torch_model

    console = Console()
    with tempfile.TemporaryDirectory(prefix="servegate-gate-bench-") as tmp:
        root = Path(tmp)
        (root / "paced_net.py").write_text(PACED_NET, encoding="utf-8")
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, root / "paced.pt")
        x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
        np.savez(root / "eval.npz", x=x, y=net(torch.from_numpy(x)).argmax(1).numpy())
        archives = {}
        for version, delay in (("1", args.delay_ms), ("2", args.delay_ms), ("3", 1.5 * args.delay_ms)):
            model = load_torch_model(str(root / "paced.pt"), model_class=f"{root / 'paced_net.py'}:PacedNet",
                                     model_kwargs={"delay_ms": delay}, eval_data=str(root / "eval.npz"))
            archives[version] = package_model(model, name="paced", version=version, compiler="eager",
                                              batching=BatchingConfig(), output_dir=root / f"v{version}")
        server = LocalTorchServe(TorchServeSettings(workdir=root / "ts"))
        backend = TorchServeBackend.from_state(server.start())
        try:
            for version, archive in archives.items():
                backend.deploy(archive, "paced", version)
            access = backend.access()
            samples = [{"inputs": row.tolist()} for row in x[:32]]
            # a round's phases: run_ab's (the load seconds shared by its two first rounds)
            phase = LoadSettings(users=args.users, seconds=args.seconds / 2, rounds=1)
            strictest = SLOs(max_regression_pct=min(args.regression))
            rows: list[dict] = []
            started = time.monotonic()
            for trial in range(args.trials):
                for challenger, kind in (("2", "same model"), ("3", "1.5x slower")):
                    phases: dict[str, list] = {"champion": [], "challenger": []}
                    common = dict(host=access.inference_url, model="paced",
                                  inference_key=access.inference_key, samples=samples,
                                  locustfile=loadtests_dir() / "torchserve.py",
                                  user_class="TorchServePredictUser", settings=phase)
                    decided: dict[str, tuple] = {}
                    while len(decided) < len(STATISTICS):
                        phases["champion"].append(run_load(label="champion", version="1", **common))
                        phases["challenger"].append(run_load(label="challenger", version=challenger,
                                                             **common))
                        done = len(phases["champion"])
                        for statistic in (s for s in STATISTICS if s not in decided and done >= 2):
                            figures, comparison = summarize(phases, ("champion", "challenger"),
                                                            statistic=statistic)
                            assert comparison is not None
                            if conclusive(comparison, strictest) or done >= args.max_rounds:
                                champion = merge(phases["champion"], figures["champion"])
                                measured = replace(merge(phases["challenger"], figures["challenger"]),
                                                   comparison=comparison)
                                decided[statistic] = (done, champion, measured)
                    for statistic, (done, champion, measured) in decided.items():
                        row = {"trial": trial, "challenger": kind, "statistic": statistic,
                               "p95_ratio": measured.comparison.p95.estimate, "rounds": done}
                        for pct in args.regression:
                            checks = load_checks(measured, champion, SLOs(max_regression_pct=pct))
                            failed = [c.name for c in checks if c.name in RATIO_CHECKS and not c.passed]
                            row[f"rejected@{pct:g}"] = bool(failed)
                            row[f"failed@{pct:g}"] = failed
                        rows.append(row)
                        console.print(f"trial {trial + 1}/{args.trials} {kind} ({statistic}): p95 "
                                      f"ratio {row['p95_ratio']:.2f}, {done} rounds, rejected "
                                      + ", ".join(f"{row[f'rejected@{p:g}']}@{p:g}%"
                                                  for p in args.regression))
        finally:
            backend.close()
            server.stop()
        table = Table(title=f"gate decisions over {args.trials} trials each "
                            f"({time.monotonic() - started:.0f} s)")
        for column in ("challenger", "statistic"):
            table.add_column(column)
        table.add_column("median p95 ratio", justify="right")
        table.add_column("mean rounds", justify="right")
        for pct in args.regression:
            table.add_column(f"rejected at {pct:g}%", justify="right")
        summary: dict[str, dict] = {}
        for kind in ("same model", "1.5x slower"):
            for statistic in STATISTICS:
                mine = [r for r in rows if r["challenger"] == kind and r["statistic"] == statistic]
                counts = {f"{pct:g}": sum(r[f"rejected@{pct:g}"] for r in mine) for pct in args.regression}
                figures_row = {"median_p95_ratio": float(np.median([r["p95_ratio"] for r in mine])),
                               "mean_rounds": float(np.mean([r["rounds"] for r in mine])),
                               "rejected": counts, "trials": len(mine)}
                summary[f"{kind} / {statistic}"] = figures_row
                table.add_row(kind, statistic, f"{figures_row['median_p95_ratio']:.2f}",
                              f"{figures_row['mean_rounds']:.1f}",
                              *(f"{counts[f'{pct:g}']}/{len(mine)}" for pct in args.regression))
        console.print(table)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
