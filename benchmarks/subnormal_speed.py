"""What subnormals cost a CPU training step, and what abmil.train.subnormal gives back.

The breast patch CNN under gated attention, after ~100 epochs of the paper's protocol, had a quarter of its first fc
layer's weights (and a sixth of the second's) below float32's smallest normal number. Part 1 times one training
step's forward and backward pass on one bag of patches with such weights and with the same weights flushed to
zero, alternating the two, and checks the two give the same bag probability bitwise. Part 2 times the same pass
with the flushed weights, the thread's flush-to-zero mode off and on (``subnormals_as_zero``, as the training loops
run): it removes the subnormal activation gradients that a peaked attention makes in the backward pass. Part 3
(``--threads`` > 1) sets the mode against the same pass where torch runs several intra-op threads: on in the
training thread only (a training loop called from a script), and on in every thread (a process that turned it on
before torch started its threads, as the ``abmil`` command does; a spawned child, alternating with this process).

    python benchmarks/subnormal_speed.py [--patches 600] [--repeats 5] [--threads 1] [--weights RUN.safetensors]
                                         [--image H&E.tif]

Without ``--weights`` the subnormal weights are planted in a fresh model at the shares seen in the real run (25% of
fc-1, 17% of fc-2, 7% of the attention V and U); with it, a saved histology model is loaded as it is (e.g.
``results/histology-breast/models/gated__rep2__fold7.safetensors`` from ``abmil reproduce histology
--keep-models``). ``--image``: the bag is that image's grid tiles (background dropped, the first ``--patches``),
not uniform noise; the subnormal gradients depend on what the model sees.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import multiprocessing as mp
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the abmil command: idle threads must not spin between passes
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from abmil.data.histology import read_rgb  # noqa: E402
from abmil.data.patches import grid_patches, patches_to_tensor  # noqa: E402
from abmil.nn.zoo import histology_model  # noqa: E402
from abmil.train.subnormal import flush_subnormal_, subnormals_as_zero  # noqa: E402

SHARES = {"encoder.fc.0.weight": 0.25, "encoder.fc.3.weight": 0.17, "pool.V.weight": 0.07, "pool.U.weight": 0.07}


def subnormal_count(model: torch.nn.Module) -> tuple[int, int]:
    tiny = torch.finfo(torch.float32).tiny
    ps = list(model.parameters())
    return sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in ps), sum(p.numel() for p in ps)


def plant(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in SHARES:
                pick = torch.rand(p.shape, generator=g) < SHARES[name]
                p[pick] = torch.where(p[pick] < 0, -1e-40, 1e-40)


def step_seconds(model: torch.nn.Module, x: torch.Tensor, flush_mode: bool = False) -> tuple[float, torch.Tensor]:
    index = torch.zeros(x.shape[0], dtype=torch.long)
    model.zero_grad(set_to_none=True)
    mode = subnormals_as_zero() if flush_mode else contextlib.nullcontext()
    with mode:
        t = time.perf_counter()
        out = model(x, index, 1)
        out.prob.sum().backward()
        return time.perf_counter() - t, out.prob.detach()


def alternate(repeats: int, **passes) -> dict[str, tuple[float, torch.Tensor]]:
    """Best time and the last output of each named ``() -> (seconds, prob)`` pass, run in turn ``repeats`` times."""
    for run in passes.values():
        run()  # warm-up
    times, probs = {k: [] for k in passes}, {}
    for _ in range(repeats):
        for name, run in passes.items():
            t, probs[name] = run()
            times[name].append(t)
    return {k: (min(times[k]), probs[k]) for k in passes}


def mode_from_start(conn, threads: int) -> None:
    """Child process: the mode on before torch starts any thread; then one pass per request on the sent model."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    state, x = conn.recv()
    model = histology_model("gated", 32)
    model.load_state_dict(state)
    model.eval()
    while conn.recv():
        conn.send(step_seconds(model, x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=600, help="instances in the bag (a breast image has ~300-900)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", help="a saved gated histology model (safetensors); default: planted subnormals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image", help="cut the bag from this H&E image (32x32 grid tiles); default: uniform noise")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    slow = histology_model("gated", 32)
    if args.weights:
        slow.load_state_dict(load_file(args.weights))
    else:
        plant(slow, args.seed)
    slow.eval()  # dropout off: both models see the same computation
    fast = copy.deepcopy(slow)
    flushed = flush_subnormal_(fast.parameters())
    n_sub, n_all = subnormal_count(slow)
    print(f"subnormal weights: {n_sub} of {n_all} ({n_sub / n_all:.1%}); flushed {flushed}")
    if args.image:
        x = patches_to_tensor(grid_patches(read_rgb(args.image), 32, path=args.image).patches[:args.patches])
    else:
        x = torch.rand(args.patches, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    print(f"bag: {x.shape[0]} patches from {args.image or 'uniform noise'}; {args.threads} thread(s), "
          f"best of {args.repeats}, forward+backward")
    part1 = alternate(args.repeats, subnormal=lambda: step_seconds(slow, x), flushed=lambda: step_seconds(fast, x))
    (t_slow, p_slow), (t_fast, p_fast) = part1["subnormal"], part1["flushed"]
    assert torch.equal(p_slow, p_fast), "flushing changed the bag probability"
    print(f"1. weights: subnormal {t_slow * 1e3:.0f} ms, flushed {t_fast * 1e3:.0f} ms, ratio {t_slow / t_fast:.2f}x "
          "(bag probabilities bitwise equal)")
    part2 = alternate(args.repeats, off=lambda: step_seconds(fast, x), on=lambda: step_seconds(fast, x, True))
    (t_off, p_off), (t_on, p_on) = part2["off"], part2["on"]
    print(f"2. flushed weights, flush-to-zero mode: off {t_off * 1e3:.0f} ms, on {t_on * 1e3:.0f} ms, "
          f"ratio {t_off / t_on:.2f}x (bag probability {p_off.item():.9g} vs {p_on.item():.9g})")
    if args.threads > 1:
        ctx = mp.get_context("spawn")
        here, there = ctx.Pipe()
        child = ctx.Process(target=mode_from_start, args=(there, args.threads), daemon=True)
        child.start()
        here.send((fast.state_dict(), x))

        def in_child() -> tuple[float, torch.Tensor]:
            here.send(True)
            return here.recv()

        part3 = alternate(args.repeats, thread=lambda: step_seconds(fast, x, True), every=in_child)
        here.send(False)
        child.join()
        (t_thread, _), (t_every, _) = part3["thread"], part3["every"]
        print(f"3. {args.threads} threads, mode on in the training thread only {t_thread * 1e3:.0f} ms, "
              f"in every thread {t_every * 1e3:.0f} ms, ratio {t_thread / t_every:.2f}x")


if __name__ == "__main__":
    main()
