"""What pretraining buys, as a contract: a low-label finetune from a MaskFeat export beats the
same finetune from random init on held-out videos.

The export, tests/assets/maskfeat_demo_encoder.safetensors (float16, 3.3 MB), is the encoder
the pretraining demo writes (`accelerate launch pretrain/run.py train.seed=0`: 1000 steps on
the 480 videos of videodata/demo.py, none of them labelled for it), stored at half precision:
`save_file({k: v.half() for k, v in load_file(export).items()}, asset, metadata=<the export's>)`.

The data are fresh videos of the demo's kind, made here with other seeds than the demo's
(never seen in pretraining): 8 labelled videos per class to finetune on, 4 per class held
out. One run of the finetune entry point finetunes from the export, then the same recipe from
random init (compare_scratch), 200 steps each, and writes both results to comparison.json
and the predictions to CSV files; the test scores the shape of the predicted class on its
own (chance 1/3), the top-1 and the frozen linear probes.

Replace the export by a random-init encoder and the test fails: both runs then start from
random weights.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "tests" / "assets" / "maskfeat_demo_encoder.safetensors"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from videodata import write_shards, write_synthetic_videos
    from videodata.synthetic import LABELS
    root = tmp_path_factory.mktemp("gain_data")
    urls = {}
    for split, count, seed in (("train", 96, 21), ("val", 48, 22)):  # the demo's splits use seeds 10 and 1
        videos = write_synthetic_videos(root / split, count, frames=40, size=(144, 192), seed=seed,
                                        background="scene")
        manifest = write_shards(videos, root / "shards", name=split, max_count=64, reencode=False,
                                classes=sorted(LABELS), seed=seed)
        urls[split] = str(root / "shards" / manifest["url_pattern"])
    return urls


@pytest.mark.timeout(1800)
def test_low_label_finetune_from_the_maskfeat_export_beats_random_init(shards, tmp_path):
    out = tmp_path / "ft"
    r = subprocess.run([sys.executable, str(ROOT / "finetune" / "run.py"), f"init={EXPORT}",
                        f"data.train={shards['train']}", f"data.val={shards['val']}", "compare_scratch=true",
                        f"train.output_dir={out}", "train.progress=false", "val_every=0", "data.num_workers=1",
                        "train.steps=200", "data.test_clips=1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "comparison.json").read_text())
    pretrained, scratch = rows[f"from {EXPORT}"], rows["from random init"]
    shape = {name: shape_accuracy(path) for name, path in (("pretrained", out / "test_predictions.csv"),
                                                          ("scratch", out / "scratch" / "test_predictions.csv"))}
    # Measured at this commit (one run, 2 CPUs): shape 68.8 % from the export against 39.6 % from random
    # init (chance 33 %), top-1 14.6 % against 12.5 %, frozen linear probe 27.1 % against 16.7 %. The
    # 12-way top-1 after 200 steps on 96 videos is too noisy to gate on by a margin; the shape is not
    # (the demo report: +25 points over 3 seeds), and a random-init export gives none of it.
    assert shape["pretrained"] >= shape["scratch"] + 0.15, (shape, rows)
    assert pretrained["top1"] >= scratch["top1"], rows
    assert pretrained["linear_probe_top1"] >= scratch["linear_probe_top1"] + 0.05, rows


def shape_accuracy(predictions: Path) -> float:
    """The share of test videos whose predicted class has the true shape ("<shape>_<direction>")."""
    import csv
    with open(predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, predictions
    return sum(r["label_name"].split("_")[0] == r["pred_name"].split("_")[0] for r in rows) / len(rows)
