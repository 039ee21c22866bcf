"""The DP-LoRA baseline: low-rank adapters (Hugging Face ``peft``) on the same blocks the tangent trains.

LoRA replaces a frozen linear layer's ``W x`` by ``W x + (alpha / r) · B A x`` with ``A`` (r x in) and
``B`` (out x r, zero at start) trained; here every ``nn.Linear`` inside the tangent model's selected
blocks gets an adapter, and the classification head trains in full, as in DP-LoRA (Yu et al., ICLR
2022, "Differentially Private Fine-tuning of Language Models"). The adapters' ``A`` and ``B`` are
ordinary ``nn.Linear`` layers, so Opacus clips them per sample (ghost clipping) like any other.
Everything else (LayerNorms, biases, the blocks before) stays at theta0. ``A`` starts from peft's
random initialisation under a fixed seed (data-independent), so a benchmark seed varies only the
noise, sampling and batch order, as it does for the other methods, whose start is theta0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model

from dp_tangent import TangentModel

from ._baselines import NonLinearSuffix

RANK = 8
ALPHA = 16
INIT_SEED = 0


class LoRASuffix(NonLinearSuffix):
    """:class:`NonLinearSuffix` with rank-``rank`` LoRA on the selected blocks' linear layers; the adapters
    and the head train (see the module doc)."""

    def __init__(self, base: nn.Module, tangent: TangentModel, rank: int = RANK, alpha: int = ALPHA,
                 init_seed: int = INIT_SEED) -> None:
        super().__init__(base, tangent)
        head = str(getattr(base, "pretrained_cfg", {}).get("classifier", "head"))
        owners = {name.rsplit(".", 1)[0] for name, _ in tangent.named_deltas()}
        targets = sorted(name for name in owners
                         if name != head and isinstance(self.net.get_submodule(name), nn.Linear))
        if not targets:
            raise ValueError("LoRA: the selected blocks hold no linear layer to adapt")
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets)
        with torch.random.fork_rng(devices=[]):  # A's random start is fixed, as theta0 is for the others
            torch.manual_seed(init_seed)
            self.net = inject_adapter_in_model(config, self.net)
        for name, param in self.net.named_parameters():
            param.requires_grad_(".lora_" in name or name.startswith(head + "."))
        self.adapted = targets
        self.train(False)
