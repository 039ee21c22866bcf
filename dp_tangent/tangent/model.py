"""The tangent model: f_lin(x; delta) = f(x; theta0) + J_theta f(x; theta0) · delta.

:func:`linearize` copies a network, freezes it at theta0, and turns the parameters selected by
``trainable`` into deltas (zero at start, so f_lin(x; 0) = f(x; theta0) bit for bit). The value
comes from one forward-mode dual pass (PyTorch's own forward derivative of every op, GELU
included): primal f(x; theta0) and tangent J·delta together, without autograd. When gradients are
needed, a plain pass at theta0 follows (reusing the dual pass's linear products) and
records the graph and receives the gradient of the output, which makes it J^T v with
v = dLoss/d(output) at f_lin -- the exact gradient of the tangent model's loss -- and lets
Opacus's per-layer hooks see the activations at theta0 and produce exact per-sample gradients
(see ``docs/tangent-models.md``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize

from ..errors import UnsupportedModelError
from .layouts import BlockLayout, layout_for
from .ops import TangentOps
from .selection import Selection, select
from .twins import (_DUAL_ACTIVE, PrimalReuse, TangentLayer, effective_value, is_batch_norm, make_twin, tangent_mode,
                    twin_class)


class _TangentParametrization(nn.Module):
    """Fallback for a parameter outside a registered layer (e.g. a ViT's ``cls_token``): exact for
    the forward and the batch gradient, but Opacus has no per-sample hook for it."""

    def __init__(self, theta0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("theta0", theta0.detach().clone(), persistent=False)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return effective_value(self.theta0, delta)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value - self.theta0


def _base_name(internal: str) -> str:
    """``a.parametrizations.w.original`` -> ``a.w``: report deltas under the base model's names."""
    parts = internal.split(".")
    if len(parts) >= 3 and parts[-3] == "parametrizations" and parts[-1] == "original":
        parts = parts[:-3] + [parts[-2]]
    return ".".join(parts)


def _disable_fused_attention(net: nn.Module) -> list[str]:
    """timm attention modules call fused SDPA kernels that have no forward-mode derivative: the math path
    by default; returns the modules' names (the frozen prefix turns theirs back on)."""
    changed = []
    for name, module in net.named_modules():
        if getattr(module, "fused_attn", False) is True:
            module.fused_attn = False
            changed.append(name)
    return changed


def _disable_inplace(net: nn.Module) -> None:
    """In-place activations (timm's default) may not modify the output of a module that carries a
    full backward hook (Opacus) or a forward-mode view; the out-of-place result is identical."""
    for module in net.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False


def _convert(net: nn.Module, selected: Sequence[str]) -> list[str]:
    """Freeze ``net`` and make ``selected`` parameters deltas; returns the names on the fallback path."""
    by_owner: dict[str, set[str]] = {}
    for name in selected:
        owner, _, leaf = name.rpartition(".")
        by_owner.setdefault(owner, set()).add(leaf)
    for param in net.parameters():
        param.requires_grad_(False)
    fallback = []
    for path, module in list(net.named_modules()):
        own = by_owner.get(path, set())
        if is_batch_norm(module):
            if twin_class(type(module)) is None:
                raise UnsupportedModelError(
                    f"{path or 'model'} ({type(module).__name__}): this batch-norm type cannot be frozen to its "
                    "running statistics; register a tangent layer for it")
            if getattr(module, "running_mean", None) is None:
                raise UnsupportedModelError(
                    f"{path or 'model'}: batch norm without running statistics cannot be frozen")
            make_twin(module, own)
        elif own and twin_class(type(module)) is not None:
            make_twin(module, own)
        else:
            for leaf in sorted(own):
                parametrize.register_parametrization(
                    module, leaf, _TangentParametrization(getattr(module, leaf)), unsafe=True)
                module.parametrizations[leaf].original.requires_grad_(True)
                fallback.append(f"{path}.{leaf}" if path else leaf)
    return fallback


class _ValueWithGradientTo(torch.autograd.Function):
    """Returns ``value``; the gradient w.r.t. the output goes unchanged to ``route``.

    ``route`` is f(x; theta) at theta0 with delta in its graph, whose Jacobian in delta is J(x):
    so the backward yields J^T v, the exact gradient of the tangent model at any delta."""

    generate_vmap_rule = True  # usable under torch.func transforms (e.g. RegMean's vjp)

    @staticmethod
    def forward(route: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None


class TangentModel(nn.Module):
    """f_lin(x; delta) = f(x; theta0) + J(x)·delta for a frozen copy ``net`` of the base network."""

    def __init__(self, net: nn.Module, layout: BlockLayout | None, selection: Selection, fallback: list[str],
                 fused_attention: Sequence[str] = ()) -> None:
        super().__init__()
        self.net = net
        self.layout = layout
        self.selection = selection
        self.fallback_parameters = tuple(fallback)
        self.fused_attention = tuple(fused_attention)  # modules whose fused SDPA the base network ran
        internal = {_base_name(n): n for n, p in net.named_parameters() if p.requires_grad}
        self._deltas = [(name, internal[name]) for name in selection.names]  # the base model's order
        self.train(False)

    @property
    def trainable(self) -> str:
        return self.selection.spec

    @property
    def cut(self) -> int | None:
        return self.selection.cut

    # -- deltas ---------------------------------------------------------------------------
    def named_deltas(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, delta)`` with the base model's own parameter names."""
        params = dict(self.net.named_parameters())
        for base, internal in self._deltas:
            yield base, params[internal]

    def deltas(self) -> list[nn.Parameter]:
        """The trainable deltas, in the base model's parameter order."""
        return [p for _, p in self.named_deltas()]

    def load_deltas(self, mapping: Mapping[str, torch.Tensor]) -> None:
        """Set every delta from ``mapping`` (base names); names and shapes must match exactly."""
        own = dict(self.named_deltas())
        missing, unexpected = sorted(set(own) - set(mapping)), sorted(set(mapping) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"deltas do not match this tangent model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for name, param in own.items():
            value = mapping[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"delta {name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(mapping[name])

    # -- forward --------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen prefix (stem + blocks before the cut) at theta0; cache it when inputs repeat."""
        if self.cut is None:
            return x
        with torch.no_grad(), self._fused_attention():
            return self.layout.run_prefix(self.net, x, self.cut)

    @contextlib.contextmanager
    def _fused_attention(self) -> Iterator[None]:
        """The base network's fused attention kernels (``fused_attention``) for the frozen prefix, a pass with
        neither forward-mode derivatives nor ``torch.func`` transforms (which have no rule for them): the same
        function as the math path up to float rounding, and faster (about 8% of a ViT-S/16 prefix on 2 cores).
        The suffix keeps the math path: the dual pass needs it, and the plain pass that records the graph must
        see the dual pass's primals bit for bit to reuse them (:class:`PrimalReuse`; a fused plain pass
        recomputed every later linear layer and was slower)."""
        if not self.fused_attention or _DUAL_ACTIVE.get() or torch._C._are_functorch_transforms_active():
            with sdpa_kernel(SDPBackend.MATH):
                yield
            return
        modules = [self.net.get_submodule(name) for name in self.fused_attention]
        for module in modules:
            module.fused_attn = True
        try:
            yield
        finally:
            for module in modules:
                module.fused_attn = False

    def _suffix(self, h: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return self.net(h) if self.cut is None else self.layout.run_suffix(self.net, h, self.cut)

    def forward_from_features(self, h: torch.Tensor) -> torch.Tensor:
        """f_lin from cached prefix outputs ``h = features(x)``.

        The value comes from one dual pass without autograd (primal + tangent, no graph). When
        gradients are needed, a plain pass at theta0 then records the graph (and feeds Opacus's hooks)
        and receives them: d loss/d delta = J^T v exactly, with v = d loss/d output at f_lin. That pass
        takes the linear and convolution twins' outputs, and GELU's, from the dual pass's primals
        (:class:`PrimalReuse`), so they run once at theta0; the dual pass's transient tangents
        are gone before the graph is built.
        """
        if not (torch.is_grad_enabled() and any(p.requires_grad for p in self.deltas())):
            return self._dual_value(h)
        reuse = PrimalReuse()
        with reuse.recording():
            value = self._dual_value(h)
        with TangentOps(), reuse.replaying():  # the same op overrides, e.g. in-place arithmetic on hooked outputs
            at_theta0 = self._suffix(h)
        return _ValueWithGradientTo.apply(at_theta0, value)

    def _dual_value(self, h: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), tangent_mode():
            primal, tangent = fwAD.unpack_dual(self._suffix(h))
        return primal if tangent is None else primal + tangent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f_lin(x; delta) = f(x; theta0) + J(x)·delta."""
        return self.forward_from_features(self.features(x))

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x; theta0): the frozen base network as linearized (eval mode; math attention after the cut, so
        that it equals f_lin at delta = 0 bit for bit)."""
        with torch.no_grad():
            return self._suffix(self.features(x))

    def on_features(self) -> nn.Module:
        """A module sharing these deltas whose input is ``features(x)``: train on a feature cache."""
        return TangentOnFeatures(self)

    def train(self, mode: bool = True) -> "TangentModel":
        """Only layers holding deltas follow ``mode`` (Opacus captures activations in train mode);
        every other module stays in eval: running BatchNorm statistics, no dropout or drop-path."""
        self.training = mode
        for module in self.net.modules():
            module.training = bool(mode and isinstance(module, TangentLayer) and module.delta_names)
        return self


class TangentOnFeatures(nn.Module):
    """``forward(h) = tangent.forward_from_features(h)``; its parameters are the tangent's deltas."""

    def __init__(self, tangent: TangentModel) -> None:
        super().__init__()
        self.tangent = tangent

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.tangent.forward_from_features(h)

    def train(self, mode: bool = True) -> "TangentOnFeatures":
        self.training = mode
        self.tangent.train(mode)
        return self


def _example_input(model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    own = getattr(model, "example_input", None)
    if callable(own):  # e.g. token ids for a text classifier
        return own(dtype)
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None):
        chans = patch_embed.proj.in_channels
        return torch.randn(2, chans, *patch_embed.img_size, dtype=dtype)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        chans, *spatial = cfg["input_size"]
        if not cfg.get("fixed_input_size"):  # pooled heads accept any size: keep the probe cheap
            spatial = [min(s, 64) for s in spatial]
        return torch.randn(2, chans, *spatial, dtype=dtype)
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if isinstance(first, nn.Linear):
        return torch.randn(2, first.in_features, dtype=dtype)
    raise UnsupportedModelError(
        f"cannot guess an input for {type(model).__name__}; pass example_input= to linearize")


@contextlib.contextmanager
def _module_stack(net: nn.Module) -> Iterator[list[str]]:
    """Track which modules are mid-forward, to name the one where an operation fails."""
    stack: list[str] = []
    handles = []

    def enter(name: str) -> None:
        stack.append(name)

    def leave() -> None:
        stack.pop()

    for name, module in net.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(n)))
        handles.append(module.register_forward_hook(lambda m, a, o: leave()))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _probe(tangent: TangentModel, example_input: torch.Tensor) -> None:
    """Run forward (dual) and backward once so an unsupported op fails now, naming its module."""
    stack: list[str] = []
    try:
        with _module_stack(tangent.net) as stack:
            out = tangent(example_input)
        stack = ["<backward pass>"]
        if out.requires_grad:
            out.sum().backward()
    except Exception as err:  # noqa: BLE001 -- re-raised with the module's name
        where = stack[-1] if stack else "<top level>"
        module = dict(tangent.net.named_modules()).get(where)
        kind = f" ({type(module).__name__})" if module is not None else ""
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedModelError(f"cannot linearize module '{where or 'model'}'{kind}: {message}") from err
    finally:
        for param in tangent.deltas():
            param.grad = None


def linearize(
    model: nn.Module,
    trainable: str | Sequence[str] | None = None,
    *,
    example_input: torch.Tensor | None = None,
) -> TangentModel:
    """The tangent model of ``model`` around its current weights theta0 (``model`` is not modified).

    ``trainable`` selects what is linearized (see :mod:`dp_tangent.tangent.selection`: ``None``/``"all"``,
    ``"blocks[-K:]"``, ``"head"``, or parameter-name prefixes). A probe forward and backward pass on
    ``example_input`` (guessed for timm models and MLPs) makes unsupported operations fail here.
    """
    net = copy.deepcopy(model).eval()
    fused = _disable_fused_attention(net)
    _disable_inplace(net)
    layout = layout_for(net)
    selection = select(net, trainable, layout)
    fallback = _convert(net, selection.names)
    tangent = TangentModel(net, layout, selection, fallback, fused)
    dtype = next(iter(net.parameters())).dtype
    _probe(tangent, example_input if example_input is not None else _example_input(model, dtype))
    return tangent
