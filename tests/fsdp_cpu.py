"""Test helper, not a test: run a stage's entry point with Accelerate's FSDP2 plugin forced
on CPU processes (gloo), where Accelerate itself falls back to DDP. Only the tests do this;
the product never forces a plugin.

    accelerate launch --multi_gpu --num_processes 2 ... tests/fsdp_cpu.py pretrain/run.py key=value ...
"""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pretrain.runtime as runtime  # noqa: E402
from accelerate.state import PartialState  # noqa: E402
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402

_make_accelerator = runtime.make_accelerator


def make_fsdp2_accelerator(cfg):
    accelerator = _make_accelerator(cfg)
    # As configs/accelerate/fsdp.yaml asks for on GPUs: FSDP2, one unit per block, sharded checkpoints.
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["MultiScaleBlock"],
        state_dict_type="SHARDED_STATE_DICT", reshard_after_forward=True, cpu_ram_efficient_loading=False)
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # every AcceleratorState() copies it
    return accelerator


runtime.make_accelerator = make_fsdp2_accelerator
script = sys.argv.pop(1)
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
