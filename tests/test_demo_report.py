"""scripts/demo_report.py without training: the summary (mean ± std over seeds, MaskFeat's and
MAE's rows), the markdown tables, the line plot and figures, the README block, the stage commands
and their failure line, the held-out check against the training loss of a tiny MaskFeat and a tiny
MAE, the pictures of both, and main on fake runs (with MAE, and with --no-mae)."""
import importlib.util
import itertools
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageColor

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "demo_report.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = load_script()
# per seed: held-out losses (what pretrained_checks would measure), wall seconds
HELDOUT = {0: {"masked": 0.05, "trivial_mean": 0.1, "trivial_visible": 0.0625},
           1: {"masked": 0.06, "trivial_mean": 0.12, "trivial_visible": 0.1}}
MAE_HELDOUT = {0: {"masked": 0.5, "trivial_mean": 0.98, "trivial_visible": 0.8, "trivial_zero": 1.0},
               1: {"masked": 0.6, "trivial_mean": 0.96, "trivial_visible": 0.75, "trivial_zero": 1.0}}
SECONDS = {0: {"pretrain": 100.0, "finetune": 50.0, "upper": 60.0, "probe_maskfeat": 5.0, "probe_random": 5.0,
               "pretrain_mae": 200.0, "finetune_mae": 80.0, "probe_mae": 7.0, "probe_vit_random": 3.0},
           1: {"pretrain": 120.0, "finetune": 54.0, "upper": 70.0, "probe_maskfeat": 6.0, "probe_random": 6.0,
               "pretrain_mae": 220.0, "finetune_mae": 90.0, "probe_mae": 8.0, "probe_vit_random": 4.0}}
# per seed and rung: (label, prediction) pairs of 8 val videos -> top-1, shape and direction accuracy
PAIRS = {"upper": [("circle_left", "circle_left")] * 6 + [("square_up", "square_down"), ("circle_up", "square_up")],
         "maskfeat": [("circle_left", "circle_left")] * 4 + [("square_up", "triangle_up")] * 4,
         "random": [("circle_left", "circle_left")] * 2 + [("square_up", "square_left")] * 6,
         # MAE's rungs: (c-MAE) top-1 3/8, shape 6/8, direction 5/8 in both seeds; (b-ViT) all wrong in seed 0,
         # seed 1 gets its first video right (1/8 each)
         "mae": [("circle_left", "circle_left")] * 3 + [("square_up", "square_left")] * 3
         + [("triangle_down", "circle_down")] * 2,
         "vit_random": [("circle_left", "square_right")] * 8}
# seed 0 as above (top-1 0.75 / 0.5 / 0.25); seed 1 moves one maskfeat video to wrong -> 0.375
PROBES = {0: {"maskfeat": {"knn_top1": 0.25, "linear_probe_top1": 0.5}, "random": {"knn_top1": 0.125,
                                                                                   "linear_probe_top1": 0.25},
              "mae": {"knn_top1": 0.4, "linear_probe_top1": 0.6}, "vit_random": {"knn_top1": 0.1,
                                                                                 "linear_probe_top1": 0.2}},
          1: {"maskfeat": {"knn_top1": 0.35, "linear_probe_top1": 0.5}, "random": {"knn_top1": 0.125,
                                                                                  "linear_probe_top1": 0.05},
              "mae": {"knn_top1": 0.5, "linear_probe_top1": 0.7}, "vit_random": {"knn_top1": 0.1,
                                                                                 "linear_probe_top1": 0.3}}}
MAE_PARTS = ("pretrain_mae", "finetune_mae", "probe_mae", "probe_vit_random")  # the MAE stages' folders


def write_predictions(path: Path, pairs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["video_id,label,label_name,pred,pred_name,prob,num_views,top5"]
    rows += [f"v{i},0,{t},0,{p},0.5,3,{p}" for i, (t, p) in enumerate(pairs)]
    path.write_text("\n".join(rows) + "\n")
ENV = {"date": "2030-01-02", "commit": "abc1234 + local changes", "torch": "9.9", "cpus": 2, "threads": "2",
       "device": "CPU", "launcher": "accelerate launch", "pretrain_args": ["train.steps=60"], "finetune_args": []}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def runs(tmp_path):
    """OUT/seed0, OUT/seed1 as the stages leave them, MAE's included (only the files the report reads)."""
    out = tmp_path / "runs"
    for seed in (0, 1):
        run = out / f"seed{seed}"
        write_jsonl(run / "pretrain" / "metrics.jsonl", [
            {"step": s, "train/loss": 0.1 / s, "train/loss_hog": 0.1 / s + seed * 0.01, "train/trivial_mean_hog": 0.1,
             "train/trivial_visible_hog": 0.08, "train/lr": 1e-3} for s in (10, 20, 30)])
        for part, top1 in (("finetune", [0.2, 0.5]), ("finetune/scratch", [0.1, 0.2])):
            write_jsonl(run / part / "metrics.jsonl", [
                {"step": 10, "train/loss": 2.4, "train/acc": 0.1}, {"step": 20, "val/top1": top1[0]},
                {"step": 20, "train/loss": 2.3, "train/acc": 0.2}, {"step": 40, "val/top1": top1[1]}])
        write_jsonl(run / "upper" / "metrics.jsonl", [{"step": 20, "val/top1": 0.3}, {"step": 40, "val/top1": 0.7}])
        (run / "finetune" / "test_metrics.json").write_text(json.dumps({"top1": 0.5, "views": "3x1"}))
        maskfeat = PAIRS["maskfeat"] if seed == 0 else PAIRS["maskfeat"][1:] + [("circle_left", "circle_up")]
        for part, pairs in (("upper", PAIRS["upper"]), ("finetune", maskfeat), ("finetune/scratch", PAIRS["random"])):
            write_predictions(run / part / "test_predictions.csv", pairs)
        write_jsonl(run / "pretrain_mae" / "metrics.jsonl", [
            {"step": s, "train/loss": 1 / s, "train/loss_pixel": 1 / s + seed * 0.1, "train/trivial_mean_pixel": 0.99,
             "train/trivial_visible_pixel": 0.7, "train/trivial_zero_pixel": 1.0, "train/lr": 1e-3}
            for s in (10, 20, 30)])
        for part, top1 in (("finetune_mae", [0.3, 0.4]), ("finetune_mae/scratch", [0.05, 0.1])):
            write_jsonl(run / part / "metrics.jsonl", [{"step": 20, "val/top1": top1[0]}, {"step": 40, "val/top1": top1[1]}])
        vit_random = PAIRS["vit_random"] if seed == 0 else [("circle_left", "circle_left")] + PAIRS["vit_random"][1:]
        for part, pairs in (("finetune_mae", PAIRS["mae"]), ("finetune_mae/scratch", vit_random)):
            write_predictions(run / part / "test_predictions.csv", pairs)
        for name, probe in PROBES[seed].items():
            (run / f"probe_{name}").mkdir(parents=True)
            (run / f"probe_{name}" / "frozen_metrics.json").write_text(json.dumps(probe))
        (run / "seconds.json").write_text(json.dumps(SECONDS[seed]))
    return out


def summary_of(runs_dir: Path, mae: bool = True) -> dict:
    records = {s: report.read_seed(runs_dir / f"seed{s}", mae) for s in (0, 1)}
    per_seed = {s: report.seed_numbers(r, HELDOUT[s], MAE_HELDOUT[s] if mae else None) for s, r in records.items()}
    return {**report.summarize(per_seed), "views": records[0]["views"], "environment": ENV}


# ----------------------------------------------------------------------------- numbers and tables


def test_factor_accuracies_from_a_predictions_file(tmp_path):
    write_predictions(tmp_path / "p.csv", PAIRS["upper"])
    acc = report.factor_accuracies(tmp_path / "p.csv")
    assert acc == {"top1": 0.75, "shape": 7 / 8, "direction": 7 / 8}
    (tmp_path / "empty.csv").write_text("video_id,label,label_name,pred,pred_name,prob,num_views,top5\n")
    with pytest.raises(report.RunError, match="no predictions"):
        report.factor_accuracies(tmp_path / "empty.csv")


def test_summary_mean_and_sample_std_per_quantity(runs):
    s = summary_of(runs)
    assert s["seeds"] == [0, 1]
    root2 = 2 ** 0.5  # sample std of two values a, b: |a - b| / sqrt(2)
    by_hand = {  # key: (mean, std)
        "heldout_masked": (0.055, 0.01 / root2), "heldout_trivial_mean": (0.11, 0.02 / root2),
        "heldout_trivial_visible": (0.08125, 0.0375 / root2),
        "ratio_trivial_mean": (0.5, 0.0), "ratio_trivial_visible": (0.7, 0.2 / root2),  # 0.05/0.0625, 0.06/0.1
        "upper_top1": (0.75, 0.0), "upper_shape": (7 / 8, 0.0), "upper_direction": (7 / 8, 0.0),
        "random_top1": (0.25, 0.0), "random_shape": (1.0, 0.0), "random_direction": (0.25, 0.0),
        "maskfeat_top1": (0.4375, 0.125 / root2), "maskfeat_shape": (0.5, 0.0),
        "maskfeat_direction": (0.9375, 0.125 / root2),
        "gap_closed": (0.375, 0.25 / root2),  # (0.5 - 0.25) / (0.75 - 0.25), (0.375 - 0.25) / 0.5
        "maskfeat_knn_top1": (0.3, 0.1 / root2), "random_knn_top1": (0.125, 0.0),
        "maskfeat_linear_probe_top1": (0.5, 0.0), "random_linear_probe_top1": (0.15, 0.2 / root2),
        "pretrain_seconds": (110.0, 20 / root2), "finetune_seconds": (52.0, 4 / root2),
        "ladder_seconds": (76.0, 12 / root2),
        # MAE: held-out pixel losses and ratios 0.5/1, 0.6/1 and 0.5/0.8, 0.6/0.75
        "mae_heldout_masked": (0.55, 0.1 / root2), "mae_heldout_trivial_zero": (1.0, 0.0),
        "mae_heldout_trivial_mean": (0.97, 0.02 / root2), "mae_heldout_trivial_visible": (0.775, 0.05 / root2),
        "mae_ratio_trivial_zero": (0.55, 0.1 / root2), "mae_ratio_trivial_visible": (0.7125, 0.175 / root2),
        "mae_top1": (3 / 8, 0.0), "mae_shape": (6 / 8, 0.0), "mae_direction": (5 / 8, 0.0),
        "vit_random_top1": (1 / 16, 0.125 / root2), "vit_random_shape": (1 / 16, 0.125 / root2),
        "vit_random_direction": (1 / 16, 0.125 / root2),
        "mae_knn_top1": (0.45, 0.1 / root2), "vit_random_knn_top1": (0.1, 0.0),
        "mae_linear_probe_top1": (0.65, 0.1 / root2), "vit_random_linear_probe_top1": (0.25, 0.1 / root2),
        "mae_pretrain_seconds": (210.0, 20 / root2), "mae_finetune_seconds": (85.0, 10 / root2),
        "mae_ladder_seconds": (11.0, 2 / root2)}  # 7 + 3, 8 + 4
    assert set(s["mean"]) == set(by_hand) == {key for key, _, _ in report.ROWS + report.MAE_ROWS}
    for key, (mean, std) in by_hand.items():
        assert s["mean"][key] == pytest.approx(mean, abs=1e-12), key
        assert s["std"][key] == pytest.approx(std, abs=1e-12), key
    assert s["per_seed"]["1"]["maskfeat_top1"] == 0.375 and s["per_seed"]["0"]["random_linear_probe_top1"] == 0.25


def test_summary_of_one_seed_and_of_missing_times(runs):
    record = report.read_seed(runs / "seed0")
    untimed = report.seed_numbers({**record, "seconds": {}}, HELDOUT[0], MAE_HELDOUT[0])
    one = report.summarize({0: untimed})
    assert one["mean"]["maskfeat_top1"] == 0.5 and one["std"]["maskfeat_top1"] is None  # no spread from one seed
    assert one["mean"]["pretrain_seconds"] is None  # not timed (--skip-runs on runs made elsewhere)
    assert one["mean"]["mae_pretrain_seconds"] is None and one["mean"]["mae_ladder_seconds"] is None
    seed1 = report.read_seed(runs / "seed1")
    two = report.summarize({0: untimed, 1: report.seed_numbers(seed1, HELDOUT[1], MAE_HELDOUT[1])})
    assert two["mean"]["finetune_seconds"] is None and two["mean"]["maskfeat_top1"] == pytest.approx(0.4375)
    # runs timed before MAE was in the report: MaskFeat's times stay, MAE's are missing
    before = {k: v for k, v in SECONDS[1].items() if k not in MAE_PARTS}
    numbers = report.seed_numbers({**seed1, "seconds": before}, HELDOUT[1], MAE_HELDOUT[1])
    assert numbers["ladder_seconds"] == 82.0 and numbers["mae_ladder_seconds"] is None


def test_without_mae_the_summary_has_maskfeats_rows_only(runs):
    with_mae, without = summary_of(runs), summary_of(runs, mae=False)
    assert set(without["mean"]) == {key for key, _, _ in report.ROWS}
    assert without["mean"] == {k: v for k, v in with_mae["mean"].items() if k in without["mean"]}
    lines = report.report_markdown(without).splitlines()
    assert not [line for line in lines if "MAE" in line or "ViT" in line]
    assert "MAE (a ViT on 8x96² clips)" in report.report_markdown(with_mae)
    record = report.read_seed(runs / "seed0")
    with pytest.raises(ValueError, match="MAE's held-out losses"):  # one without the other is a mistake
        report.seed_numbers(record, HELDOUT[0])
    with pytest.raises(ValueError, match="MAE's held-out losses"):
        report.seed_numbers(report.read_seed(runs / "seed0", mae=False), HELDOUT[0], MAE_HELDOUT[0])


def test_no_gap_to_close_is_not_a_number(runs):
    record = report.read_seed(runs / "seed0")
    record["rungs"]["upper"] = dict(record["rungs"]["random"])  # (a) no better than (b)
    assert report.seed_numbers(record, HELDOUT[0], MAE_HELDOUT[0])["gap_closed"] is None


def test_markdown_tables_hold_mean_std_and_per_seed_values(runs):
    text = report.report_markdown(summary_of(runs))
    lines = text.splitlines()
    assert lines[0].startswith("Measured 2030-01-02 at commit abc1234 + local changes; torch 9.9 on CPU, 2 CPUs, "
                               "OMP_NUM_THREADS=2")
    assert "`pretrain_args: train.steps=60`" in lines[0] and "finetune_args" not in lines[0]

    def rows(label):  # the label's line in the mean ± std table, then in the per-seed table
        found = [line for line in lines if line.startswith(f"| {label} |")]
        assert len(found) == 2, label
        return found

    assert rows("(c) low-label: from MaskFeat, top-1 (3x1 views)") == [
        "| (c) low-label: from MaskFeat, top-1 (3x1 views) | 43.8 ± 8.8 % |",
        "| (c) low-label: from MaskFeat, top-1 (3x1 views) | 50.0 % | 37.5 % |"]
    assert rows("(a) upper bound: all labels, random init, direction accuracy")[0].endswith("| 87.5 ± 0.0 % |")
    assert rows("(d) frozen linear-probe top-1: random-init encoder")[0].endswith("| 15.0 ± 14.1 % |")
    assert rows("share of the (b) -> (a) top-1 gap that (c) closes")[0].endswith("| 0.375 ± 0.177 |")
    assert rows("held-out masked HOG loss: MaskFeat") == ["| held-out masked HOG loss: MaskFeat | 0.0550 ± 0.0071 |",
                                                          "| held-out masked HOG loss: MaskFeat | 0.0500 | 0.0600 |"]
    assert rows("MaskFeat / visible-mean loss (< 1: MaskFeat better)")[0].endswith("| 0.700 ± 0.141 |")
    assert rows("wall time: the pretraining command") == ["| wall time: the pretraining command | 110 ± 14 s |",
                                                          "| wall time: the pretraining command | 100 s | 120 s |"]
    assert rows("(c-MAE) low-label: ViT from MAE, top-1 (3x1 views)") == [
        "| (c-MAE) low-label: ViT from MAE, top-1 (3x1 views) | 37.5 ± 0.0 % |",
        "| (c-MAE) low-label: ViT from MAE, top-1 (3x1 views) | 37.5 % | 37.5 % |"]
    assert rows("(b-ViT) low-label: random-init ViT, direction accuracy")[1].endswith("| 0.0 % | 12.5 % |")
    assert rows("held-out masked pixel loss: MAE") == ["| held-out masked pixel loss: MAE | 0.5500 ± 0.0707 |",
                                                       "| held-out masked pixel loss: MAE | 0.5000 | 0.6000 |"]
    assert rows("MAE / visible-mean loss (< 1: MAE better)")[1].endswith("| 0.625 | 0.800 |")
    assert rows("(d) frozen linear-probe top-1: random-init ViT")[0].endswith("| 25.0 ± 7.1 % |")
    assert rows("wall time: the MAE pretraining command")[0].endswith("| 210 ± 14 s |")
    labels = [line.split(" | ")[0] for line in lines if line.startswith("| ")]
    assert labels.index("| (d) frozen linear-probe top-1: random-init encoder") < labels.index(
        "| held-out masked pixel loss: MAE")  # MAE's rows after MaskFeat's
    short = report.report_markdown(summary_of(runs), per_seed=False).splitlines()
    assert "| | seed 0 | seed 1 |" not in short and short[:5] == lines[:5]
    assert "| | mean ± std over 2 seeds |" in lines and "| | seed 0 | seed 1 |" in lines


def test_fmt_units_and_missing_values():
    assert report.fmt("pct", 0.125, 0.0204) == "12.5 ± 2.0 %"
    assert report.fmt("pct", 0.125) == "12.5 %"
    assert report.fmt("s", 905.4, 12.6) == "905 ± 13 s"
    assert report.fmt("loss", None, 0.1) == "—"


# ----------------------------------------------------------------------------- README block


def test_readme_block_replaced_and_the_rest_kept():
    before, after = "# Title\n\nintro\n", "\n## Next\nmore text\n"
    text = f"{before}{report.START}\nold table\n![old](x.png)\n{report.END}{after}"
    new = report.replace_between_markers(text, "| new | table |\n\n![curves](docs/demo/curves.png)\n")
    assert new == f"{before}{report.START}\n| new | table |\n\n![curves](docs/demo/curves.png)\n{report.END}{after}"
    assert report.replace_between_markers(new, "again") == f"{before}{report.START}\nagain\n{report.END}{after}"


@pytest.mark.parametrize("text", ["no markers at all\n", f"only {report.START} here\n", f"only {report.END}\n",
                                  f"{report.END} before {report.START}\n"])
def test_readme_without_both_markers_in_order_is_left_alone(text):
    assert report.replace_between_markers(text, "new") is None


# ----------------------------------------------------------------------------- plots


def pixels_of(img: Image.Image, color: str) -> list[tuple[int, int]]:
    rgb, (w, h), data = ImageColor.getrgb(color), img.size, img.load()
    return [(x, y) for y in range(h) for x in range(w) if data[x, y] == rgb]


def test_nice_ticks_cover_the_range_in_round_steps():
    assert report.nice_ticks(0, 1.2) == [0, 0.5, 1.0, 1.5]
    assert report.nice_ticks(3, 47) == [0, 10, 20, 30, 40, 50]
    assert report.nice_ticks(0.052, 0.061) == [0.052, 0.054, 0.056, 0.058, 0.06, 0.062]
    assert report.nice_ticks(5, 5)[0] < 5 < report.nice_ticks(5, 5)[-1]  # a flat line gets a range
    assert [report.tick_label(v, [0, 0.002]) for v in (0.052, 0.06)] == ["0.052", "0.060"]


def test_line_plot_draws_lines_where_the_data_says():
    series = [report.Series([0, 10], [1.2, 1.2], "#ff0000", label="flat"),
              report.Series([0, 10], [0, 1], "#0000ff", label="rising"),
              report.Series([0, 10], [0.3, 0.3], "#00aa00", dashed=True, label="dashed")]
    img, ax = report.line_plot(series, title="t", xlabel="step", ylabel="loss", size=(400, 300))
    assert img.size == (400, 300) and len(img.getcolors(1 << 16)) > 4
    assert 0 < ax.left < ax.right < 400 and 0 < ax.top < ax.bottom < 300
    data = img.load()  # the frame is where the returned axes say: ticks span x 0..10, y 0..1.5
    mid_x, mid_y = (ax.left + ax.right) // 2, (ax.top + ax.bottom) // 2
    for xy in ((ax.left, mid_y), (ax.right, mid_y), (mid_x, ax.top), (mid_x, ax.bottom)):
        assert data[xy] == (0, 0, 0), xy
    height, width = ax.bottom - ax.top, ax.right - ax.left

    inside = lambda pts: [(x, y) for x, y in pts if y < ax.bottom]  # noqa: E731 (legend samples lie below)
    def one_row(pts, y):  # a horizontal line of width 1 at data y (0..1.5), to the pixel
        rows = {row for _, row in pts}
        return len(rows) == 1 and abs(rows.pop() - (ax.bottom - y / 1.5 * height)) <= 1

    red = inside(pixels_of(img, "#ff0000"))
    assert one_row(red, 1.2)
    assert min(x for x, _ in red) == ax.left and max(x for x, _ in red) == ax.right  # x = 0..10: the full width
    blue = inside(pixels_of(img, "#0000ff"))
    at_middle = [y for x, y in blue if x == ax.left + width // 2]  # x = 5: y = 0.5
    assert at_middle and abs(statistics.fmean(at_middle) - (ax.bottom - 0.5 / 1.5 * height)) <= 1.5
    assert max(y for _, y in blue) >= ax.bottom - 1 and min(y for _, y in blue) <= ax.bottom - height / 1.5 + 1
    green = inside(pixels_of(img, "#00aa00"))
    assert one_row(green, 0.3)
    assert 0.4 * width < len(green) < 0.8 * width  # dashes: gaps, but most of the way drawn
    for color in ("#ff0000", "#0000ff", "#00aa00"):  # a legend sample of each, under the axis labels
        assert any(y > ax.bottom + 20 for _, y in pixels_of(img, color)), color


def test_mean_curve_at_common_steps():
    steps, values = report.mean_curve([([10, 20, 30], [1.0, 2.0, 3.0]), ([20, 30, 40], [4.0, 6.0, 8.0])])
    assert steps == [20, 30] and values == [3.0, 4.5]


def test_curves_figure_panels_from_runs(runs):
    records = [report.read_seed(runs / f"seed{s}", mae=False) for s in (0, 1)]
    assert report.curve(records[0]["finetune"], "val/top1", 100) == ([20, 40], [20.0, 50.0])
    fig = report.curves_figure(records)
    assert fig.size == (1040, 380)
    left, right = fig.crop((0, 0, 520, 380)), fig.crop((520, 0, 1040, 380))
    c = report.COLORS
    for color in (c["loss"], c["mean"], c["visible"]):  # the thick mean lines of the pretraining panel
        assert len(pixels_of(left, color)) > 100, color
    assert len(pixels_of(right, c["maskfeat"])) > 100 and len(pixels_of(right, c["random"])) > 100
    assert not pixels_of(left, c["random"]) and not pixels_of(right, c["mean"])
    pale = tuple(round(v + 0.55 * (255 - v)) for v in ImageColor.getrgb(c["loss"]))  # the thin per-seed lines
    assert {color: n for n, color in left.getcolors(1 << 16)}.get(pale, 0) > 50


def test_curves_figure_with_mae_has_a_second_row(runs):
    records = [report.read_seed(runs / f"seed{s}") for s in (0, 1)]
    fig = report.curves_figure(records)
    assert fig.size == (1040, 760)
    top = fig.crop((0, 0, 1040, 380))
    assert top.tobytes() == report.curves_figure([report.read_seed(runs / f"seed{s}", mae=False)
                                                  for s in (0, 1)]).tobytes()  # MaskFeat's row as without MAE
    left, right = fig.crop((0, 380, 520, 760)), fig.crop((520, 380, 1040, 760))
    c = report.COLORS
    for color in (c["loss"], c["zero"], c["visible"]):  # MAE's loss vs the zero and visible-mean predictors
        assert len(pixels_of(left, color)) > 100, color
    assert not pixels_of(left, c["mean"]) and not pixels_of(top, c["zero"])
    for color in (c["mae"], c["vit_random"], c["upper"]):  # (c-MAE), (b-ViT), and (a) for reference
        assert len(pixels_of(right, color)) > 100, color
    # the MAE loss line: 1/s (seed 0) and 1/s + 0.1 (seed 1) -> mean 1/s + 0.05, drawn from step 10 to 30
    assert report.mean_curve([report.curve(r["pretrain_mae"], "train/loss_pixel") for r in records]) == (
        [10, 20, 30], [pytest.approx(0.15), pytest.approx(0.1), pytest.approx(1 / 30 + 0.05)])


def test_curves_figure_without_validation_lines(runs):
    records = [report.read_seed(runs / f"seed{s}", mae=False) for s in (0, 1)]
    for r in records:  # finetuned with val_every=0: no val/top1 anywhere
        r["finetune"] = r["scratch"] = [line for line in r["finetune"] if "val/top1" not in line]
    fig = report.curves_figure(records)
    right = fig.crop((520, 0, 1040, 380))
    assert fig.size == (1040, 380) and not pixels_of(right, report.COLORS["random"])
    assert pixels_of(fig.crop((0, 0, 520, 380)), report.COLORS["loss"])


# ----------------------------------------------------------------------------- the model checks


@pytest.fixture(scope="module")
def tiny_task():
    import mvit
    from pretrain.maskfeat import MaskFeat
    torch.manual_seed(0)
    size = (4, 64, 64)
    encoder = mvit.create_model("mvitv2_demo_8x2_maskfeat", pretraining=True, input_size=size)
    return MaskFeat(encoder, size).eval()


MAE_SIZE = (4, 32, 48)  # 2x2x3 tokens of 2x16x16 px (as tests/test_mae_task.py)


@pytest.fixture(scope="module")
def tiny_mae():
    import mvit
    from pretrain.maskfeat import MaskedModeling
    torch.manual_seed(0)
    encoder = mvit.create_model("vit_b_16x4", pretraining="mae", depths=(2,), embed_dim=32, num_heads=4,
                                input_size=MAE_SIZE)
    return MaskedModeling(encoder, MAE_SIZE, encoder_mode="drop", mask_ratio=0.5, mask_mode="random", targets=("pixel",),
                          decoder_dim=16, decoder_depth=1, decoder_heads=2).eval()


@pytest.mark.parametrize("which", ["maskfeat", "mae"])
def test_heldout_losses_are_the_training_loss_and_trivials_weighted_by_masked_tokens(which, request):
    task = request.getfixturevalue({"maskfeat": "tiny_task", "mae": "tiny_mae"}[which])
    target = {"maskfeat": "hog", "mae": "pixel"}[which]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(3, 3, *task.input_size, generator=g), torch.randn(1, 3, *task.input_size, generator=g)]
    got = report.heldout_losses(task, batches, target)
    torch.manual_seed(0)  # the task's own forward with the same masks gives the per-batch values
    with torch.no_grad():
        reports = [task({"video": b})[1] for b in batches]
    weights = [float(r["mask_fraction"]) * len(b) for r, b in zip(reports, batches)]  # masked tokens, up to N
    kinds = ["mean", "visible", *(["zero"] if target == "pixel" else [])]  # pixels: the zero predictor too
    assert set(got) == {"masked", *(f"trivial_{k}" for k in kinds)}
    for name, key in [("masked", f"loss_{target}"), *((f"trivial_{k}", f"trivial_{k}_{target}") for k in kinds)]:
        expected = sum(float(r[key]) * w for r, w in zip(reports, weights)) / sum(weights)
        assert got[name] == pytest.approx(expected, rel=1e-5), name
    assert report.heldout_losses(task, batches, target) == got  # seeded inside: the same masks every call


def test_predictions_picture_layout_and_reproducible(tiny_task):
    videos = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(123)
    first = report.predictions_picture(tiny_task, videos, ["clip-a", "clip-b"])
    torch.manual_seed(456)  # another global state: the picture must not depend on it
    second = report.predictions_picture(tiny_task, videos, ["clip-a", "clip-b"])
    # per clip: a label line, then [input | target | prediction] x 2 temporal tokens, 64 px clips drawn at 128
    assert first.size == (128 + 4 + 256, report.LINE + 4 + 2 * (report.LINE + 256 + 4))
    assert first.tobytes() == second.tobytes()
    y = report.LINE + 4 + report.LINE  # the first clip's pictures
    hog = first.crop((132, y, 132 + 256, y + 256))
    assert len(hog.getcolors(1 << 16)) > 10  # glyphs, not a blank


def test_mae_picture_rows_are_masked_input_target_reconstruction(tiny_mae):
    videos = torch.rand(2, 3, *MAE_SIZE, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(123)
    fig = report.predictions_picture(tiny_mae, videos, ["clip-a", "clip-b"], "pixel")
    torch.manual_seed(0)  # the masks it drew: seed 0, one clip after the other
    masks = [tiny_mae.make_masks(1, "cpu")[0] for _ in videos]  # (t, h, w) = (2, 2, 3) each
    # per clip: a label line, then 3 columns of 48 px frames (2 temporal tokens stacked), drawn at twice the size
    row = report.LINE + 2 * 64 + 4
    assert fig.size == (3 * 96, report.LINE + 4 + 2 * row)
    for c, mask in enumerate(masks):
        y0 = report.LINE + 4 + c * row + report.LINE

        def patch(column, t, h, w):  # one 16x16 px token, 32x32 in the picture, as int arrays
            x, y = column * 96 + 32 * w, y0 + 64 * t + 32 * h
            return torch.from_numpy(np.array(fig.crop((x, y, x + 32, y + 32)))).int()  # (32, 32, 3)

        for t, h, w in itertools.product(range(2), range(2), range(3)):
            shown, target, recon = (patch(k, t, h, w) for k in range(3))
            if mask[t, h, w]:  # masked: shown darker (0.4x), reconstructed by the model (not the target)
                assert (shown - (0.4 * target).round()).abs().max() <= 1
                assert not torch.equal(recon, target)
            else:  # visible: the clip itself in all three columns
                assert torch.equal(shown, target) and torch.equal(recon, target)
        assert 0 < int(mask.sum()) < mask.numel()
    band = fig.crop((0, 0, fig.width, report.LINE))
    for k in range(3):  # a label over each column
        assert band.crop((k * 96, 0, k * 96 + 96, report.LINE)).getextrema()[0][0] < 100, k


# ----------------------------------------------------------------------------- running and main


def test_stage_commands_of_a_seed(tmp_path):
    urls = {"pretrain": "P-{0..1}.tar", "train": "T.tar", "val": "V.tar"}
    cmds = report.stage_commands(3, tmp_path, ["train.steps=5"], ["train.steps=7", "val_every=0"], urls,
                                 ["train.steps=9"], mae_pretrain_args=["train.steps=11"])
    run = tmp_path / "seed3"
    export = run / "pretrain" / "export" / "encoder.safetensors"
    mae_export = run / "pretrain_mae" / "export" / "encoder.safetensors"
    assert list(cmds) == [*report.STAGES, *report.MAE_STAGES] == [
        "pretrain", "finetune", "upper", "probe_maskfeat", "probe_random",
        "pretrain_mae", "finetune_mae", "probe_mae", "probe_vit_random"]
    # no demo data yet: the demo commands only
    assert list(report.stage_commands(3, tmp_path, [], [], None)) == ["pretrain", "finetune", "pretrain_mae",
                                                                      "finetune_mae"]
    assert list(report.stage_commands(3, tmp_path, [], [], urls, mae=False)) == list(report.STAGES)  # --no-mae
    assert cmds["pretrain"] == ["pretrain/run.py", "train.seed=3", f"train.output_dir={run / 'pretrain'}",
                                "train.progress=false", "train.steps=5"]
    assert cmds["finetune"] == ["finetune/run.py", f"init={export}", "train.seed=3",
                                f"train.output_dir={run / 'finetune'}", "train.progress=false", "train.steps=7",
                                "val_every=0"]
    # (a): random init on every labelled non-test video, the finetune recipe, then its own steps (last wins)
    assert cmds["upper"] == ["finetune/run.py", "init=none", "data.train=P-{0..1}.tar", "data.val=V.tar",
                             "compare_scratch=false", "train.seed=3", f"train.output_dir={run / 'upper'}",
                             "train.progress=false", "train.steps=7", "val_every=0", "train.steps=9"]
    assert cmds["probe_maskfeat"][:4] == ["finetune/run.py", "frozen_eval=true", f"init={export}",
                                          "data.train=P-{0..1}.tar"]
    assert cmds["probe_random"][:3] == ["finetune/run.py", "frozen_eval=true", "init=none"]
    # MAE: task=mae's presets, its own pretraining overrides; every finetuning stage gets --finetune-args
    assert cmds["pretrain_mae"] == ["pretrain/run.py", "task=mae", "train.seed=3",
                                    f"train.output_dir={run / 'pretrain_mae'}", "train.progress=false",
                                    "train.steps=11"]
    assert cmds["finetune_mae"] == ["finetune/run.py", "task=mae", f"init={mae_export}", "train.seed=3",
                                    f"train.output_dir={run / 'finetune_mae'}", "train.progress=false",
                                    "train.steps=7", "val_every=0"]
    assert cmds["probe_mae"] == ["finetune/run.py", "task=mae", "frozen_eval=true", f"init={mae_export}",
                                 "data.train=P-{0..1}.tar", "data.val=V.tar", "train.seed=3",
                                 f"train.output_dir={run / 'probe_mae'}", "train.progress=false", "train.steps=7",
                                 "val_every=0"]
    assert cmds["probe_vit_random"][:6] == ["finetune/run.py", "task=mae", "frozen_eval=true", "init=none",
                                            "data.train=P-{0..1}.tar", "data.val=V.tar"]
    # every command is one its entry point's schema accepts, and task=mae gets the MAE demo's ViT
    from finetune.run import FinetuneConfig
    from pretrain.config import parse_config
    from pretrain.run import PretrainConfig
    for stage, argv in cmds.items():
        cfg = parse_config({"pretrain/run.py": PretrainConfig, "finetune/run.py": FinetuneConfig}[argv[0]], argv[1:])
        assert (cfg.model.name == "vit_demo_8x2") == (stage in report.MAE_STAGES), stage


def test_run_stage_failure_names_stage_seed_and_last_stderr_line(capsys):
    code = "import sys; print('loading', file=sys.stderr); print('error: no shards', file=sys.stderr); " \
           "print('', file=sys.stderr); sys.exit(2)"
    with pytest.raises(report.RunError) as e:
        report.run_stage("pretrain", 1, [sys.executable, "-c", code], {})
    assert str(e.value) == "pretrain of seed 1 failed (exit code 2): error: no shards"
    assert "loading" in capsys.readouterr().err  # the run's own output is passed through
    assert report.run_stage("finetune", 0, [sys.executable, "-c", "pass"], {}) > 0


def test_main_stops_at_the_first_failing_stage_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "launcher", lambda: [sys.executable, "-c", "import sys; sys.exit('error: broken')"])
    code = report.main(["--out", str(tmp_path / "out"), "--docs", str(tmp_path / "docs"), "--no-readme"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines()[-1] == "error: pretrain of seed 0 failed (exit code 1): error: broken"
    assert "finetune" not in captured.out and "seed 1" not in captured.out and not (tmp_path / "docs").exists()
    (tmp_path / "out" / "seed1").mkdir(parents=True)  # what a run leaves, even a failed one: not run over
    assert report.main(["--out", str(tmp_path / "out"), "--no-readme"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {tmp_path / 'out' / 'seed1'} exists: report on it with --skip-runs, or remove " \
                           "it to run again\n" and not captured.out


PICTURE_SIZES = {"hog": (30, 20), "pixel": (40, 20)}  # what fake_checks draws: which picture went where


def fake_checks(pretrain_dir, target, picture):
    seed = int(pretrain_dir.parent.name.removeprefix("seed"))
    assert target == {"pretrain": "hog", "pretrain_mae": "pixel"}[pretrain_dir.name]
    losses = (HELDOUT if target == "hog" else MAE_HELDOUT)[seed]
    return losses, Image.new("RGB", PICTURE_SIZES[target], "gray") if picture else None


def test_main_skip_runs_writes_report_figures_summary_and_readme(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "pretrained_checks", fake_checks)
    (runs / "environment.json").write_text(json.dumps(ENV))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n## Demo\n{report.START}\nold\n{report.END}\n\n## Tests\n")
    docs = tmp_path / "docs" / "demo"
    assert report.main(["--seeds", "0", "1", "--out", str(runs), "--docs", str(docs), "--readme", str(readme),
                        "--skip-runs"]) == 0
    summary = json.loads((docs / "summary.json").read_text())
    assert summary["mean"]["maskfeat_top1"] == pytest.approx(0.4375)
    assert summary["environment"] == ENV
    body = (docs / "report.md").read_text()
    assert "| (c) low-label: from MaskFeat, top-1 (3x1 views) | 43.8 ± 8.8 % |" in body
    assert "| | seed 0 | seed 1 |" in body
    assert "](./curves.png)" in body and "](./predictions.png)" in body and "](./mae_predictions.png)" in body
    assert "| (c-MAE) low-label: ViT from MAE, top-1 (3x1 views) | 37.5 ± 0.0 % |" in body
    assert body.startswith("# MaskFeat and MAE demo: the ladder\n")
    assert Image.open(docs / "curves.png").size == (1040, 760)
    assert Image.open(docs / "predictions.png").size == PICTURE_SIZES["hog"]
    assert Image.open(docs / "mae_predictions.png").size == PICTURE_SIZES["pixel"]
    assert summary["mean"]["mae_ratio_trivial_zero"] == pytest.approx(0.55)
    text = readme.read_text()
    assert text.startswith(f"# Project\n\n## Demo\n{report.START}\nMeasured 2030-01-02")
    assert text.endswith(f"{report.END}\n\n## Tests\n") and "old" not in text
    assert "](docs/demo/curves.png)" in text and "](docs/demo/predictions.png)" in text
    assert "](docs/demo/mae_predictions.png)" in text and "37.5 ± 0.0 %" in text
    assert "43.8 ± 8.8 %" in text and "| | seed 0 | seed 1 |" not in text  # the README: means only

    readme.write_text("# Project without markers\n")
    assert report.main(["--seeds", "0", "1", "--out", str(runs), "--docs", str(docs), "--readme", str(readme),
                        "--skip-runs"]) == 0
    assert readme.read_text() == "# Project without markers\n"
    assert f"no {report.START} ... {report.END} markers; not updated" in capsys.readouterr().out


def test_main_skip_runs_without_runs_is_one_line(tmp_path, capsys):
    assert report.main(["--out", str(tmp_path / "none"), "--no-readme", "--skip-runs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no ") and "seed0/pretrain/metrics.jsonl" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("part", ["pretrain_mae", "finetune_mae/scratch", "probe_vit_random"])
def test_main_without_mae_runs_is_one_line_unless_no_mae(runs, tmp_path, monkeypatch, capsys, part):
    monkeypatch.setattr(report, "pretrained_checks", fake_checks)
    for seed in (0, 1):  # runs made before MAE was in the report
        shutil.rmtree(runs / f"seed{seed}" / part)
    docs = tmp_path / "docs"
    argv = ["--seeds", "0", "1", "--out", str(runs), "--docs", str(docs), "--no-readme", "--skip-runs"]
    assert report.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no {runs / 'seed0' / part}/") and len(err.splitlines()) == 1
    assert not docs.exists()

    assert report.main([*argv, "--no-mae"]) == 0
    summary = json.loads((docs / "summary.json").read_text())
    assert set(summary["mean"]) == {key for key, _, _ in report.ROWS}
    assert summary["mean"]["maskfeat_top1"] == pytest.approx(0.4375)
    body = (docs / "report.md").read_text()
    assert body.startswith("# MaskFeat demo: the ladder\n") and "MAE" not in body and "ViT" not in body
    assert not (docs / "mae_predictions.png").exists() and Image.open(docs / "curves.png").size == (1040, 380)


@pytest.fixture
def fake_stages(monkeypatch):
    """run_all's stages recorded, not run (1 s each); the demo data's shard patterns made up."""
    import videodata.demo
    monkeypatch.setattr(videodata.demo, "demo_urls", lambda root: {"pretrain": "P.tar", "train": "T.tar",
                                                                   "val": "V.tar"})
    ran = []
    monkeypatch.setattr(report, "run_stage", lambda stage, seed, argv, env: ran.append(stage) or 1.0)
    return ran


def pretrained_seed(out: Path, exports: tuple[str, ...], seconds: dict) -> Path:
    """OUT/seed0 with the pretraining exports named, an old (a) and seconds.json."""
    for stage in exports:
        export = out / "seed0" / stage / "export" / "encoder.safetensors"
        export.parent.mkdir(parents=True)
        export.write_bytes(b"x")
    (out / "seed0" / "seconds.json").write_text(json.dumps(seconds))
    (out / "seed0" / "upper").mkdir()
    (out / "seed0" / "upper" / "old.txt").write_text("from the old recipe")
    return out / "seed0"


def test_reuse_pretraining_runs_the_other_stages_again(tmp_path, fake_stages):
    out = tmp_path / "out"
    run = pretrained_seed(out, ("pretrain",), {"pretrain": 123.0, "finetune": 9.0})
    report.run_all([0], out, [], [], [], reuse_pretraining=True)
    # MaskFeat's pretraining kept; MAE's, made before MAE was in the report, is missing: run
    assert fake_stages == ["finetune", "upper", "probe_maskfeat", "probe_random", *report.MAE_STAGES]
    assert json.loads((run / "seconds.json").read_text()) == {
        "pretrain": 123.0, **{stage: 1.0 for stage in [*report.STAGES[1:], *report.MAE_STAGES]}}
    assert not (run / "upper").exists() and (run / "pretrain" / "export" / "encoder.safetensors").is_file()
    assert json.loads((out / "environment.json").read_text())["mae_pretrain_args"] == []
    with pytest.raises(report.RunError, match="exists"):  # without the flag a used seed folder is not run over
        report.run_all([0], out, [], [], [])


def test_reuse_pretraining_keeps_both_exports_and_their_times(tmp_path, fake_stages):
    out = tmp_path / "out"
    run = pretrained_seed(out, ("pretrain", "pretrain_mae"), {"pretrain": 123.0, "pretrain_mae": 45.0,
                                                              "finetune_mae": 9.0})
    (run / "finetune_mae").mkdir()
    report.run_all([0], out, [], [], [], reuse_pretraining=True)
    assert fake_stages == ["finetune", "upper", "probe_maskfeat", "probe_random", "finetune_mae", "probe_mae",
                           "probe_vit_random"]
    seconds = json.loads((run / "seconds.json").read_text())
    assert seconds["pretrain"] == 123.0 and seconds["pretrain_mae"] == 45.0 and seconds["finetune_mae"] == 1.0
    assert not (run / "finetune_mae").exists() and (run / "pretrain_mae" / "export").is_dir()


def test_no_mae_runs_maskfeats_stages_and_leaves_maes_alone(tmp_path, fake_stages):
    out = tmp_path / "out"
    report.run_all([0], out, [], [], [], mae=False)
    assert fake_stages == list(report.STAGES)
    assert "mae_pretrain_args" not in json.loads((out / "environment.json").read_text())
    fake_stages.clear()  # reuse with --no-mae: MAE's folders and times stay as they were
    run = pretrained_seed(tmp_path / "again", ("pretrain", "pretrain_mae"),
                          {"pretrain": 123.0, "pretrain_mae": 45.0, "probe_mae": 6.0})
    (run / "probe_mae").mkdir()
    report.run_all([0], tmp_path / "again", [], [], [], reuse_pretraining=True, mae=False)
    assert fake_stages == list(report.STAGES[1:])
    assert json.loads((run / "seconds.json").read_text()) == {
        "pretrain": 123.0, "pretrain_mae": 45.0, "probe_mae": 6.0, **{stage: 1.0 for stage in report.STAGES[1:]}}
    assert (run / "probe_mae").is_dir()


def test_add_mae_runs_the_mae_stages_and_keeps_the_maskfeat_runs(runs, tmp_path, fake_stages, capsys):
    out = tmp_path / "out"
    with pytest.raises(report.RunError, match="--add-mae needs finished MaskFeat runs"):
        report.run_all([0], out, [], [], [], add_mae=True)
    maskfeat = {stage: 10.0 + i for i, stage in enumerate(report.STAGES)}
    run = pretrained_seed(out, ("pretrain", "pretrain_mae"), {**maskfeat, "pretrain_mae": 45.0})
    (out / "environment.json").write_text(json.dumps({**ENV, "commit": "old1234"}))
    report.run_all([0], out, [], [], [], mae_pretrain_args=["train.steps=5"], add_mae=True)
    assert fake_stages == list(report.MAE_STAGES)  # the MAE pretraining too: it is run again
    assert json.loads((run / "seconds.json").read_text()) == {**maskfeat, **{s: 1.0 for s in report.MAE_STAGES}}
    assert (run / "upper" / "old.txt").is_file() and not (run / "pretrain_mae").exists()
    env = json.loads((out / "environment.json").read_text())
    assert env["commit"] == "old1234" and env["mae_pretrain_args"] == ["train.steps=5"] and "commit" in env["mae"]
    header = report.report_markdown({**summary_of(runs), "environment": env}).splitlines()[0]
    assert "at commit old1234" in header and f"The MAE stages were added {env['mae']['date']}" in header
    assert report.main(["--add-mae", "--no-mae", "--out", str(out), "--no-readme"]) == 2
    assert capsys.readouterr().err == "error: --add-mae and --no-mae contradict each other\n"
