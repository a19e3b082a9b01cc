"""MViTv2 image and video backbones, checkpoint conversion and 2D->3D inflation."""
from .model import MViT, MViTConfig
from .registry import (config_from_json, config_to_json, create_model, get_config, list_models,
                       pretraining_form)

__all__ = ["MViT", "MViTConfig", "create_model", "get_config", "list_models", "pretraining_form",
           "config_from_json", "config_to_json"]
from .checkpoint import (CheckpointError, LoadReport, load_pretrained, model_from_safetensors,  # noqa: E402
                         save_safetensors)

__all__ += ["CheckpointError", "LoadReport", "load_pretrained", "model_from_safetensors", "save_safetensors"]
