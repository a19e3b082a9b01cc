"""The first command of a GPU session: model, MaskFeat step, MAE step, HOG and loader speed in one table.

    python scripts/gpu_report.py                                   # GPU (auto): about 8 minutes on one H200
    python scripts/gpu_report.py --out gpu.md --json gpu.json      # also keep the table and the raw numbers
    python scripts/gpu_report.py --device cpu --small              # tiny sizes on CPU, under a minute (the test)
    python scripts/gpu_report.py --device cpu --small --compile    # + the torch.compile rows (minutes on CPU)

Rows (bf16 autocast unless --dtype fp32; medians over timed repeats after warm-up):
  model fwd / fwd+bwd   our `mvitv2_s_16x4` and torchvision's `mvit_v2_s` holding the same
                        (random) weights, eager and torch.compile'd, timed in interleaved rounds
                        (scripts/benchmark.py's passes and FLOP counter; the work is torchvision's
                        count for both, as there). Ours' notes give the speedup over torchvision:
                        ratio of the medians [median of the per-round ratios].
  MaskFeat step         MaskFeat-S 16x4 (`mvitv2_s_16x4_maskfeat`, pretraining form), 32 clips,
                        AdamW, eager and compiled (scripts/benchmark_pretrain_step.py): clips/s,
                        MFU, peak memory, the share of HOG targets, the masks' cost (made in the
                        loader's workers, so 0 in the main process) and the data wait implied
                        by the loader row.
  MAE step              MAE ViT-B 16x4 (`vit_b_16x4`, MAE form: the visible 10 % of 1568 tokens through
                        the encoder, decoder 4 x 512, pixel targets), 32 clips, AdamW, eager: clips/s,
                        MFU, peak memory, the share of the pixel targets.
  HOG                   `HOGLayer` on the frames of one step (8 per clip x 32 clips) on the device.
  loader                `build_train_loader` as pretraining runs it (the task's masker, uint8
                        clips) on synthetic shards made here with make_shards' defaults (GOP 16,
                        ref_stride 4, CAVLC), 16x4 clips cropped to 224, with 1 and N workers
                        (wall-clock clips/s, and clips per CPU-second of the workers and the main
                        process together).
  cores per GPU         measured: the MaskFeat step's clips/s (compiled when that row ran) divided
                        by the N-worker loader's clips per CPU-second, next to the step's data-wait
                        share; docs/data_speed.md has the modelled figure it replaces.

MFU is taken against --peak-tflops (default 989: dense bf16 of an H100/H200 SXM) on CUDA and
against a measured fp32 matmul on CPU. A row that fails (an error, out of memory, a compile that
does not work here) says so in its notes; the other rows still run. Rows run cheapest first and
the compiled ones last; once --budget seconds have passed, remaining repeats and rows are skipped
(a note says so; a compile already started runs to its end). Progress goes to stderr, the
table to stdout. --small: 4x64² clips, batches of 1-2, a one-block-per-stage MaskFeat encoder;
the model rows keep MViTv2-S there, as torchvision's weights must fit ours.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mvit  # noqa: E402
# sibling scripts (scripts/ is on sys.path as this script's folder)
from benchmark import count_flops, cpu_name, forward, forward_backward, torchvision_mvit_v2_s  # noqa: E402
from benchmark_data import time_loader  # noqa: E402
from benchmark_maskfeat_targets import paired_median_seconds  # noqa: E402
from benchmark_pretrain_step import build_task, device_peak, measure_step  # noqa: E402
from pretrain.config import ScriptParser  # noqa: E402
from pretrain.hog import HOGLayer  # noqa: E402
from videodata import build_train_loader, write_shards, write_synthetic_videos  # noqa: E402

STEP_MODEL = "mvitv2_s_16x4_maskfeat"
MAE_MODEL = "vit_b_16x4"


@dataclass(frozen=True)
class Sizes:
    """What every row runs at: the real 16x4 / 224² recipe, or --small."""
    frames: int = 16
    stride: int = 4
    crop: int = 224
    model_batch: int = 8  # clips per model-row pass
    step_batch: int = 32  # clips per GPU in a MaskFeat-S step
    arch: dict = field(default_factory=dict)  # MViTConfig overrides of the step's encoder
    mae_arch: dict = field(default_factory=dict)  # ... and of the MAE step's ViT
    repeats: int = 10
    videos: int = 16  # synthetic videos for the loader rows
    video_size: tuple[int, int] = (320, 428)  # the shards' default short side, 4:3
    video_frames: int = 96
    loader_batch: int = 8
    loader_batches: int = 3  # timed batches per worker
    mm_size: int = 2048  # CPU matmul peak


SMALL = Sizes(frames=4, stride=2, crop=64, model_batch=1, step_batch=2, arch=dict(depths=(1, 1, 1, 1), embed_dim=16),
              mae_arch=dict(depths=(1,), embed_dim=64, num_heads=4),
              repeats=2, videos=4, video_size=(72, 96), video_frames=12, loader_batch=2, loader_batches=2, mm_size=512)


@dataclass
class Context:
    device: torch.device
    dtype: str
    sizes: Sizes
    workers: int
    peak: float  # FLOP/s the MFU is taken against
    deadline: float  # time.perf_counter() after which repeats and rows are skipped
    flops: dict = field(default_factory=dict)  # model FLOPs per pass, counted once on the eager models


def log(msg: str):
    print(f"[gpu_report {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def row(what: str, config: str, *, time_s: float | None = None, work: float = 0.0, per_s: float | None = None,
        unit: str = "", ctx: Context | None = None, notes=(), **raw) -> dict:
    """One table row. work: units per timed call (clips, frames), so throughput = work / time;
    raw["flops"]: FLOPs per timed call, for TFLOP/s and MFU."""
    out = dict(what=what, config=config, time_s=time_s, unit=unit, notes=list(notes), **raw)
    out["throughput"] = per_s if per_s is not None else (work / time_s if time_s and work else None)
    if time_s and raw.get("flops"):
        out["tflops"] = raw["flops"] / time_s / 1e12
        out["mfu"] = raw["flops"] / time_s / ctx.peak
    return out


# ----------------------------------------------------------------------------- rows


def model_names(compiled: bool) -> list[str]:
    tail = ", compiled" if compiled else ""
    return [f"model {p}, {n}{tail}" for p in ("fwd", "fwd+bwd") for n in ("ours", "torchvision")]


def model_rows(ctx: Context, compiled: bool) -> list[dict]:
    """Ours vs torchvision, same weights, forward and forward+backward, in interleaved rounds."""
    s, dev = ctx.sizes, ctx.device
    tv = torchvision_mvit_v2_s(s.frames, s.crop).eval()
    ours = mvit.create_model("mvitv2_s_16x4", input_size=(s.frames, s.crop, s.crop)).eval()
    report = mvit.load_pretrained(ours, tv.state_dict())
    assert not report.missing and not report.unexpected, report.summary()
    models = {"torchvision": tv.to(dev), "ours": ours.to(dev)}
    x = torch.randn(s.model_batch, 3, s.frames, s.crop, s.crop, device=dev)  # (B, 3, T, H, W)
    opts = argparse.Namespace(device=dev.type, dtype=ctx.dtype)  # what benchmark.py's passes read
    passes = {"fwd": forward, "fwd+bwd": forward_backward}
    for p, run in passes.items():
        if p not in ctx.flops:
            ctx.flops[p] = count_flops(lambda: run(tv, x, opts))
    compile_s = {}
    if compiled:
        models = {n: torch.compile(m) for n, m in models.items()}
        for (n, m), (p, run) in itertools.product(models.items(), passes.items()):
            log(f"compiling {n} {p}")
            t0 = time.perf_counter()
            run(m, x, opts)
            compile_s[n, p] = time.perf_counter() - t0
    config = f"{s.model_batch}×3×{s.frames}×{s.crop}², {ctx.dtype}"
    rows = []
    for p, run in passes.items():
        log(f"timing model {p}{' compiled' if compiled else ''}")
        (t_tv, t_ours), (_, speedup) = paired_median_seconds(
            [lambda m=m: run(m, x, opts) for m in models.values()], ctx.sizes.repeats, dev, ctx.deadline)
        for n, t in (("ours", t_ours), ("torchvision", t_tv)):
            notes = [f"{t_tv / t_ours:.2f}× torchvision [{speedup:.2f}]"] if n == "ours" else []
            notes += [f"first call {compile_s[n, p]:.0f} s (compile)"] if compiled else []
            rows.append(row(f"model {p}, {n}{', compiled' if compiled else ''}", config, time_s=t,
                            work=s.model_batch, unit="clips/s", ctx=ctx, flops=ctx.flops[p], notes=notes))
    return rows


def step_name(compiled: bool) -> str:
    return f"MaskFeat step{', compiled' if compiled else ''}"


def step_row(ctx: Context, compiled: bool) -> dict:
    """One MaskFeat-S training step on `step_batch` clips with loader-made masks."""
    s = ctx.sizes
    torch.manual_seed(0)
    task = build_task(STEP_MODEL, (s.frames, s.crop, s.crop), **s.arch).to(ctx.device)
    r = measure_step(task, s.step_batch, ctx.device, dtype=ctx.dtype, compile=compiled,
                     warmup=3 if compiled else 2, repeats=s.repeats, deadline=ctx.deadline)
    memory = r.get("max_allocated_bytes") or r["rss_peak_bytes"]
    notes = [f"peak memory {memory / 2**30:.2f} GiB ({'allocated' if 'max_allocated_bytes' in r else 'RSS'})",
             f"HOG targets {r['targets_s'] * 1e3:.1f} ms = {100 * r['targets_s'] / r['step_s']:.1f} % of the step",
             (f"main-process mask time: 0 (loader workers); worker-side masker({s.step_batch}) "
              f"{r['mask_s'] * 1e3:.2f} ms per batch")]
    if compiled:
        notes.append(f"first step {r['first_step_s']:.0f} s (compile)")
    arch = "".join(f", {k}={v}" for k, v in s.arch.items())
    return row(step_name(compiled), f"{s.step_batch}×3×{s.frames}×{s.crop}², {ctx.dtype}, AdamW{arch}",
               time_s=r["step_s"], work=s.step_batch, unit="clips/s", ctx=ctx, notes=notes,
               main_process_mask_s=0.0, worker_mask_s=r["mask_s"], targets_s=r["targets_s"],
               peak_memory_bytes=memory, **{k: v for k, v in r.items() if k not in ("step_s", "mask_s", "targets_s")})


def mae_step_row(ctx: Context) -> dict:
    """One MAE ViT-B step (90 % masked, the reference decoder) on `step_batch` clips with loader-made masks."""
    s = ctx.sizes
    torch.manual_seed(0)
    task = build_task(MAE_MODEL, (s.frames, s.crop, s.crop), "mae", **s.mae_arch).to(ctx.device)
    r = measure_step(task, s.step_batch, ctx.device, dtype=ctx.dtype, warmup=2, repeats=s.repeats,
                     deadline=ctx.deadline)
    memory = r.get("max_allocated_bytes") or r["rss_peak_bytes"]
    notes = [f"peak memory {memory / 2**30:.2f} GiB ({'allocated' if 'max_allocated_bytes' in r else 'RSS'})",
             f"pixel targets {r['targets_s'] * 1e3:.1f} ms = {100 * r['targets_s'] / r['step_s']:.1f} % of the step",
             f"{task.masker.keep} of {math.prod(task.patch_grid)} tokens through the encoder"]
    arch = "".join(f", {k}={v}" for k, v in s.mae_arch.items())
    return row("MAE step", f"{s.step_batch}×3×{s.frames}×{s.crop}², {ctx.dtype}, AdamW{arch}", time_s=r["step_s"],
               work=s.step_batch, unit="clips/s", ctx=ctx, notes=notes, targets_s=r["targets_s"],
               peak_memory_bytes=memory, **{k: v for k, v in r.items() if k not in ("step_s", "mask_s", "targets_s")})


def hog_row(ctx: Context) -> dict:
    """HOGLayer on one step's target frames (one per temporal token: T/2 per clip)."""
    s, dev = ctx.sizes, ctx.device
    n = s.frames // 2 * s.step_batch
    frames = torch.rand(n, 3, s.crop, s.crop, device=dev)  # (N, 3, H, W)
    layer = HOGLayer().to(dev)
    with torch.no_grad():
        (t,), _ = paired_median_seconds([lambda: layer(frames)], s.repeats, dev, ctx.deadline)
    return row("HOG targets", f"{n}×3×{s.crop}² frames, fp32", time_s=t, work=n, unit="frames/s",
               notes=[f"{t / n * 1e3:.3f} ms per frame"], ms_per_frame=t / n * 1e3)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def loader_cpu_seconds(batches) -> float | None:
    """CPU seconds so far of a DataLoader iterator's worker processes and this process."""
    workers = [cpu_seconds(w.pid) for w in getattr(batches, "_workers", [])]
    return None if None in workers else sum(workers) + time.process_time()


def loader_names(ctx: Context) -> list[str]:
    return [f"loader, {w} worker{'s' if w > 1 else ''}" for w in sorted({1, ctx.workers})]


def loader_rows(ctx: Context) -> list[dict]:
    """Wall-clock clips/s of the training loader (masks made in its workers) on synthetic shards."""
    s = ctx.sizes
    masker = build_task(STEP_MODEL, (s.frames, s.crop, s.crop), **s.arch).masker
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log(f"writing {s.videos} synthetic videos for the loader")
        # written at the shards' resolution, then re-encoded as scripts/make_shards.py does by default
        # (GOP 16, every 4th frame a reference, CAVLC: docs/data_speed.md)
        sources = write_synthetic_videos(Path(tmp) / "sources", s.videos, frames=s.video_frames, size=s.video_size,
                                         gop=16, noise=10.0)
        manifest = write_shards(sources, Path(tmp) / "shards", max_count=2, short_side=min(s.video_size), gop=16,
                                ref_stride=4, cavlc=True, workers=ctx.workers)
        urls = str(Path(tmp) / "shards" / manifest["url_pattern"])
        for workers, what in zip(sorted({1, ctx.workers}), loader_names(ctx)):
            log(f"timing {what}")
            loader = build_train_loader(urls, frames=s.frames, stride=s.stride, crop=s.crop,
                                        batch_size=s.loader_batch, num_workers=workers, seed=0,
                                        epoch_samples=10**9, shuffle_buffer=8, mask_generator=masker,
                                        normalize=False)  # uint8 clips, as pretraining's data.normalize_on_device
            batches = iter(loader)
            for _ in range(workers):  # warm-up: every worker started, opened a shard, made a batch
                if "mask" not in next(batches):
                    raise RuntimeError("the loader made no masks")
            cpu0 = loader_cpu_seconds(batches)
            timer, clips, _ = time_loader(batches, s.loader_batches * workers)
            cpu1 = loader_cpu_seconds(batches)
            del batches, loader  # ends the workers
            per_cpu = clips / (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None and cpu1 > cpu0 else None
            rows.append(row(what, f"{s.frames}x{s.stride} clips, crop {s.crop}, batch {s.loader_batch}, "
                                  f"{s.video_size[0]}p ref_stride 4 + CAVLC shards, uint8 out",
                            per_s=clips / timer.wall, unit="clips/s", clips=clips, clips_per_cpu_s=per_cpu,
                            notes=[f"{clips} clips after warm-up; main process {clips / timer.cpu:.0f} clips/CPU-s",
                                   f"workers + main process {per_cpu:.1f} clips/CPU-s" if per_cpu else
                                   "workers' CPU time unreadable (no /proc)"]))
    return rows


def add_data_wait(rows: dict, ctx: Context):
    """The step rows' data wait: with the loader (N workers) running alongside, a step waits
    max(0, B / loader rate - step time)."""
    loader = rows.get(loader_names(ctx)[-1], {}).get("throughput")
    for compiled in (False, True):
        step = rows.get(step_name(compiled), {})
        if not step.get("time_s"):
            continue
        if not loader:
            step["notes"].append("data wait: unknown (no loader row)")
            continue
        wait = max(0.0, ctx.sizes.step_batch / loader - step["time_s"])
        step["data_wait_share"] = wait / (step["time_s"] + wait)
        step["notes"].append(f"data wait {100 * step['data_wait_share']:.0f} % ({loader:.1f} clips/s from "
                             f"{ctx.workers} workers vs {step['throughput']:.1f} clips/s of steps)")


CORES_ROW = "cores per GPU (measured)"


def cores_row(rows: dict, ctx: Context) -> dict:
    """Cores that would keep one device fed: the step's clips/s over the loader's clips per
    CPU-second (per core), with the step's data-wait share next to it."""
    loader = rows.get(loader_names(ctx)[-1], {})
    step = next((rows[n] for n in (step_name(True), step_name(False)) if rows.get(n, {}).get("throughput")), None)
    if step is None or not loader.get("clips_per_cpu_s"):
        return row(CORES_ROW, "", notes=["unknown: no step or no loader CPU rate"])
    cores = step["throughput"] / loader["clips_per_cpu_s"]
    wait = step.get("data_wait_share")
    return row(CORES_ROW, f"{step['what']} ÷ {loader['what']}", per_s=cores, unit="cores",
               cores_per_gpu=cores, data_wait_share=wait,
               notes=[f"{step['throughput']:.1f} clips/s of steps ÷ {loader['clips_per_cpu_s']:.1f} clips per "
                      f"CPU-second of the loader (16x4 clips at 224, {ctx.sizes.video_size[0]}p shards written here)",
                      "data wait unknown" if wait is None else
                      f"data wait {100 * wait:.0f} % with {ctx.workers} workers"])


# ----------------------------------------------------------------------------- running and the table


def run_rows(names: list[str], fn, ctx: Context, *, skip: str = "", needs_s: float = 0.0) -> list[dict]:
    """fn() -> the rows `names`; on an error, a skip or an exhausted budget, placeholder rows saying why."""
    left = ctx.deadline - time.perf_counter()
    if not skip and left <= 0:
        skip = "skipped: the time budget (--budget) is spent"
    elif not skip and left < needs_s:
        skip = f"skipped: {left:.0f} s of the time budget (--budget) left, this needs ~{needs_s:.0f} s"
    if not skip:
        try:
            out = fn()
            return out if isinstance(out, list) else [out]
        except Exception as e:  # one row's failure must not end the report
            traceback.print_exc(file=sys.stderr)
            first_line = (str(e).strip().splitlines() or [""])[0]
            skip = f"failed: {type(e).__name__}: {first_line}"[:200]
        finally:
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    log(f"{', '.join(names)}: {skip}")
    return [row(n, "", notes=[skip]) for n in names]


def fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = ["| what | config | median time | throughput | TFLOP/s | MFU | notes |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        t = r["time_s"]
        time_cell = "" if t is None else f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s"
        thru = fmt(r["throughput"], ".4g") + (f" {r['unit']}" if r["throughput"] is not None else "")
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        notes = "; ".join(r["notes"]).replace("|", "/")
        lines.append(f"| {r['what']} | {r['config']} | {time_cell} | {thru} | {fmt(r.get('tflops'), '.3g')} "
                     f"| {mfu} | {notes} |")
    return "\n".join(lines)


def header(ctx: Context, peak_note: str, elapsed: float, budget: float) -> dict:
    dev = ctx.device
    info = dict(torch=torch.__version__, torchvision=torchvision.__version__, python=platform.python_version(),
                device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if dev.type == "cuda" else None,
                dtype=ctx.dtype, threads=torch.get_num_threads(), loader_workers=ctx.workers, peak=peak_note,
                elapsed_s=round(elapsed, 1), budget_s=budget, sizes=dataclasses.asdict(ctx.sizes))
    if dev.type == "cuda":
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
    return info


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="bf16 = autocast")
    p.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke test)")
    p.add_argument("--compile", action="store_true", help="run the torch.compile rows on CPU too")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers (also: 1)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak for MFU on CUDA")
    p.add_argument("--budget", type=float, default=420.0, help="seconds; then remaining repeats and rows are skipped")
    p.add_argument("--out", help="also write the markdown here")
    p.add_argument("--json", help="write the raw numbers here")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       "cpu" if args.device == "auto" else args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    sizes = SMALL if args.small else Sizes()
    peak, peak_note = device_peak(dev, args.dtype, args.peak_tflops, sizes.mm_size)
    ctx = Context(dev, args.dtype, sizes, max(1, args.workers), peak, deadline=start + args.budget)
    log(f"device {dev}, {'small' if args.small else 'full'} sizes, budget {args.budget:.0f} s")

    no_compile = "compile skipped on CPU (--compile to force)" if dev.type == "cpu" and not args.compile else ""
    compile_s = 0 if dev.type == "cpu" else 90  # a guess: one cold inductor compile of MViT-S fwd+bwd on a GPU host
    plan = [  # cheapest first, compiled last (the training step first), so a spent budget costs the least
        (model_names(False), lambda: model_rows(ctx, compiled=False), {}),
        (["HOG targets"], lambda: hog_row(ctx), {}),
        (loader_names(ctx), lambda: loader_rows(ctx), {}),
        ([step_name(False)], lambda: step_row(ctx, compiled=False), {}),
        (["MAE step"], lambda: mae_step_row(ctx), {}),
        ([step_name(True)], lambda: step_row(ctx, compiled=True), dict(skip=no_compile, needs_s=compile_s)),
        (model_names(True), lambda: model_rows(ctx, compiled=True), dict(skip=no_compile, needs_s=2 * compile_s)),
    ]
    rows = {}
    for names, fn, opts in plan:
        rows.update((r["what"], r) for r in run_rows(names, fn, ctx, **opts))
    add_data_wait(rows, ctx)
    rows[CORES_ROW] = cores_row(rows, ctx)

    order = model_names(False) + model_names(True) + [step_name(False), step_name(True), "MAE step", "HOG targets",
                                                      *loader_names(ctx), CORES_ROW]
    info = header(ctx, peak_note, time.perf_counter() - start, args.budget)
    text = "\n".join([f"# GPU report ({'--small' if args.small else 'full sizes'})", "",
                      ", ".join(f"{k} {v}" for k, v in info.items() if k != "sizes" and v is not None), "",
                      table([rows[n] for n in order]), ""])
    print(text)
    for path in (args.out, args.json):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        clean = lambda v: v if not isinstance(v, float) or math.isfinite(v) else None  # noqa: E731 (strict JSON)
        Path(args.json).write_text(json.dumps(dict(info, rows=[{k: clean(v) for k, v in rows[n].items()}
                                                               for n in order]), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
