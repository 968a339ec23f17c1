"""FSDP2 through the HF Trainer: the arguments for each strategy, and the consolidated final weights.

`TrainSpec.strategy` picks how ranks share the training state (training/memory_plan.py says
which one a size needs on a machine):
- `ddp`: every rank holds the whole model, gradients and AdamW moments (PyTorch DDP).
- `fsdp_grad_op`: FSDP2 (`fully_shard`) with `reshard_after_forward=False`: gradients and
  optimizer states are sharded, the gathered weights stay from forward to backward (ZeRO-2 like).
- `fsdp_full`: FSDP2 with `reshard_after_forward=True`: each decoder layer is gathered for its
  forward and again for its backward, then freed (ZeRO-3 like).

Checkpoints (resume points) are sharded: every rank writes its own shard of the weights and the
optimizer (torch.distributed.checkpoint), so no rank ever holds the whole state. The final model
is consolidated once, at the end, into one safetensors folder (`full_state_dict`).

FSDP2 runs on CPU with gloo (how the suite tests it), through accelerate's FSDP plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exp1_assets.training.memory_plan import Strategy

if TYPE_CHECKING:
    import torch


def fsdp_arguments(strategy: Strategy, *, layer_classes: list[str], gradient_checkpointing: bool) -> dict[str, Any]:
    """`TrainingArguments` keywords for `strategy` (empty for DDP).

    With FSDP, activation checkpointing is FSDP's own (the Trainer refuses both at once).

    >>> fsdp_arguments("ddp", layer_classes=["LlamaDecoderLayer"], gradient_checkpointing=True)
    {}
    >>> args = fsdp_arguments("fsdp_grad_op", layer_classes=["LlamaDecoderLayer"], gradient_checkpointing=False)
    >>> args["fsdp"], args["fsdp_config"]["reshard_after_forward"], args["fsdp_config"]["state_dict_type"]
    (True, False, 'SHARDED_STATE_DICT')
    """
    if strategy == "ddp":
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "reshard_after_forward": strategy == "fsdp_full",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": list(layer_classes),
            # Resume points: one shard per rank (torch.distributed.checkpoint), nothing gathered.
            "state_dict_type": "SHARDED_STATE_DICT",
            "activation_checkpointing": gradient_checkpointing,
            "cpu_ram_efficient_loading": False,
        },
    }


def full_state_dict(model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """The whole model's weights on CPU, gathered from every rank's shard.

    A collective: every rank must call it; rank 0 gets the tensors (the others an empty dict).
    For a model that is not sharded it is simply the state dict.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def sharded_trainer_class():
    """The HF `Trainer`, plus FSDP on CPU ranks (gloo), which accelerate does not switch on there.

    accelerate turns its FSDP plugin on only for accelerator devices (CUDA, XPU, ...): on CPU
    ranks (`MULTI_CPU`) it silently trains with DDP instead, and the checkpoints come out whole.
    FSDP2's `fully_shard` itself runs on CPU with gloo, so after the Trainer has made its
    accelerator we set the one missing piece, the FSDP distributed type with the Trainer's own
    plugin; everything after that (wrapping, sharded saves and loads) is accelerate's FSDP2 path.
    On GPUs the subclass changes nothing.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from transformers import Trainer

    class ShardedTrainer(Trainer):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            if self.args.fsdp_plugin_args is None or self.is_fsdp_enabled:
                return
            if state.distributed_type != DistributedType.MULTI_CPU:
                raise RuntimeError(f"FSDP was asked for but accelerate chose {state.distributed_type} "
                                   "(FSDP needs more than one rank: launch with --num_processes >= 2)")
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True

    return ShardedTrainer
