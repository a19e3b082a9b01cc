"""Run machinery shared by pretraining and finetuning: optimizer, schedule, checkpoints,
logging and the training loop.

A stage supplies a *task* (an nn.Module whose forward maps a batch to `(loss, report)`,
with optional `images(batch)` for TensorBoard) and a data loader; `Trainer.fit` does the
rest with Accelerate: accumulation, clipping, the per-step lr, progress bar, TensorBoard,
atomic `save_state` checkpoints, resume. Counting is in optimizer steps and clips; an
"epoch" is only `data.epoch_samples` clips, used to derive step counts from recipes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from tqdm.auto import tqdm

from videodata.pipeline import TooManyFailures

from .config import ConfigError, flat_scalars, parse_config, to_yaml

log = logging.getLogger("run")


class RunError(Exception):
    """A problem the user must fix before the run can start; reported as one line, exit 2."""


@dataclass
class ModelConfig:
    name: str = field(default="mvitv2_demo_8x2_maskfeat", metadata={"help": "a name from mvit.list_models()"})
    arch: Dict[str, Any] = field(default_factory=dict, metadata={"help": "MViTConfig overrides, e.g. {depths: [..]}"})


@dataclass
class OptimConfig:
    lr: float = field(default=1e-4, metadata={"help": "lr for base_batch clips, scaled by the global batch"})
    base_batch: int = 32
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: Optional[float] = field(default=None, metadata={"help": "layer-wise lr decay (finetuning)"})
    clip_grad: Optional[float] = field(default=0.02, metadata={"help": "max grad L2 norm; null: no clipping"})
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6


@dataclass
class TrainConfig:
    output_dir: str = "runs/pretrain-demo"
    batch_size: int = field(default=8, metadata={"help": "clips per process per step"})
    grad_accum: int = 1
    steps: int = field(default=0, metadata={"help": "optimizer steps; 0: epochs x steps per epoch"})
    epochs: float = 0.0
    warmup_steps: int = field(default=0, metadata={"help": "0: warmup_epochs x steps per epoch"})
    warmup_epochs: float = 0.0
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16"})
    compile: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    image_every: int = field(default=100, metadata={"help": "TensorBoard images every N steps; 0: never"})
    save_every: int = 500
    keep_last: int = 3
    resume: str = field(default="", metadata={"help": "'latest', a checkpoint folder, or '' (fresh run)"})
    stop_after: int = field(default=0, metadata={"help": "end this invocation after N steps, checkpointed "
                                                         "(time-limited jobs); resume=latest continues"})
    progress: bool = True
    audit: bool = field(default=False, metadata={"help": "write per-rank sample ids and a weight checksum"})


# ----------------------------------------------------------------------------- setup


def entry_point(main):
    """Wrap a stage's main: user errors (config, checkpoint, launch, data) are one line + exit 2."""
    from mvit import CheckpointError

    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except (RunError, ConfigError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped


def setup(schema, argv, prog: str, doc: str):
    """Parse the config and start Accelerate -> (cfg, accelerator)."""
    cfg = parse_config(schema, argv, prog=prog, doc=doc)
    try:
        accelerator = make_accelerator(cfg.train)
    except (RuntimeError, ValueError) as e:
        raise RunError(str(e)) from None
    configure_logging(accelerator)
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"  # set by an FSDP launch config
    if fsdp_asked and accelerator.distributed_type != DistributedType.FSDP and accelerator.is_main_process:
        log.warning("note: FSDP was asked for but does not apply on %s: Accelerate runs %s, and every process holds "
                    "the whole model", accelerator.device.type.upper(), distributed_mode(accelerator))
    return cfg, accelerator


def build_backbone(cfg, **overrides) -> torch.nn.Module:
    """The run's MViT: model.name with model.arch overrides, sized for the data's clips, with
    the train section's gradient checkpointing and compile (in place: parameter names, so
    checkpoints and exports, stay clean)."""
    import mvit

    from .config import to_dict
    size = (cfg.data.frames, cfg.data.crop, cfg.data.crop)
    arch = to_dict(cfg.model)["arch"]  # plain lists, not OmegaConf containers
    model = mvit.create_model(cfg.model.name, **{**arch, "input_size": size, **overrides})
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.train.compile:
        model.compile()
    return model


@dataclass
class Shards:
    train: str
    val: str
    classes: list[str]
    total: int  # videos in the training shards (0: unknown)


def find_shards(train: str, val: str, demo_root: str, accelerator: Accelerator, demo_split: str = "train") -> Shards:
    """The given shard patterns, or the synthetic demo dataset (made once by the main process)
    when `train` is empty: its `demo_split` split ("pretrain": the large collection MaskFeat
    reads without labels; "train": the few labelled videos finetuning gets) and its val split.
    Class names and counts come from the manifest next to the shards."""
    from videodata import expand_urls
    from videodata.shards import manifest_for_urls
    if not train:
        from videodata.demo import demo_urls, ensure_demo_dataset
        if accelerator.is_main_process:
            ensure_demo_dataset(demo_root)
        accelerator.wait_for_everyone()
        urls = demo_urls(demo_root)
        train, val = urls[demo_split], val or urls["val"]
    manifest = manifest_for_urls(expand_urls(train)) or {}
    return Shards(train, val, list(manifest.get("classes", [])), int(manifest.get("total", 0)))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    out = Path(cfg.output_dir)
    acc = Accelerator(
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out)),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:  # e.g. `--multi_gpu` on CPU without ACCELERATE_USE_CPU=true
        raise RuntimeError(f"{launched} processes were launched but Accelerate joined {acc.num_processes}: they would "
                           "run as independent duplicates. On CPU set ACCELERATE_USE_CPU=true.")
    set_seed(cfg.seed + acc.process_index)  # different masks / dropout per rank, reproducible
    return acc


def distributed_mode(acc: Accelerator) -> str:
    """no, DDP, FSDP1 / FSDP2 or DeepSpeed."""
    if acc.distributed_type == DistributedType.FSDP:
        return f"FSDP{acc.state.fsdp_plugin.fsdp_version}"
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return "DeepSpeed"
    return "DDP" if acc.num_processes > 1 else "no"


@dataclass
class Schedule:
    """Step counts derived once from the recipe (epochs of `epoch_samples` clips)."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr: float  # peak lr after batch scaling

    @classmethod
    def derive(cls, train: TrainConfig, optim: OptimConfig, epoch_samples: int, num_processes: int):
        global_batch = train.batch_size * num_processes * train.grad_accum
        per_epoch = max(1, math.ceil(epoch_samples / global_batch))
        total = train.steps or round(train.epochs * per_epoch)
        warmup = train.warmup_steps or round(train.warmup_epochs * per_epoch)
        if total <= 0:
            raise RunError("set train.steps or train.epochs (> 0)")
        if warmup >= total:
            raise RunError(f"warmup ({warmup} steps) must be shorter than the run ({total} steps): "
                           "set train.warmup_steps / train.warmup_epochs")
        return cls(global_batch, per_epoch, total, warmup, optim.lr * global_batch / optim.base_batch)


def make_optimizer(model: torch.nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D params, biases and model.no_weight_decay(); optional
    layer decay through model.group_matcher (timm's implementation)."""
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=optim.weight_decay,
                               layer_decay=optim.layer_decay, betas=tuple(optim.betas))


def make_scheduler(optimizer, optim: OptimConfig, sched: Schedule) -> CosineLRScheduler:
    """Linear warmup from warmup_lr, then cosine to min_lr over the remaining steps; stepped
    per optimizer step with `step_update(step)`, so the lr is a function of the step."""
    return CosineLRScheduler(optimizer, t_initial=sched.total_steps - sched.warmup_steps, lr_min=optim.min_lr,
                             warmup_t=sched.warmup_steps, warmup_lr_init=optim.warmup_lr, warmup_prefix=True,
                             t_in_epochs=False)


# ----------------------------------------------------------------------------- checkpoints


class RunState:
    """Counters saved with every checkpoint (registered with Accelerate), and the global batch
    they were counted in (0: a checkpoint from before it was recorded)."""

    def __init__(self, global_batch: int = 0):
        self.step = 0
        self.clips = 0
        self.global_batch = global_batch

    def state_dict(self):
        return {"step": self.step, "clips": self.clips, "global_batch": self.global_batch}

    def load_state_dict(self, d):
        self.step, self.clips, self.global_batch = int(d["step"]), int(d["clips"]), int(d.get("global_batch", 0))


def checkpoint_weights(folder: str | os.PathLike) -> Path:
    """The model file of a checkpoint folder (checkpoints/step_*), or one CheckpointError line."""
    from mvit import CheckpointError
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    if (folder / "pytorch_model_fsdp_0").is_dir():
        raise CheckpointError(f"{folder}: a sharded FSDP checkpoint (pytorch_model_fsdp_0/): start from the run's "
                              "export, or convert it with torch.distributed.checkpoint.format_utils.dcp_to_torch_save")
    raise CheckpointError(f"{folder}: a folder without model.safetensors (not a checkpoint folder)")


class Checkpoints:
    """`save_state` folders under output_dir/checkpoints/step_XXXXXXXX, written to a hidden
    temporary folder and renamed, so a kill at any moment leaves the last complete one."""

    def __init__(self, accelerator: Accelerator, output_dir: str, keep_last: int):
        self.acc, self.root, self.keep_last = accelerator, Path(output_dir) / "checkpoints", keep_last

    def list(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if re.fullmatch(r"step_\d{8}", p.name))

    def resolve(self, resume: str) -> Path | None:
        if not resume:
            return None
        if resume == "latest":
            found = self.list()
            return found[-1] if found else None  # nothing yet: a fresh start
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"train.resume: no checkpoint folder {resume}")
        return path

    def save(self, step: int, extra: dict[str, str] | None = None) -> Path:
        final, tmp = self.root / f"step_{step:08d}", self.root / f".tmp-step_{step:08d}"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.list()[:-self.keep_last] if self.keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final


# ----------------------------------------------------------------------------- sharded models
# Under FSDP2 (Accelerate's fsdp_version 2) parameters are DTensor shards: a module's
# state_dict holds shards, and calling a submodule outside the root's forward mixes shards
# with full tensors. These helpers give every stage the full model; each one is a collective
# under FSDP, so every rank must call it, and is a no-op otherwise.


def _fsdp_modules(module: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: torch.nn.Module) -> bool:
    return bool(_fsdp_modules(module))


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's complete state dict on every rank (all-gathered under FSDP; collective)."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))


@contextmanager
def unsharded(module: torch.nn.Module):
    """Inside, the module's parameters are full tensors, so any of its methods or submodules
    can run (pictures, evaluation of the model inside a task); resharded on exit (collective)."""
    fsdp = _fsdp_modules(module)
    for m in fsdp:
        m.unshard()
    try:
        yield module
    finally:
        for m in fsdp:
            m.reshard()


# ----------------------------------------------------------------------------- the loop


def param_checksum(model: torch.nn.Module) -> str:
    """A hash of the full weights (collective under FSDP)."""
    h = hashlib.sha256()
    for k, v in sorted(full_state_dict(model).items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _new_window() -> dict:
    """Running sums between two log lines."""
    return dict(loss=0.0, n=0, wait=0.0, t0=time.perf_counter(), clips=0, skipped=0, report={})


class Trainer:
    """Owns the accelerator, optimizer, schedule and checkpoints of one run."""

    def __init__(self, task: torch.nn.Module, train: TrainConfig, optim: OptimConfig, sched: Schedule,
                 accelerator: Accelerator, config_yaml: str, check_batch=None, on_device=None):
        """check_batch(batch): called on each batch while it is still on the host, before the
        device sees it (raise RunError to stop with one line; no device sync per step).
        on_device(batch) -> batch: applied once the batch is on the device (e.g. normalizing
        the uint8 clips of a loader built with normalize=False)."""
        self.cfg, self.sched, self.acc = train, sched, accelerator
        self.check_batch, self.on_device = check_batch, on_device
        self.state = RunState(sched.global_batch)
        self.optimizer = make_optimizer(task, optim, sched.lr)
        self.scheduler = make_scheduler(self.optimizer, optim, sched)
        self.clip_grad = optim.clip_grad
        self.task, self.optimizer = accelerator.prepare(task, self.optimizer)
        accelerator.register_for_checkpointing(self.state)
        self.checkpoints = Checkpoints(accelerator, train.output_dir, train.keep_last)
        self.config_yaml = config_yaml

    def resume(self) -> int:
        """Load `train.resume` if set; returns the step to start from."""
        path = self.checkpoints.resolve(self.cfg.resume)
        if path is not None:
            self.acc.load_state(str(path))
            self.acc.print(f"resumed from {path} at step {self.state.step}")
            saved, self.state.global_batch = self.state.global_batch, self.sched.global_batch
            if saved and saved != self.sched.global_batch:
                # The schedule is a function of the step, derived from the current global batch.
                self.scheduler.step_update(self.state.step)
                lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0)
                self.acc.print(f"note: the global batch changed from {saved} to {self.sched.global_batch} clips per "
                               f"step (processes x batch_size x grad_accum): the lr and the schedule now follow the "
                               f"new batch; lr {lr:.3g} at step {self.state.step}, peak {self.sched.lr:.3g}, "
                               f"{self.sched.total_steps} steps in all")
        return self.state.step

    def _log_images(self, batch):
        """Pictures from the main process; under FSDP every rank takes part in the forward."""
        model = self.acc.unwrap_model(self.task)
        if not (self.acc.is_main_process or is_sharded(model)):
            return
        with unsharded(model):
            images = model.images(batch)
        if self.acc.is_main_process:
            tracker = self.acc.get_tracker("tensorboard", unwrap=True)
            for name, img in images.items():  # (3, H, W) float in [0, 1]
                tracker.add_image(name, img, self.state.step)

    def fit(self, loader, on_step=None) -> None:
        """Train until the schedule's last step, from wherever self.state is.
        on_step(step): called after every optimizer step (e.g. periodic validation)."""
        acc, cfg, total = self.acc, self.cfg, self.sched.total_steps
        device = acc.device
        show = cfg.progress and acc.is_local_main_process
        # a terminal gets the bar; a log file gets one line per log window instead of ~1000 redraws
        self._lines = show and not sys.stderr.isatty()
        bar = tqdm(total=total, initial=self.state.step, disable=not show or self._lines, unit="step",
                   dynamic_ncols=True)
        self._t0 = time.perf_counter()
        self.task.train()
        window, step_clips, seen = _new_window(), 0, []
        it = iter(loader)
        end = min(total, self.state.step + cfg.stop_after) if cfg.stop_after else total
        while self.state.step < end:
            t_wait = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:  # one "epoch" of the stream is done; it continues
                it = iter(loader)
                continue
            except TooManyFailures as e:  # re-raised from a worker with its traceback: keep the reason
                raise RunError(str(e).strip().splitlines()[-1].split(": ", 1)[-1]) from None
            window["wait"] += time.perf_counter() - t_wait
            if self.check_batch is not None:
                self.check_batch(batch)
            window["skipped"] += int(batch.get("skipped", 0))
            if cfg.audit:
                seen += list(batch.get("video_id", []))
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            if self.on_device is not None:
                batch = self.on_device(batch)
            with acc.accumulate(self.task):
                loss, report = self.task(batch)
                acc.backward(loss)
                grad_norm = None
                if acc.sync_gradients and self.clip_grad:
                    grad_norm = acc.clip_grad_norm_(self.task.parameters(), self.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            window["loss"] += loss.detach()  # a tensor: no host sync per step (GPU)
            window["n"] += 1
            for k, v in report.items():  # averaged over the window like the loss
                window["report"][k] = window["report"].get(k, 0.0) + v.detach().float()
            step_clips += batch["video"].shape[0]
            if not acc.sync_gradients:
                continue
            self.state.step += 1
            self.state.clips += step_clips * acc.num_processes  # ranks run equal batches
            window["clips"] += step_clips
            step_clips = 0
            self.scheduler.step_update(self.state.step)
            step = self.state.step
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                self._log(window, grad_norm, bar)
                window = _new_window()
            if cfg.image_every and step % cfg.image_every == 0:
                self._log_images(batch)
            if on_step is not None:  # before the checkpoint, which then holds its effects (the EMA update)
                on_step(step)
            if step % cfg.save_every == 0 or step == end:
                self.checkpoints.save(step, {"config.yaml": self.config_yaml})
        bar.close()
        if cfg.audit:
            self._write_audit(seen)

    def _log(self, window, grad_norm, bar):
        acc = self.acc
        elapsed = time.perf_counter() - window["t0"]
        mean_loss = torch.as_tensor(window["loss"], device=acc.device).float() / max(window["n"], 1)
        stats = acc.reduce(torch.stack([mean_loss, torch.tensor(float(window["skipped"]), device=acc.device)]), "sum")
        loss = stats[0].item() / acc.num_processes
        if not math.isfinite(loss):
            raise RunError(f"loss is {loss} at step {self.state.step}; lower optim.lr or check the data "
                           f"(last checkpoint: {self.checkpoints.list()[-1] if self.checkpoints.list() else 'none'})")
        values = {
            "train/loss": loss,
            "train/lr": self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0),
            "train/clips_per_s": window["clips"] * acc.num_processes / max(elapsed, 1e-9),
            "train/data_wait_fraction": window["wait"] / max(elapsed, 1e-9),
            "data/skipped_samples": stats[1].item(),
            "train/epoch": self.state.clips / (self.sched.steps_per_epoch * self.sched.global_batch),
        }
        if grad_norm is not None:
            values["train/grad_norm"] = float(grad_norm)
        keys = sorted(window["report"])  # one collective for all of them
        means = acc.reduce(torch.stack([torch.as_tensor(window["report"][k], device=acc.device) for k in keys]),
                           "mean") / max(window["n"], 1) if keys else []
        report = dict(zip(keys, (float(m) for m in means)))
        values.update({f"train/{k}": v for k, v in report.items() if k != "loss"})
        self.log(values)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{values['train/lr']:.2e}",
                        clips_s=f"{values['train/clips_per_s']:.1f}", refresh=False)
        if self._lines:
            print(f"step {self.state.step}/{self.sched.total_steps}  loss {loss:.4f}  lr {values['train/lr']:.2e}  "
                  f"clips/s {values['train/clips_per_s']:.1f}  elapsed {time.perf_counter() - self._t0:.0f} s",
                  file=sys.stderr, flush=True)

    def log(self, values: dict[str, float]) -> None:
        """TensorBoard, plus one JSON line per call in output_dir/metrics.jsonl (main process)
        for scripts that read a run's curves without TensorBoard."""
        self.acc.log(values, step=self.state.step)
        if self.acc.is_main_process:
            with open(Path(self.cfg.output_dir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.state.step, **values}) + "\n")

    def _write_audit(self, seen):
        out = Path(self.cfg.output_dir) / "audit"
        out.mkdir(parents=True, exist_ok=True)
        model = self.acc.unwrap_model(self.task)
        record = {"rank": self.acc.process_index, "step": self.state.step, "samples": seen,
                  "param_checksum": param_checksum(model)}
        (out / f"rank{self.acc.process_index}.json").write_text(json.dumps(record))


def start_run(accelerator: Accelerator, cfg, run_name: str) -> str:
    """Create the run folder, write the resolved config, start TensorBoard; returns the YAML."""
    out = Path(cfg.train.output_dir)
    text = to_yaml(cfg)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(text)
    accelerator.init_trackers(run_name, config=flat_scalars(cfg))
    return text


def configure_logging(accelerator: Accelerator) -> None:
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # no per-file lines on every save


def describe(sched: Schedule, accelerator: Accelerator) -> dict[str, Any]:
    return {"processes": accelerator.num_processes, "distributed": distributed_mode(accelerator),
            "precision": accelerator.mixed_precision, "device": str(accelerator.device),
            "global_batch": sched.global_batch, "steps": sched.total_steps, "warmup_steps": sched.warmup_steps,
            "steps_per_epoch": sched.steps_per_epoch, "peak_lr": sched.lr}
