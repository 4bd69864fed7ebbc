"""What writing a proof to object storage costs the training run: a local S3 server against a local directory.

Each repetition trains the same workload three times, interleaved in alternating order so that drift hits every
condition alike: without a proof, with a proof in a local directory, and with the proof at an ``s3://`` URL on
SeaweedFS's ``weed mini`` on 127.0.0.1 (the test suite's server, ``tests/object_store.py``). The ratios are
medians of ratios taken within one repetition: on two shared cores, single timings scatter. The server runs on
the same cores as training, so its CPU time during an S3 fit is measured too: work that a real store does
elsewhere.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from lightning_pol import ProofOfLearning


def object_storage(work: Any, ks: list[int], repeats: int, tmp: Path) -> dict[str, Any]:
    from tests.object_store import SeaweedS3

    (tmp / "seaweedfs").mkdir(parents=True, exist_ok=True)
    s3 = SeaweedS3(tmp / "seaweedfs")
    s3.start()
    rows: dict[str, Any] = {}
    try:
        for k in ks:
            local, remote, between, server = [], [], [], []
            for r in range(repeats):
                def on_s3() -> float:
                    before = s3.cpu_seconds()
                    pol = ProofOfLearning(f"s3://proofs/bench-{k}-{r}", every_n_steps=k, storage_options=s3.storage_options())
                    took = work.timed_fit([pol], tmp / "s3")[0]
                    server.append((s3.cpu_seconds() - before) / took)
                    return took

                runs = {
                    "plain": lambda: work.timed_fit([], tmp / "plain")[0],
                    "local": lambda: work.timed_fit([ProofOfLearning(tmp / f"local-{k}-{r}", every_n_steps=k)], tmp / "local")[0],
                    "s3": on_s3,
                }
                order = ["plain", "local", "s3"] if r % 2 == 0 else ["s3", "local", "plain"]
                took = {name: runs[name]() for name in order}
                local.append(took["local"] / took["plain"])
                remote.append(took["s3"] / took["plain"])
                between.append(took["s3"] / took["local"])
            size = sum(s3.filesystem().du(f"proofs/bench-{k}-0", total=False).values())
            rows[str(k)] = {"local_over_plain": statistics.median(local), "s3_over_plain": statistics.median(remote),
                            "s3_over_local": statistics.median(between), "spread_s3_over_local": [min(between), max(between)],
                            "server_cpu_share": statistics.median(server), "proof_megabytes": size / 1e6, "repeats": repeats}
    finally:
        s3.stop()
    return {"workload": work.name, "cores": os.cpu_count(), "rows": rows}


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [f"**Proof on object storage** ({r['workload']}; SeaweedFS `weed mini` on 127.0.0.1, on the same {r['cores']} "
             "cores, against a local directory; medians of ratios within one repetition)", "",
             "| k | proof MB | local dir / no proof | S3 / no proof | S3 / local dir (min-max) | server CPU / S3 fit | repeats |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, row in r["rows"].items():
        lo, hi = row["spread_s3_over_local"]
        lines.append(f"| {k} | {row['proof_megabytes']:.1f} | {row['local_over_plain']:.2f}x | {row['s3_over_plain']:.2f}x | "
                     f"{row['s3_over_local']:.2f}x ({lo:.2f}-{hi:.2f}) | {row['server_cpu_share']:.2f} | {row['repeats']} |")
    return lines + [""]
