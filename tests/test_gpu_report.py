"""scripts/gpu_report.py keeps working: its CPU form (`--device cpu --small`) runs every row,
writes the table and the JSON, and reports finite positive numbers (the GPU form differs only
in sizes, the device and the compiled rows)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["model fwd, ours", "model fwd, torchvision", "model fwd+bwd, ours", "model fwd+bwd, torchvision",
        "MaskFeat step", "HOG targets", "loader, 1 worker", "MAE step"]


def test_gpu_report_small_cpu(tmp_path):
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "scripts/gpu_report.py", "--device", "cpu", "--small", "--workers", "2",
                           "--out", str(md), "--json", str(js)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = md.read_text()
    assert text.strip() in proc.stdout
    table_rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert set(ROWS) <= table_rows, sorted(table_rows)
    assert "compile skipped on CPU (--compile to force)" in text

    report = json.loads(js.read_text())
    rows = {r["what"]: r for r in report["rows"]}
    failed = {name: r["notes"] for name, r in rows.items() if any(note.startswith("failed") for note in r["notes"])}
    assert not failed
    for name in ROWS + ["loader, 2 workers"]:
        assert math.isfinite(rows[name]["throughput"]) and rows[name]["throughput"] > 0, rows[name]
    for name in ROWS[:5]:
        r = rows[name]
        for key in ("time_s", "tflops", "mfu", "flops"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r)
    mae = rows["MAE step"]
    assert mae["peak_memory_bytes"] > 0 and 0 < mae["targets_s"] < mae["time_s"] and mae["mfu"] > 0
    step = rows["MaskFeat step"]
    assert step["main_process_mask_s"] == 0
    assert step["worker_mask_s"] > 0 and 0 < step["targets_s"] < step["time_s"]
    assert step["peak_memory_bytes"] > 0 and 0 <= step["data_wait_share"] < 1
    assert "main-process mask time: 0 (loader workers)" in text
    # the day a GPU is lent: cores per GPU from the measured step and the loader's CPU time
    cores, loader = rows["cores per GPU (measured)"], rows["loader, 2 workers"]
    assert 0 < loader["clips_per_cpu_s"] < math.inf
    assert cores["cores_per_gpu"] == cores["throughput"] == step["throughput"] / loader["clips_per_cpu_s"]
    assert cores["data_wait_share"] == step["data_wait_share"]
