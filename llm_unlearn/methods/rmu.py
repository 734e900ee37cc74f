"""RMU, representation misdirection for unlearning (Li et al. 2024, WMDP, arXiv 2403.03218; docs/methods.md#rmu).

At one decoder layer, forget activations are pushed towards a fixed random direction scaled by a steering
coefficient, and retain activations are held at the reference model's; only a few weights train.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from llm_unlearn.methods.base import MethodConfig, UnlearnStep, register_method
from llm_unlearn.methods.layers import decoder_layers

# Names of the MLP output projection across families: Llama/Qwen2/Phi-3/Gemma/Mistral, GPT-2, GPT-NeoX/Falcon,
# Phi-1/2 (and OPT, whose `fc2` sits directly in the block).
MLP_OUTPUT_PROJECTIONS = ("down_proj", "c_proj", "dense_4h_to_h", "fc2")


@dataclass
class RMUConfig(MethodConfig):
    """RMU: steer forget activations at one layer to a random direction, hold retain ones (Li et al. 2024,
    arXiv 2403.03218)."""

    layer: int = field(
        default=7, metadata={"help": "Index (from 0) of the decoder layer whose output both MSEs compare."}
    )
    steering_coeff: float = field(
        default=6.5,
        metadata={
            "help": "Steering coefficient c: forget activations move towards c * u, u a random unit vector."
        },
    )
    alpha: float = field(
        default=1200.0,
        metadata={"help": "Weight alpha of the retain MSE to the reference model's activations."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the random direction u, the same on every process."}
    )
    trainable_params: str | None = field(
        default=None,
        metadata={
            "help": "Regex searched in parameter names to choose the weights that train; None: the MLP "
            "output projections of layers layer-2..layer, as in the reference run."
        },
    )

    def __post_init__(self) -> None:
        if self.trainable_params is not None:
            try:
                re.compile(self.trainable_params)
            except re.error as error:
                raise ValueError(
                    f"RMU trainable_params={self.trainable_params!r} is not a regex: {error}"
                ) from None

    @property
    def uses_retain(self) -> bool:
        return True

    @property
    def needs_reference_model(self) -> bool:
        return True

    def trainable_regex(self, layers_path: str) -> str:
        """`trainable_params`, or the default: MLP output projections of blocks layer-2..layer under `layers_path`."""
        if self.trainable_params is not None:
            return self.trainable_params
        indices = "|".join(str(i) for i in range(max(self.layer - 2, 0), self.layer + 1))
        projections = "|".join(MLP_OUTPUT_PROJECTIONS)
        # The trailing dot admits both `down_proj.weight` and LoRA's `down_proj.lora_A.default.weight`.
        return rf"^{re.escape(layers_path)}\.({indices})\.(mlp\.)?({projections})\."

    def configure_model(self, model: torch.nn.Module) -> None:
        """Check `layer` against the model's decoder blocks and freeze every trainable parameter the regex misses
        (in LoRA mode the trainable ones are the adapter weights, so the regex selects among those)."""
        layers_path, layers = decoder_layers(model)
        if not 0 <= self.layer < len(layers):
            raise ValueError(
                f"RMU layer={self.layer} is out of range: {type(model).__name__} has {len(layers)} decoder layers "
                f"(0..{len(layers) - 1})."
            )
        regex = self.trainable_regex(layers_path)
        pattern = re.compile(regex)
        trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
        if not any(pattern.search(name) for name, _ in trainable):
            examples = [name for name, _ in trainable[:5]]
            raise ValueError(
                f"RMU trainable_params regex {regex!r} matches none of the {len(trainable)} trainable parameters, "
                f"e.g. {examples}."
            )
        for name, param in trainable:
            if not pattern.search(name):
                param.requires_grad_(False)


def random_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """u: uniform [0,1)^d normalised to unit norm, drawn on the CPU from a generator seeded by `seed`, so every
    process, device and run gets the same vector (arXiv 2403.03218)."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over hidden dims, then over each sequence's attended tokens, then over sequences."""
    per_token = (hidden.float() - target.float()).pow(2).mean(dim=-1)
    mask = attention_mask.to(per_token.dtype)
    # Per-sequence means first, so the batch mean does not depend on how a global batch is split across processes.
    per_sequence = (per_token * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return per_sequence.mean()


@register_method("rmu", RMUConfig)
def rmu_loss(step: UnlearnStep, config: RMUConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = MSE(h(x_f), c*u) + alpha * MSE(h(x_r), h_ref(x_r)) at the output of decoder layer `layer`.

    Each MSE is averaged over hidden dims, then over a sequence's tokens with attention_mask == 1, then over the
    batch's sequences (arXiv 2403.03218).
    """
    layers_path, _ = decoder_layers(step.model)
    layer_path = f"{layers_path}.{config.layer}"
    forget_hidden = step.activations("forget", layer_path)
    target = config.steering_coeff * random_direction(forget_hidden.shape[-1], config.seed)
    forget_loss = masked_mse(
        forget_hidden, target.to(forget_hidden.device), step.batch("forget")["attention_mask"]
    )
    retain_loss = masked_mse(
        step.activations("retain", layer_path),
        step.reference_activations("retain", layer_path),
        step.batch("retain")["attention_mask"],
    )
    loss = forget_loss + config.alpha * retain_loss
    return loss, {"forget_mse": forget_loss.item(), "retain_mse": retain_loss.item()}
