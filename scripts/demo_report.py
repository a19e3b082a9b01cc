"""Runs the demo ladder over several seeds, for MaskFeat and MAE, and writes it up (docs/demo and the README).

    python scripts/demo_report.py                            # seeds 0 1 2, MaskFeat and MAE (MaskFeat alone: 40 min)
    python scripts/demo_report.py --seeds 0 --no-mae --pretrain-args "train.steps=60" --finetune-args "train.steps=60"
    python scripts/demo_report.py --skip-runs                # only rewrite the report from runs/demo-report

The ladder, every rung tested on the same held-out videos (the demo's val split):
    (a) upper bound   supervised from random init on the labels of every demo video that is
                      not a test video (the pretraining collection, 40 per class)
    (b) low-label     the finetune demo's random-init baseline (8 labelled videos per class)
    (c) low-label     the finetune demo from the MaskFeat export: same labels and recipe as (b)
    (d) frozen        kNN and linear probe on mean-pooled features of the MaskFeat and of a
                      random-init encoder, trained on the labels of (a)
and the same for MAE (`task=mae`: its ViT on 8x96² clips), unless --no-mae:
    (b-ViT)           the MAE finetune demo's random-init ViT baseline
    (c-MAE)           the MAE finetune demo from the MAE export: same labels and recipe as (b-ViT)
    (d)               kNN and linear probe of the MAE and of a random-init ViT encoder
There is no ViT upper bound: (a) is the task's upper bound (what the labels allow), whatever
the model.
Each rung is scored by its 12-way top-1 and by each factor on its own (shape: chance 1/3,
direction: chance 1/4), read from the predictions it wrote.

Per seed S the real entry points run from the repository root (`accelerate launch`, or python
when the command is missing), each a separate process and one run (the caller's environment,
as a user runs it: `accelerate launch` picks the CPU threads unless OMP_NUM_THREADS is set):
    pretrain/run.py train.seed=S train.output_dir=OUT/seedS/pretrain ...          the demo command
    finetune/run.py init=OUT/seedS/pretrain/export/encoder.safetensors train.seed=S
                    train.output_dir=OUT/seedS/finetune ...       the demo command: (c), then (b)
    finetune/run.py init=none data.train=PRETRAIN data.val=VAL train.output_dir=OUT/seedS/upper  (a)
    finetune/run.py frozen_eval=true init=EXPORT|none data.train=PRETRAIN ... OUT/seedS/probe_*  (d)
    pretrain/run.py task=mae train.seed=S train.output_dir=OUT/seedS/pretrain_mae ...    MAE demo
    finetune/run.py task=mae init=OUT/seedS/pretrain_mae/export/encoder.safetensors
                    train.output_dir=OUT/seedS/finetune_mae ...           (c-MAE), then (b-ViT)
    finetune/run.py task=mae frozen_eval=true init=EXPORT|none data.train=PRETRAIN ...
                    OUT/seedS/probe_mae, OUT/seedS/probe_vit_random                         (d)
A seed folder that exists already is an error unless --skip-runs.

The report adds one check of its own per pretraining: the loss on the masked tokens of the
demo's val clips (never seen in pretraining), MaskFeat's HOG or MAE's pixels, next to
predictors that learn nothing (MaskedModeling.trivial_losses; for pixels also the zero
predictor): a model that does not beat them has learned nothing about context.
Errors are one line and exit code 2.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/demo_report.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image, ImageColor, ImageDraw, ImageFont  # noqa: E402

from pretrain.config import ScriptParser  # noqa: E402
from pretrain.masking import upsample_mask  # noqa: E402
from pretrain.runtime import RunError, entry_point  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo-report:start -->", "<!-- demo-report:end -->"
RUNGS = {"upper": "(a) upper bound: all labels, random init", "random": "(b) low-label: random init",
         "maskfeat": "(c) low-label: from MaskFeat"}
MAE_RUNGS = {"vit_random": "(b-ViT) low-label: random-init ViT", "mae": "(c-MAE) low-label: ViT from MAE"}
FACTORS = {"top1": "top-1 ({views} views)", "shape": "shape accuracy", "direction": "direction accuracy"}
# the report's rows: (key in summary.json, label, kind); kind picks the format in `fmt`
ROWS = [
    ("heldout_masked", "held-out masked HOG loss: MaskFeat", "loss"),
    ("heldout_trivial_mean", "held-out masked HOG loss: batch-mean HOG (trivial)", "loss"),
    ("heldout_trivial_visible", "held-out masked HOG loss: mean of the clip's visible tokens (trivial)", "loss"),
    ("ratio_trivial_mean", "MaskFeat / batch-mean loss (< 1: MaskFeat better)", "ratio"),
    ("ratio_trivial_visible", "MaskFeat / visible-mean loss (< 1: MaskFeat better)", "ratio"),
    *[(f"{rung}_{factor}", f"{label}, {what}", "pct") for factor, what in FACTORS.items()
      for rung, label in RUNGS.items()],
    ("gap_closed", "share of the (b) -> (a) top-1 gap that (c) closes", "ratio"),
    ("maskfeat_knn_top1", "(d) frozen kNN top-1: MaskFeat encoder", "pct"),
    ("random_knn_top1", "(d) frozen kNN top-1: random-init encoder", "pct"),
    ("maskfeat_linear_probe_top1", "(d) frozen linear-probe top-1: MaskFeat encoder", "pct"),
    ("random_linear_probe_top1", "(d) frozen linear-probe top-1: random-init encoder", "pct"),
    ("pretrain_seconds", "wall time: the pretraining command", "s"),
    ("finetune_seconds", "wall time: the finetuning command ((c), (b) and its probes)", "s"),
    ("ladder_seconds", "wall time: (a) and the (d) probes of MaskFeat and random init", "s"),
]
# MAE's rows (absent with --no-mae); its upper bound is rung (a)
MAE_ROWS = [
    ("mae_heldout_masked", "held-out masked pixel loss: MAE", "loss"),
    ("mae_heldout_trivial_zero", "held-out masked pixel loss: zero, the mean of normalized pixels (trivial)", "loss"),
    ("mae_heldout_trivial_mean", "held-out masked pixel loss: batch-mean pixels (trivial)", "loss"),
    ("mae_heldout_trivial_visible", "held-out masked pixel loss: mean of the clip's visible tokens (trivial)",
     "loss"),
    ("mae_ratio_trivial_zero", "MAE / zero loss (< 1: MAE better)", "ratio"),
    ("mae_ratio_trivial_visible", "MAE / visible-mean loss (< 1: MAE better)", "ratio"),
    *[(f"{rung}_{factor}", f"{label}, {what}", "pct") for factor, what in FACTORS.items()
      for rung, label in MAE_RUNGS.items()],
    ("mae_knn_top1", "(d) frozen kNN top-1: MAE encoder (ViT)", "pct"),
    ("vit_random_knn_top1", "(d) frozen kNN top-1: random-init ViT", "pct"),
    ("mae_linear_probe_top1", "(d) frozen linear-probe top-1: MAE encoder (ViT)", "pct"),
    ("vit_random_linear_probe_top1", "(d) frozen linear-probe top-1: random-init ViT", "pct"),
    ("mae_pretrain_seconds", "wall time: the MAE pretraining command", "s"),
    ("mae_finetune_seconds", "wall time: the MAE finetuning command ((c-MAE), (b-ViT) and its probes)", "s"),
    ("mae_ladder_seconds", "wall time: the (d) probes of MAE and the random-init ViT", "s"),
]
# the stages of one seed in run order; those that pretrain (and export an encoder)
STAGES = ("pretrain", "finetune", "upper", "probe_maskfeat", "probe_random")
MAE_STAGES = ("pretrain_mae", "finetune_mae", "probe_mae", "probe_vit_random")
PRETRAINING = ("pretrain", "pretrain_mae")
DEMO_COMMANDS = ("pretrain", "finetune", "pretrain_mae", "finetune_mae")  # the demo's defaults: no shard patterns


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(doc=__doc__, script=__file__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/demo-report", help="run folders OUT/seedS/{pretrain,finetune,...}")
    p.add_argument("--docs", default="docs/demo",
                   help="report.md, curves.png, predictions.png, mae_predictions.png, summary.json")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument("--readme", default="README.md", help=f"its text between {START} and {END} is replaced")
    readme.add_argument("--no-readme", action="store_true")
    p.add_argument("--pretrain-args", default="", help='more overrides for the MaskFeat pretraining, e.g. "train.steps=60"')
    p.add_argument("--mae-pretrain-args", default="", help="more overrides for the MAE pretraining (pretrain/run.py "
                                                           "task=mae)")
    p.add_argument("--finetune-args", default="", help="more overrides for finetune/run.py (every finetuning stage, "
                                                       "MAE's included)")
    p.add_argument("--upper-args", default="train.steps=600",
                   help="more overrides for the upper bound (a), after --finetune-args: it has 5x the labelled "
                        "videos of (b), and gets 2x their steps")
    p.add_argument("--no-mae", action="store_true", help="leave MAE out: no MAE stage, row or picture")
    p.add_argument("--skip-runs", action="store_true", help="only read the existing run folders")
    p.add_argument("--add-mae", action="store_true",
                   help="keep each seed's MaskFeat runs (and their times, and the report's MaskFeat environment) and "
                        "run the MAE stages only: MAE added to an existing MaskFeat report")
    p.add_argument("--reuse-pretraining", action="store_true",
                   help="keep each seed's finished pretraining runs, MaskFeat's and MAE's (and their times), and run "
                        "the other stages again")
    return p


# ----------------------------------------------------------------------------- running the stages


def stage_commands(seed: int, out: Path, pretrain_args: list[str], finetune_args: list[str],
                   urls: dict[str, str] | None, upper_args: list[str] = (), *, mae: bool = True,
                   mae_pretrain_args: list[str] = ()) -> dict[str, list[str]]:
    """{stage: entry point and its arguments} of one seed (without the launcher), in run order: the
    two demo commands, then, given the demo's {split: shard pattern} (urls), the ladder's stages, which
    take the finetune demo's recipe (finetune_args included) with other labels; then (mae) the same
    for the MAE demo (`task=mae`), without an upper bound of its own."""
    run = out / f"seed{seed}"

    def export(pretraining: str) -> str:
        return f"init={run / pretraining / 'export' / 'encoder.safetensors'}"

    def pretrain(name: str, *args: str) -> list[str]:
        return ["pretrain/run.py", *args, f"train.seed={seed}", f"train.output_dir={run / name}",
                "train.progress=false"]

    def finetune(name: str, *args: str) -> list[str]:
        return ["finetune/run.py", *args, f"train.seed={seed}", f"train.output_dir={run / name}",
                "train.progress=false", *finetune_args]

    all_labels = (f"data.train={urls['pretrain']}", f"data.val={urls['val']}") if urls is not None else ()
    stages = {"pretrain": [*pretrain("pretrain"), *pretrain_args],
              "finetune": finetune("finetune", export("pretrain"))}
    if urls is not None:
        stages.update(
            upper=[*finetune("upper", "init=none", *all_labels, "compare_scratch=false"), *upper_args],
            probe_maskfeat=finetune("probe_maskfeat", "frozen_eval=true", export("pretrain"), *all_labels),
            probe_random=finetune("probe_random", "frozen_eval=true", "init=none", *all_labels))
    if mae:
        stages.update(pretrain_mae=[*pretrain("pretrain_mae", "task=mae"), *mae_pretrain_args],
                      finetune_mae=finetune("finetune_mae", "task=mae", export("pretrain_mae")))
        if urls is not None:
            stages.update(
                probe_mae=finetune("probe_mae", "task=mae", "frozen_eval=true", export("pretrain_mae"), *all_labels),
                probe_vit_random=finetune("probe_vit_random", "task=mae", "frozen_eval=true", "init=none",
                                          *all_labels))
    return stages


def launcher() -> list[str]:
    # one process: the global batch, hence the recipe, stays the same whatever accelerate config exists
    if shutil.which("accelerate"):
        return ["accelerate", "launch", "--quiet", "--num_processes", "1"]  # --quiet: the child's error is last
    return [sys.executable]


def run_stage(stage: str, seed: int, argv: list[str], env: dict[str, str]) -> float:
    """Run one command from the repository root, its output passed through; -> wall seconds.
    A failure raises RunError with the stage, the seed and the last line written to stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    last = ""
    for line in proc.stderr:
        sys.stderr.write(line)
        last = line.strip() or last
    code = proc.wait()
    if code != 0:
        raise RunError(f"{stage} of seed {seed} failed (exit code {code}): {last or 'nothing on stderr'}")
    return time.perf_counter() - t0


def describe_environment(threads: str, pretrain_args: list[str], finetune_args: list[str],
                         upper_args: list[str] = (), mae_pretrain_args: list[str] | None = ()) -> dict:
    """What the numbers were measured with (the header line of the report); mae_pretrain_args
    None: without MAE."""
    def git(*args):
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain"):
        commit += " + local changes"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return {"date": datetime.date.today().isoformat(), "commit": commit, "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": threads, "device": device,
            "launcher": "accelerate launch" if launcher()[0] == "accelerate" else "python",
            "pretrain_args": pretrain_args, "finetune_args": finetune_args, "upper_args": list(upper_args),
            **({} if mae_pretrain_args is None else {"mae_pretrain_args": list(mae_pretrain_args)})}


def run_all(seeds: list[int], out: Path, pretrain_args: list[str], finetune_args: list[str],
            upper_args: list[str], reuse_pretraining: bool = False, *, mae: bool = True,
            mae_pretrain_args: list[str] = (), add_mae: bool = False) -> None:
    """Every stage for every seed (mae: MAE's too); their wall times go to OUT/seedS/seconds.json.
    reuse_pretraining: a seed with a pretraining export (MaskFeat's, MAE's or both) keeps each
    export there is and its time; its other stages are removed and run again (a new finetuning
    recipe on the same pretrained encoders; a missing MAE pretraining is run).
    add_mae: the seeds' MaskFeat runs stay as they are (their times and environment too); the
    MAE stages run (again), and their environment is kept under environment.json's "mae"."""
    from videodata.demo import demo_urls

    stages = [*STAGES, *(MAE_STAGES if mae else ())]
    if add_mae:
        missing = [out / f"seed{s}" / "pretrain" for s in seeds if not (out / f"seed{s}" / "seconds.json").is_file()]
        if missing or not (out / "environment.json").is_file():
            raise RunError(f"--add-mae needs finished MaskFeat runs: no {missing[0] if missing else out / 'environment.json'}")

    def pretrained(seed: int) -> list[str]:
        """The pretraining stages of `stages` whose export the seed's folder has."""
        return [stage for stage in PRETRAINING if stage in stages and
                (out / f"seed{seed}" / stage / "export" / "encoder.safetensors").is_file()]

    taken = [out / f"seed{s}" for s in seeds if (out / f"seed{s}").exists()
             and not add_mae and not (reuse_pretraining and pretrained(s))]
    if taken:
        raise RunError(f"{taken[0]} exists: report on it with --skip-runs, or remove it to run again")
    # as a user runs the demo: `accelerate launch` picks the CPU threads unless the caller set them
    threads = os.environ.get("OMP_NUM_THREADS") or "accelerate launch's choice"
    env = dict(os.environ)
    out.mkdir(parents=True, exist_ok=True)
    environment = describe_environment(threads, pretrain_args, finetune_args, upper_args,
                                       mae_pretrain_args if mae else None)
    if add_mae:  # the MaskFeat runs' environment stays the report's; MAE's is noted beside it
        kept = json.loads((out / "environment.json").read_text())
        environment = {**kept, "mae_pretrain_args": environment["mae_pretrain_args"], "mae": environment}
    (out / "environment.json").write_text(json.dumps(environment, indent=2))
    for seed in seeds:
        run, seconds, todo = out / f"seed{seed}", {}, stages
        if add_mae or (reuse_pretraining and pretrained(seed)):
            kept = STAGES if add_mae else pretrained(seed)
            todo = [stage for stage in stages if stage not in kept]
            old = run / "seconds.json"  # the kept stages' times (and those of stages not run now, e.g. --no-mae)
            seconds = {k: v for k, v in json.loads(old.read_text()).items() if k not in todo} if old.is_file() else {}
            for stage in todo:
                shutil.rmtree(run / stage, ignore_errors=True)
        # the pretraining command makes the demo data (once): the ladder's commands need its shards
        for stage in todo:
            urls = None if stage in DEMO_COMMANDS else demo_urls(ROOT / "data" / "demo")
            argv = stage_commands(seed, out, pretrain_args, finetune_args, urls, upper_args, mae=mae,
                                  mae_pretrain_args=mae_pretrain_args)[stage]
            print(f"seed {seed}: {stage}: {shlex.join(argv)}", flush=True)
            seconds[stage] = run_stage(stage, seed, [*launcher(), *argv], env)
            print(f"seed {seed}: {stage} done in {seconds[stage]:.0f} s", flush=True)
            run.mkdir(exist_ok=True)
            (run / "seconds.json").write_text(json.dumps(seconds))


# ----------------------------------------------------------------------------- reading the runs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def factor_accuracies(predictions: Path) -> dict[str, float]:
    """A run's test_predictions.csv -> top-1, and the accuracy of each factor of the demo's
    "<shape>_<direction>" class names on its own."""
    import csv
    with open(predictions, newline="") as f:
        rows = [(r["label_name"].split("_"), r["pred_name"].split("_")) for r in csv.DictReader(f)]
    if not rows:
        raise RunError(f"{predictions}: no predictions")
    return {"top1": statistics.fmean(t == p for t, p in rows),
            "shape": statistics.fmean(t[0] == p[0] for t, p in rows),
            "direction": statistics.fmean(t[-1] == p[-1] for t, p in rows)}


def read_seed(run: Path, mae: bool = True) -> dict:
    """The files one seed's runs left -> {"pretrain", "finetune", "scratch", "upper" (and with mae
    "pretrain_mae", "finetune_mae", "scratch_mae"): metrics lines, "rungs": {rung: factor_accuracies},
    "probes": {encoder: frozen_metrics.json}, "seconds": {stage: s} (empty if not timed), "views": "KxS"}."""
    logs = {"pretrain": run / "pretrain", "finetune": run / "finetune", "scratch": run / "finetune" / "scratch",
            "upper": run / "upper"}
    predictions = {"upper": run / "upper", "random": run / "finetune" / "scratch", "maskfeat": run / "finetune"}
    probes = ["maskfeat", "random"]
    if mae:
        logs.update(pretrain_mae=run / "pretrain_mae", finetune_mae=run / "finetune_mae",
                    scratch_mae=run / "finetune_mae" / "scratch")
        predictions.update(vit_random=run / "finetune_mae" / "scratch", mae=run / "finetune_mae")
        probes += ["mae", "vit_random"]
    files = {**{f"log {k}": folder / "metrics.jsonl" for k, folder in logs.items()},
             **{f"predictions {k}": folder / "test_predictions.csv" for k, folder in predictions.items()},
             **{f"probe {k}": run / f"probe_{k}" / "frozen_metrics.json" for k in probes}}
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        raise RunError(f"no {missing[0]} (did the runs finish? without --skip-runs they are made)")
    record = {k: read_jsonl(files[f"log {k}"]) for k in logs}
    record["rungs"] = {rung: factor_accuracies(files[f"predictions {rung}"]) for rung in predictions}
    record["probes"] = {k: json.loads(files[f"probe {k}"].read_text()) for k in probes}
    seconds, test = run / "seconds.json", run / "finetune" / "test_metrics.json"
    record["seconds"] = json.loads(seconds.read_text()) if seconds.is_file() else {}
    record["views"] = json.loads(test.read_text()).get("views", "multi") if test.is_file() else "multi"
    return record


def pretext_numbers(heldout: dict[str, float], ratios: tuple[str, ...], prefix: str = "") -> dict[str, float]:
    """`heldout_losses` -> {prefix + heldout_<loss>: value} and prefix + ratio_trivial_<kind>: the
    model's loss over that trivial predictor's, for each kind in ratios."""
    numbers = {f"{prefix}heldout_{k}": v for k, v in heldout.items()}
    numbers.update({f"{prefix}ratio_trivial_{kind}": heldout["masked"] / heldout[f"trivial_{kind}"] for kind in ratios})
    return numbers


def seed_numbers(record: dict, heldout: dict, mae_heldout: dict | None = None) -> dict[str, float | None]:
    """One seed's row of numbers (keys of ROWS, and of MAE_ROWS when the record has MAE's runs).
    record: `read_seed`; heldout, mae_heldout: `heldout_losses` of MaskFeat and MAE."""
    mae = "mae" in record["rungs"]
    if mae != (mae_heldout is not None):
        raise ValueError("MAE's held-out losses go with a record of MAE's runs, and only with one")
    numbers = pretext_numbers(heldout, ("mean", "visible"))
    if mae:
        numbers.update(pretext_numbers(mae_heldout, ("zero", "visible"), prefix="mae_"))
    for rung, accuracies in record["rungs"].items():
        numbers.update({f"{rung}_{factor}": accuracies[factor] for factor in FACTORS})
    gap = numbers["upper_top1"] - numbers["random_top1"]
    numbers["gap_closed"] = (numbers["maskfeat_top1"] - numbers["random_top1"]) / gap if gap > 0 else None
    for name, probe in record["probes"].items():
        numbers.update({f"{name}_knn_top1": probe["knn_top1"], f"{name}_linear_probe_top1": probe["linear_probe_top1"]})
    seconds = record["seconds"]

    def total(*stages: str) -> float | None:
        return None if any(seconds.get(k) is None for k in stages) else sum(seconds[k] for k in stages)

    numbers.update(pretrain_seconds=seconds.get("pretrain"), finetune_seconds=seconds.get("finetune"),
                   ladder_seconds=total("upper", "probe_maskfeat", "probe_random"))
    if mae:
        numbers.update(mae_pretrain_seconds=seconds.get("pretrain_mae"),
                       mae_finetune_seconds=seconds.get("finetune_mae"),
                       mae_ladder_seconds=total("probe_mae", "probe_vit_random"))
    return numbers


def summarize(per_seed: dict[int, dict]) -> dict:
    """{seed: numbers} -> {"seeds", "per_seed", "mean", "std"}: std is the sample standard
    deviation over seeds (n - 1; None for one seed); a value missing in any seed has no mean."""
    mean, std = {}, {}
    for key in next(iter(per_seed.values())):
        values = [numbers[key] for numbers in per_seed.values()]
        complete = None not in values
        mean[key] = statistics.fmean(values) if complete else None
        std[key] = statistics.stdev(values) if complete and len(values) > 1 else None
    return {"seeds": list(per_seed), "per_seed": {str(s): n for s, n in per_seed.items()}, "mean": mean, "std": std}


# ----------------------------------------------------------------------------- held-out check


@torch.no_grad()
def heldout_losses(task, videos, target: str = "hog") -> dict[str, float]:
    """The task's loss for `target` ("hog": MaskFeat's, "pixel": MAE's normalized pixels) on the
    masked tokens of held-out clips, and the trivial predictors' (MaskedModeling.trivial_losses,
    with the zero predictor for pixels, as training reports them) on the same tokens; masks from
    torch.manual_seed(0). videos: an iterable of (B, 3, T, H, W) batches. Each is a mean over all
    masked tokens (a batch weighs by its masked-token count), so the batch size does not matter.
    -> {"masked", "trivial_mean", "trivial_visible"} (+ "trivial_zero" for pixels)."""
    torch.manual_seed(0)
    sums, count = {"masked": 0.0}, 0
    for video in videos:
        units = task.make_masks(video.shape[0], "cpu")
        masked = upsample_mask(units, task.token_grid).flatten(1)  # (B, N) over the output tokens
        truth = task.targets(video)[target]  # (B, N, C)
        pred = task.heads[target](task.forward_encoder(video, units)).float()  # (B, N, C)
        n = int(masked.sum())
        sums["masked"] += float(((pred - truth) ** 2).mean(-1)[masked].sum())
        for kind, value in task.trivial_losses(truth, masked, with_zero=target == "pixel").items():
            sums[f"trivial_{kind}"] = sums.get(f"trivial_{kind}", 0.0) + float(value) * n
        count += n
    if not count:
        raise RunError("the held-out check saw no masked token (no val clips?)")
    return {k: v / count for k, v in sums.items()}


@functools.lru_cache(maxsize=2)
def val_batches(demo_root: str, frames: int, stride: int, crop: int) -> list[dict]:
    """The demo's val split as central single clips, in loader order (the same for every seed)."""
    from videodata import build_eval_loader
    from videodata.demo import demo_urls
    return list(build_eval_loader(demo_urls(demo_root)["val"], frames=frames, stride=stride, crop=crop,
                                  num_clips=1, num_crops=1, num_workers=0, batch_size=16))


def pretrained_checks(pretrain_dir: Path, target: str, picture: bool) -> tuple[dict, Image.Image | None]:
    """A pretraining run's held-out losses for `target` ("hog" or "pixel"), and (picture=True) its
    predictions on 4 val clips (`predictions_picture`)."""
    from pretrain.run import load_task
    task, cfg = load_task(pretrain_dir)
    d = cfg.data
    batches = val_batches(str(ROOT / d.demo_root), d.frames, d.stride, d.crop)
    losses = heldout_losses(task, [b["video"] for b in batches], target)
    clips = batches[0]
    image = predictions_picture(task, clips["video"][:4], clips["video_id"][:4], target) if picture else None
    return losses, image


# ----------------------------------------------------------------------------- markdown


def fmt(kind: str, mean: float | None, std: float | None = None) -> str:
    """'12.5 ± 2.1 %' (pct, from fractions), '0.0581 ± 0.0012' (loss), '0.934' (ratio), '905 s'."""
    if mean is None:
        return "—"
    scale, spec, unit = {"pct": (100, ".1f", " %"), "loss": (1, ".4f", ""), "ratio": (1, ".3f", ""),
                         "s": (1, ".0f", " s")}[kind]
    spread = f" ± {std * scale:{spec}}" if std is not None else ""
    return f"{mean * scale:{spec}}{spread}{unit}"


def report_markdown(summary: dict, per_seed: bool = True) -> str:
    """The header line, the mean ± std table and (per_seed) the per-seed table (no title, no images)."""
    env, seeds = summary["environment"], summary["seeds"]
    args = " ".join(f"`{k}: {shlex.join(env[k])}`" for k in ("pretrain_args", "mae_pretrain_args", "finetune_args",
                                                               "upper_args") if env.get(k))
    lines = [f"Measured {env['date']} at commit {env['commit']}; torch {env['torch']} on {env['device']}, "
             f"{env['cpus']} CPUs, OMP_NUM_THREADS={env['threads']} in the runs; seeds "
             f"{', '.join(map(str, seeds))}" + (f"; {args}" if args else "") + "." +
             (f" The MAE stages were added {env['mae']['date']} at commit {env['mae']['commit']}, "
              f"OMP_NUM_THREADS={env['mae']['threads']}." if "mae" in env else ""), "",
             f"| | mean ± std over {len(seeds)} seed{'s' * (len(seeds) > 1)} |", "|---|---|"]
    mae = "mae_top1" in summary["mean"]  # MAE's rows unless --no-mae
    labels = [(key, label.format(views=summary.get("views", "multi")), kind)
              for key, label, kind in [*ROWS, *(MAE_ROWS if mae else ())]]
    lines += [f"| {label} | {fmt(kind, summary['mean'][key], summary['std'][key])} |" for key, label, kind in labels]
    if per_seed:
        lines += ["", "| | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(fmt(kind, summary["per_seed"][str(s)][key]) for s in seeds) + " |"
                  for key, label, kind in labels]
    lines += ["", "Every rung is tested on the demo's held-out val videos (12 classes: chance 8.3 % top-1, 33.3 % "
              "shape, 25 % direction). Held-out pretext: one central clip per val video, masks from "
              "torch.manual_seed(0); the trivial predictors need no learning (every masked token predicted as the "
              "batch's mean HOG vector, or as the mean HOG of its clip's visible tokens)."
              + (" MAE (a ViT on 8x96² clips) is checked the same way on its per-patch normalized pixels, where "
                 "predicting 0 is a third trivial predictor; its rungs (b-ViT) and (c-MAE) are the MAE finetune "
                 "demo's, on the same labels and val videos; (a) is the upper bound for both (there is no ViT "
                 "of its own)." if mae else "")
              + " std is the sample standard deviation over seeds."]
    return "\n".join(lines) + "\n"


def images_markdown(folder: str, mae: bool = True) -> str:
    text = (f"![training curves: MaskFeat{' and MAE' * mae} loss vs trivial predictors; val top-1 from "
            f"pretraining vs random init]({folder}/curves.png)\n\n"
            f"![MaskFeat: masked input, HOG target, HOG prediction on val clips]({folder}/predictions.png)\n")
    if mae:
        text += f"\n![MAE: masked input, target, reconstruction on val clips]({folder}/mae_predictions.png)\n"
    return text


def replace_between_markers(text: str, content: str) -> str | None:
    """text with what lies between START and END replaced by content (markers kept); None
    when a marker is missing or they are out of order."""
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if end < 0:
        return None
    return f"{text[:start + len(START)]}\n{content.strip()}\n{text[end:]}"


# ----------------------------------------------------------------------------- pictures (PIL only)

try:
    FONT = ImageFont.load_default(size=12)
except TypeError:  # Pillow < 10.1: the fixed bitmap font
    FONT = ImageFont.load_default()
LINE = 15  # pixels per text line
GRID, INK = (225, 225, 225), (0, 0, 0)
# the MAE panels reuse the MaskFeat panels' colours for the same roles (blue: pretrained, red: random init)
COLORS = {"loss": "#1f77b4", "mean": "#ff7f0e", "visible": "#2ca02c", "zero": "#9467bd", "maskfeat": "#1f77b4",
          "random": "#d62728", "upper": "#7f7f7f", "mae": "#1f77b4", "vit_random": "#d62728"}


@dataclass
class Series:
    xs: list[float]
    ys: list[float]
    color: str
    width: int = 1
    dashed: bool = False
    label: str | None = None  # in the legend when set


@dataclass
class Axes:
    """The data -> pixel map of a plot's frame (y grows upwards in data, downwards in pixels)."""
    left: int
    top: int
    right: int
    bottom: int
    x0: float
    x1: float
    y0: float
    y1: float

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        return (self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left),
                self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` ticks at 1, 2 or 5 x 10^k steps, the first <= lo and the last >= hi."""
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    raw = (hi - lo) / count
    step = next(m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)
                if m * 10 ** math.floor(math.log10(raw)) >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    return f"{value:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def text_width(text: str) -> int:
    return math.ceil(FONT.getlength(text))


def draw_polyline(draw: ImageDraw.ImageDraw, points: list, color, width: int, dashed: bool) -> None:
    """A polyline, or dashes of 7 px with 5 px gaps that run on across its vertices."""
    if not dashed:
        draw.line(points, fill=color, width=width, joint="curve")
        return
    dash, period, travelled = 7.0, 12.0, 0.0
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        length, t = math.hypot(xb - xa, yb - ya), 0.0
        at = lambda s: (xa + (xb - xa) * s / length, ya + (yb - ya) * s / length)  # noqa: E731
        while t < length:
            phase = travelled % period
            end = min(length, t + (dash - phase if phase < dash else period - phase))
            if phase < dash:
                draw.line([at(t), at(end)], fill=color, width=width)
            travelled, t = travelled + end - t, end


def legend_rows(entries: list[Series], width: int) -> list[list[tuple[Series, int]]]:
    """Legend entries (a 24 px line sample, then the label) flowed into rows `width` wide."""
    rows, x = [[]], 0
    for s in entries:
        w = 30 + text_width(s.label) + 16
        if rows[-1] and x + w > width:
            rows, x = rows + [[]], 0
        rows[-1].append((s, x))
        x += w
    return rows if rows[0] else []


def line_plot(series: list[Series], *, title: str, xlabel: str, ylabel: str,
              size: tuple[int, int] = (520, 380)) -> tuple[Image.Image, Axes]:
    """Lines on white: frame, grid, ticks with numbers, title, axis labels, a legend below."""
    W, H = size
    xs = [x for s in series for x in s.xs] or [0.0, 1.0]
    ys = [y for s in series for y in s.ys] or [0.0, 1.0]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    ylabels = [tick_label(v, yt) for v in yt]
    left = 8 + LINE + 6 + max(map(text_width, ylabels)) + 6
    legend = legend_rows([s for s in series if s.label], W - left - 16)
    ax = Axes(left, 8 + LINE + 8, W - 16, H - 8 - len(legend) * LINE - 6 - 2 * LINE - 8, xt[0], xt[-1], yt[0], yt[-1])
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for v in xt:
        px = round(ax.to_pixel(v, 0)[0])
        draw.line([(px, ax.top), (px, ax.bottom)], fill=GRID)
        draw.line([(px, ax.bottom), (px, ax.bottom + 4)], fill=INK)
        label = tick_label(v, xt)
        draw.text((px - text_width(label) / 2, ax.bottom + 5), label, fill=INK, font=FONT)
    for v, label in zip(yt, ylabels):
        py = round(ax.to_pixel(0, v)[1])
        draw.line([(ax.left, py), (ax.right, py)], fill=GRID)
        draw.line([(ax.left - 4, py), (ax.left, py)], fill=INK)
        draw.text((ax.left - 6 - text_width(label), py - LINE / 2), label, fill=INK, font=FONT)
    draw.rectangle([ax.left, ax.top, ax.right, ax.bottom], outline=INK)
    for s in sorted(series, key=lambda s: s.width):  # thin lines first: the thick ones stay visible
        draw_polyline(draw, [ax.to_pixel(x, y) for x, y in zip(s.xs, s.ys)], s.color, s.width, s.dashed)
    draw.text(((ax.left + ax.right - text_width(title)) / 2, 6), title, fill=INK, font=FONT)
    draw.text(((ax.left + ax.right - text_width(xlabel)) / 2, ax.bottom + 5 + LINE), xlabel, fill=INK, font=FONT)
    rotated = Image.new("RGB", (text_width(ylabel) + 2, LINE), "white")
    ImageDraw.Draw(rotated).text((1, 0), ylabel, fill=INK, font=FONT)
    rotated = rotated.rotate(90, expand=True)
    img.paste(rotated, (8, round((ax.top + ax.bottom - rotated.height) / 2)))
    for row, entries in enumerate(legend):
        y = ax.bottom + 5 + 2 * LINE + 6 + row * LINE + LINE / 2
        for s, x in entries:
            draw_polyline(draw, [(ax.left + x, y), (ax.left + x + 24, y)], s.color, max(s.width, 2), s.dashed)
            draw.text((ax.left + x + 30, y - LINE / 2), s.label, fill=INK, font=FONT)
    return img, ax


def curve(log: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """(steps, values) of the metrics lines that have `key`."""
    rows = [r for r in log if key in r]
    return [r["step"] for r in rows], [r[key] * scale for r in rows]


def mean_curve(curves: list[tuple[list, list]]) -> tuple[list, list]:
    """The mean over curves at the steps all of them have."""
    steps = sorted(set.intersection(*(set(xs) for xs, _ in curves)))
    tables = [dict(zip(xs, ys)) for xs, ys in curves]
    return steps, [statistics.fmean(t[s] for t in tables) for s in steps]


def seeds_and_mean(curves: list[tuple[list, list]], color: str, label: str, dashed: bool = False) -> list[Series]:
    """One thin, paler line per seed and their mean thick, in the legend (one seed: the line).
    Seeds without the metric (e.g. val_every=0) are left out."""
    curves = [c for c in curves if c[0]]
    if not curves:
        return []
    pale = tuple(round(c + 0.55 * (255 - c)) for c in ImageColor.getrgb(color))
    thin = [Series(xs, ys, pale, 1, dashed) for xs, ys in curves] if len(curves) > 1 else []
    return thin + [Series(*mean_curve(curves), color, 3, dashed, label)]


def curves_figure(runs: list[dict]) -> Image.Image:
    """Two panels: MaskFeat's train loss vs the trivial predictors' (dashed), and single-view val
    top-1 while finetuning from MaskFeat vs from random init; below them the same two for MAE
    when the records have its runs (read_seed(mae=True)), (a) dashed in both top-1 panels.
    runs: `read_seed` records."""
    def panel(spec, **labels):
        series = []
        for run, key, scale, color, label, dashed in spec:
            series += seeds_and_mean([curve(r[run], key, scale) for r in runs], color, label, dashed)
        return line_plot(series, **labels)[0]

    upper = ("upper", "val/top1", 100, COLORS["upper"], "(a) all labels, random init", True)
    panels = [
        panel([("pretrain", "train/loss_hog", 1, COLORS["loss"], "MaskFeat (masked tokens)", False),
               ("pretrain", "train/trivial_mean_hog", 1, COLORS["mean"], "trivial: batch-mean HOG", True),
               ("pretrain", "train/trivial_visible_hog", 1, COLORS["visible"], "trivial: visible-token mean", True)],
              title="pretraining: HOG loss on masked tokens (train batches)", xlabel="step", ylabel="MSE"),
        panel([upper, ("finetune", "val/top1", 100, COLORS["maskfeat"], "(c) low-label, from MaskFeat", False),
               ("scratch", "val/top1", 100, COLORS["random"], "(b) low-label, random init", False)],
              title="finetuning: val top-1 (single view)", xlabel="step", ylabel="top-1 (%)")]
    if all("pretrain_mae" in r for r in runs):
        panels += [
            panel([("pretrain_mae", "train/loss_pixel", 1, COLORS["loss"], "MAE (masked tokens)", False),
                   ("pretrain_mae", "train/trivial_zero_pixel", 1, COLORS["zero"], "trivial: zero", True),
                   ("pretrain_mae", "train/trivial_visible_pixel", 1, COLORS["visible"], "trivial: visible-token mean",
                    True)],
                  title="MAE pretraining: pixel loss on masked tokens (train batches)", xlabel="step",
                  ylabel="MSE (normalized pixels)"),
            panel([upper, ("finetune_mae", "val/top1", 100, COLORS["mae"], "(c-MAE) low-label, ViT from MAE", False),
                   ("scratch_mae", "val/top1", 100, COLORS["vit_random"], "(b-ViT) low-label, random init", False)],
                  title="MAE finetuning (ViT): val top-1 (single view)", xlabel="step", ylabel="top-1 (%)")]
    width, height = panels[0].width, panels[0].height  # every panel line_plot's default size
    fig = Image.new("RGB", (2 * width, len(panels) // 2 * height), "white")
    for i, img in enumerate(panels):  # two panels a row: MaskFeat's, then MAE's
        fig.paste(img, (i % 2 * width, i // 2 * height))
    return fig


def to_pil(img: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB image."""
    return Image.fromarray((img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


# target -> what a row of the clip pictures shows: (task.images key, the labels of the equal-width
# columns it is cut into); the pictures of one key stay side by side, a 4 px gap between keys
PICTURE_COLUMNS = {"hog": [("mask/input", ["masked input"]), ("hog/target_vs_prediction", ["HOG target",
                                                                                          "HOG prediction"])],
                   "pixel": [("pixel/masked_target_reconstruction", ["masked input", "target", "reconstruction"])]}


@torch.no_grad()
def predictions_picture(task, videos: torch.Tensor, ids: list[str], target: str = "hog") -> Image.Image:
    """A row per clip of task.images under column labels (PICTURE_COLUMNS: hog: masked input | HOG
    target | HOG prediction; pixel: MAE's masked input | target | reconstruction); each row headed
    by the clip's id. videos (n, 3, T, H, W); masks from seed 0. Clips under 96 px wide are drawn
    at twice their size, and every picture at the height of the clip's."""
    torch.manual_seed(0)
    rows = []  # per clip: per key, its picture at the row's height
    for video in videos:
        pics = task.images({"video": video[None]})
        tiles = pics[PICTURE_COLUMNS[target][0][0]].shape[1]  # the clip's frames stacked: rows·H
        height = tiles * (2 if task.input_size[2] < 96 else 1)  # small clips (MaskFeat's 64 px): room for labels
        row = []
        for key, labels in PICTURE_COLUMNS[target]:
            img = to_pil(pics[key])
            img = img.resize((round(img.width * height / img.height), height), Image.NEAREST)
            row.append(img)
        rows.append(row)
    gap = 4
    width = sum(img.width for img in rows[0]) + gap * (len(rows[0]) - 1)
    fig = Image.new("RGB", (width, LINE + 4 + sum(LINE + row[0].height + 4 for row in rows)), "white")
    draw = ImageDraw.Draw(fig)
    x = 0
    for img, (_, labels) in zip(rows[0], PICTURE_COLUMNS[target]):
        for i, text in enumerate(labels):  # column i of the picture: [i·w // n, (i + 1)·w // n)
            left, right = x + i * img.width // len(labels), x + (i + 1) * img.width // len(labels)
            draw.text(((left + right - text_width(text)) / 2, 2), text, fill=INK, font=FONT)
        x += img.width + gap
    y = LINE + 4
    for row, clip in zip(rows, ids):
        draw.text((2, y), str(clip), fill=(90, 90, 90), font=FONT)
        x = 0
        for img in row:
            fig.paste(img, (x, y + LINE))
            x += img.width + gap
        y += LINE + row[0].height + 4
    return fig


# ----------------------------------------------------------------------------- main


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, docs, mae = Path(args.out).resolve(), Path(args.docs).resolve(), not args.no_mae
    pretrain_args, finetune_args = shlex.split(args.pretrain_args), shlex.split(args.finetune_args)
    mae_pretrain_args = shlex.split(args.mae_pretrain_args)
    if not args.skip_runs:
        if args.add_mae and not mae:
            raise RunError("--add-mae and --no-mae contradict each other")
        run_all(args.seeds, out, pretrain_args, finetune_args, shlex.split(args.upper_args), args.reuse_pretraining,
                mae=mae, mae_pretrain_args=mae_pretrain_args, add_mae=args.add_mae)
    runs = {s: read_seed(out / f"seed{s}", mae) for s in args.seeds}

    # the pretraining runs checked per seed: (folder, target, picture file)
    checks = [("pretrain", "hog", "predictions.png")]
    if mae:
        checks.append(("pretrain_mae", "pixel", "mae_predictions.png"))
    per_seed, pictures = {}, {}
    for seed in args.seeds:
        heldout = {}
        for folder, target, picture in checks:
            print(f"seed {seed}: held-out check of {out / f'seed{seed}' / folder}", flush=True)
            heldout[folder], image = pretrained_checks(out / f"seed{seed}" / folder, target,
                                                       picture=picture not in pictures)
            pictures.setdefault(picture, image)
        per_seed[seed] = seed_numbers(runs[seed], heldout["pretrain"], heldout.get("pretrain_mae"))
    env_file = out / "environment.json"  # written when the runs started; else (runs made elsewhere) today's
    environment = (json.loads(env_file.read_text()) if env_file.is_file() else
                   describe_environment("unknown", pretrain_args, finetune_args,
                                        mae_pretrain_args=mae_pretrain_args if mae else None))
    summary = {**summarize(per_seed), "views": runs[args.seeds[0]]["views"], "environment": environment}

    docs.mkdir(parents=True, exist_ok=True)
    body = report_markdown(summary)
    title = "MaskFeat and MAE demo" if mae else "MaskFeat demo"
    (docs / "report.md").write_text(f"# {title}: the ladder\n\n{body}\n{images_markdown('.', mae)}")
    curves_figure(list(runs.values())).save(docs / "curves.png")
    for name, image in pictures.items():
        image.save(docs / name)
    (docs / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {docs / 'report.md'}, curves.png, {', '.join(pictures)}, summary.json")

    if not args.no_readme:
        readme = Path(args.readme).resolve()
        folder = Path(os.path.relpath(docs, readme.parent)).as_posix()
        text = readme.read_text() if readme.is_file() else None
        short = report_markdown(summary, per_seed=False)  # the per-seed table stays in report.md
        updated = (replace_between_markers(text, f"{short}\n{images_markdown(folder, mae)}") if text is not None
                   else None)
        if updated is None:
            print(f"{readme}: {'no such file' if text is None else f'no {START} ... {END} markers'}; not updated")
        else:
            readme.write_text(updated)
            print(f"updated the report in {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
