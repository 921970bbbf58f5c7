"""Peak memory of a merge: heredity's streaming merge vs loading every input whole, for 2, 4 and 8 inputs.

    .venv/bin/python bench/merge.py [--inputs 2,4,8] [--method ties]

Inputs are full SmolLM2-135M checkpoints (fp32, the bundled base plus small random task vectors, made once
in a temporary store). Each merge runs in a fresh child process and reports its peak RSS (ru_maxrss); the
baseline, in the same run, loads every input's state dict with safetensors, merges with the same method
and saves. "net" subtracts the child's resident memory just before the merge (the interpreter, torch), so it
is what the merge itself holds; the target is net ≤ 3× one model whatever the number of inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(args) -> None:
    import torch  # noqa: F401  (imports first: the baseline RSS is taken after them)
    from safetensors.torch import load_file, save_file

    from heredity.merge import MergeConfig, merge
    from heredity.merge.methods import REGISTRY, TensorJob
    from heredity.merge.tensors import ModelTensors
    from heredity.store import Store

    store = Store(args.home)
    ids = json.loads(args.ids)
    base, inputs = ids[0], ids[1 : 1 + args.n]
    rss0 = current_rss_kb()  # what the process holds now (ru_maxrss would include import-time spikes)
    t = time.perf_counter()
    if args.child == "streaming":
        cfg = MergeConfig(
            merge_method=args.method,
            base_model=base,
            models=[{"model": i} for i in inputs],
            parameters={"density": 0.2},
            seed=int(time.time()),
            name="bench-merge",
        )
        merge(store, cfg, progress=False)
    else:
        base_sd = load_file(str(store.path(base) / "model.safetensors"))
        sds = [load_file(str(store.path(i) / "model.safetensors")) for i in inputs]
        out = {}
        method = REGISTRY[args.method]
        for name, b in base_sd.items():
            job = TensorJob(
                name,
                b,
                [sd[name] for sd in sds],
                [1.0] * len(sds),
                [0.2] * len(sds),
                normalize=method.normalize,
            )
            out[name] = method.merge(job).contiguous()
        path = Path(tempfile.mkdtemp()) / "model.safetensors"
        save_file(out, str(path))
        path.unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model_bytes = ModelTensors(store.path(base)).path.joinpath("model.safetensors").stat().st_size
    print(
        json.dumps(
            {"peak_kb": peak, "base_kb": rss0, "seconds": time.perf_counter() - t, "model_bytes": model_bytes}
        )
    )


def make_inputs(home: Path, k: int) -> list[str]:
    import torch
    from safetensors.torch import save_file

    from heredity.merge.tensors import ModelTensors
    from heredity.models import materialize
    from heredity.store import Store

    store = Store(home)
    base = materialize("smollm2-135m-instruct", store)
    ids = [base]
    for i in range(k):

        def run(ctx, i=i):
            src = ModelTensors(store.path(base))
            out = ctx.output("model", "model", f"bench-variant-{i}")
            g = torch.Generator().manual_seed(i)
            save_file(
                {n: src.get(n) + 1e-3 * torch.randn(src.shape(n), generator=g) for n in src.names()},
                str(out / "model.safetensors"),
                metadata={"format": "pt"},
            )
            for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
                if (store.path(base) / f).is_file():
                    (out / f).write_bytes((store.path(base) / f).read_bytes())

        ids.append(store.run_step("bench-variant", {"i": i, "scale": 1e-3}, [base], run)["model"])
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", default="2,4,8")
    ap.add_argument("--method", default="ties")
    ap.add_argument("--home", default=None)
    ap.add_argument("--child", choices=["streaming", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    home = Path(
        args.home or os.environ.get("HEREDITY_HOME") or tempfile.mkdtemp(prefix="heredity-bench-merge-")
    )
    counts = [int(x) for x in args.inputs.split(",")]
    ids = make_inputs(home, max(counts))
    rows = []
    for n in counts:
        res = {}
        for kind in ("naive", "streaming"):
            r = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    "--ids",
                    json.dumps(ids),
                    "--n",
                    str(n),
                    "--home",
                    str(home),
                    "--method",
                    args.method,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            res[kind] = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append((n, res))
    mb = rows[0][1]["naive"]["model_bytes"] / 2**20
    print(
        f"\n{args.method} merge of full SmolLM2-135M checkpoints (one model = {mb:.0f} MB), "
        "peak RSS per child process\n"
    )
    print(
        "| inputs | naive peak (net) | streaming peak (net) | streaming net ÷ one model "
        "| naive ÷ streaming (net) | time naive / streaming |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, r in rows:
        nv = (r["naive"]["peak_kb"] - r["naive"]["base_kb"]) / 1024
        st = (r["streaming"]["peak_kb"] - r["streaming"]["base_kb"]) / 1024
        print(
            f"| {n} | {r['naive']['peak_kb'] / 1024:.0f} MB ({nv:.0f}) "
            f"| {r['streaming']['peak_kb'] / 1024:.0f} MB ({st:.0f}) "
            f"| {st / mb:.2f}× | {nv / max(st, 1):.2f}× "
            f"| {r['naive']['seconds']:.1f} s / {r['streaming']['seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
