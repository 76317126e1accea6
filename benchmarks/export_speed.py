"""Inference time of an exported model against the eager one, per bag of 10,000 patches, and the files' sizes.

A CLAM-sized run (D=1024 features, Linear 1024→512 + ReLU, attention 512→256; TransMIL on the same encoder) is
trained for one epoch on a small synthetic cohort (the weights do not matter for speed), exported with
``abmil export`` to TorchScript and ONNX, and one bag of ``--patches`` float32 features goes through:

- ``eager``: what ``abmil predict --run`` computes for the bag in memory (:func:`abmil.slides.predict.predict_bag`'s
  model calls: the streamed pooling of attention models, ``model(x)`` for the others, then the task's outputs);
- ``torchscript``: ``torch.jit.load(model.pt)(x)``;
- ``onnx``: ``onnxruntime.InferenceSession(model.onnx).run`` (when onnxruntime is installed).

Each is timed as the median of ``--repeats`` calls after two warm-up calls, the implementations interleaved call by
call so that a busy machine slows all alike; ratios are against eager in the same run. Sizes: the run's safetensors
weights against the exported files.

    python benchmarks/export_speed.py [--poolings gated,mean,instance-max,transmil] [--patches 10000]
                                      [--repeats 20] [--threads 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def trained_run(root: Path, pooling: str, dim: int) -> Path:
    from abmil.slides.features import FeatureBagDataset
    from abmil.slides.train import WSIConfig, train_feature_model
    from wsi_helpers import make_dataset

    data = root / "data"
    if not (data / "manifest.csv").exists():
        make_dataset(data, 6, sizes=(20, 40), dim=dim)
    run = root / pooling
    train_feature_model(FeatureBagDataset(data / "manifest.csv", data / "features"), run,
                        WSIConfig(pooling=pooling, epochs=1))
    return run


def eager_call(run_dir: Path):
    """The model calls of predict_bag on a bag in memory."""
    import torch

    from abmil.slides.predict import load_run

    run = load_run(run_dir)
    head = run.head

    def call(x):
        if run.spec.chunked:
            out = run.model.pool_chunks(iter([x]))
            torch.softmax(out.attention_logits.double(), 0)
        else:
            with torch.no_grad():
                out = run.model(x)
        return head.prediction(out, head)
    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poolings", default="gated,mean,instance-max,transmil")
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import abmil  # noqa: F401, I001  (before torch: OMP_WAIT_POLICY)
    import torch

    torch.set_num_threads(args.threads)
    from abmil.export import export_run
    from abmil.export.deployed import load_export

    try:
        import onnxruntime  # noqa: F401
        formats = ("torchscript", "onnx")
    except ImportError:
        formats = ("torchscript",)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((args.patches, args.dim)).astype(np.float32))
    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads, one bag of {args.patches} x {args.dim} float32, "
          f"median of {args.repeats} calls (ms)")
    print(f"{'pooling':>12} {'format':>12} {'ms':>9} {'vs eager':>9} {'file MiB':>9} {'weights MiB':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for pooling in args.poolings.split(","):
            run = trained_run(root, pooling, args.dim)
            weights = sum(p.stat().st_size for p in run.glob("best-*.safetensors")) or \
                sum(p.stat().st_size for p in run.glob("weights-*.safetensors"))
            calls = {"eager": eager_call(run)}
            sizes = {"eager": weights}
            for fmt in formats:
                if fmt == "onnx" and pooling == "transmil":
                    continue
                out = root / f"{pooling}-{fmt}"
                meta = export_run(run, out, fmt)
                model = load_export(out)
                calls[fmt] = (lambda m: lambda t: m(t.numpy()))(model)
                sizes[fmt] = (out / meta["model_file"]).stat().st_size
            times = {k: [] for k in calls}
            for _ in range(2):
                for call in calls.values():
                    call(x)
            for _ in range(args.repeats):
                for k, call in calls.items():
                    t0 = time.perf_counter()
                    call(x)
                    times[k].append(time.perf_counter() - t0)
            eager = statistics.median(times["eager"])
            for k in calls:
                ms = statistics.median(times[k]) * 1e3
                ratio = statistics.median(times[k]) / eager
                rows.append({"pooling": pooling, "format": k, "ms": ms, "ratio_vs_eager": ratio,
                             "file_bytes": sizes[k], "weights_bytes": weights})
                print(f"{pooling:>12} {k:>12} {ms:9.2f} {ratio:9.2f} {sizes[k] / 2**20:9.2f} "
                      f"{weights / 2**20:11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
