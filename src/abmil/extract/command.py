"""``abmil extract``: the flags checked and turned into a run, one line printed per slide."""
from __future__ import annotations

import argparse
import os
import sys

from .pipeline import SlideResult, extract_all
from .settings import ExtractSettings
from .tiling import mpp_of_magnification


def _positive(flag: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{flag} must be > 0, got {value}")


def run_extract(args: argparse.Namespace) -> int:
    """Exit status 0 when every slide is done, skipped or has no tissue, 1 when some (not all) failed; no slide
    done raises (the CLI's exit 2)."""
    from .encoders import load_encoder
    from .sources import slides_in_folder, slides_of_manifest

    for flag, value in (("--mpp", args.mpp), ("--magnification", args.magnification),
                        ("--mpp-level0", args.mpp_level0), ("--batch-size", args.batch_size)):
        _positive(flag, value)
    if not 0 <= args.min_tissue <= 1:
        raise ValueError(f"--min-tissue must be in [0, 1], got {args.min_tissue}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    mpp = mpp_of_magnification(args.magnification) if args.magnification is not None else args.mpp
    settings = ExtractSettings(mpp=mpp, patch_size=args.patch_size, overlap=args.overlap,
                               min_tissue=args.min_tissue, mpp_level0=args.mpp_level0)
    slides = slides_in_folder(args.slides) if args.slides else slides_of_manifest(args.manifest, None)
    encoder = load_encoder(args.encoder, args.weights)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"

    held: list[str] = []  # errors before any slide succeeded: if none does, the CLI's one error line says it

    def log(r: SlideResult) -> None:
        if r.status == "error":
            held.append(r.message)
        else:
            for message in held:
                print(f"abmil: error: {message}", file=sys.stderr)
            held[:] = []
            rate = f", {r.tiles / r.seconds:.1f} tiles/s" if r.status == "done" and r.seconds > 0 else ""
            print(f"{r.slide_id}: {r.status}, {r.tiles} tiles{rate}", flush=True)

    from tqdm import tqdm

    # tiles encoded, on a terminal only (logs and CI get the one line per slide)
    with tqdm(unit="tile", disable=not sys.stderr.isatty(), leave=False) as bar:
        results = extract_all(slides, args.out, encoder, settings, batch_size=args.batch_size,
                              workers=args.workers, device=device, bf16=args.bf16, rank=rank, world=world,
                              log=lambda r: (bar.clear(), log(r)), progress=bar.update)
    for message in held:
        print(f"abmil: error: {message}", file=sys.stderr)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "no tissue", "error")}
    print(f"wrote {args.out}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 1 if counts["error"] else 0
