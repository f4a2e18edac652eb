"""The sampler's linear layers with their weights packed once for oneDNN (CPU, bf16).

``torch.nn.functional.linear`` hands a bf16 weight to oneDNN, which reorders it into its
blocked layout on every call; :func:`pack_linears` keeps that layout (torch's own
``mkldnn._reorder_linear_weight`` / ``mkldnn._linear_pointwise``, the ops torch.compile's
freezing pass uses on CPU) and reuses it. The products are the same bits as ``F.linear``'s:
:func:`pack_linears` checks that on each weight shape of the model before it packs anything,
and packs nothing where they differ (another CPU or oneDNN build), so it moves no float.
A weight changed in place (the TTRL rollout sampler's sync) is packed again on its next use.
Measured: docs/sampler-speed.md.
"""

from __future__ import annotations

from typing import Any

#: rows of the probe inputs the bit-for-bit check runs (a decode step's few rows up to a prefill's)
PROBE_ROWS = (1, 7, 64, 129)


def packing_available(model: Any) -> bool:
    """CPU, bf16 weights and torch built with oneDNN's bf16 linear ops."""
    import torch

    p = next(model.parameters(), None)
    return (
        p is not None
        and p.device.type == "cpu"
        and p.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _pack(weight: Any) -> Any:
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 64)


def _packed_product(x: Any, packed: Any, bias: Any, out_features: int) -> Any:
    import torch

    shape = x.shape
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), packed, bias, "none", [], "")
    return y.view(*shape[:-1], out_features)


class PackedForward:
    """A ``torch.nn.Linear``'s forward through its packed weight, packed again when the weight
    has changed in place since (``Tensor._version``)."""

    def __init__(self, module: Any):
        self.module = module
        self.packed, self.version = _pack(module.weight), module.weight._version

    def __call__(self, x: Any) -> Any:
        m = self.module
        if m.weight._version != self.version:
            self.packed, self.version = _pack(m.weight), m.weight._version
        bias = None if m.bias is None else m.bias.detach()
        return _packed_product(x, self.packed, bias, m.out_features)


def same_bits(module: Any, rows: tuple[int, ...] = PROBE_ROWS) -> bool:
    """Whether the packed product equals ``F.linear``'s bit for bit on random inputs of ``rows``
    rows (with the module's own weight and bias)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    w = module.weight.detach()
    bias = None if module.bias is None else module.bias.detach()
    packed = _pack(w)
    with torch.no_grad():
        for n in rows:
            x = torch.randn(n, module.in_features, generator=gen).to(w.dtype)
            want = torch.nn.functional.linear(x, w, bias)
            if not torch.equal(_packed_product(x, packed, bias, module.out_features), want):
                return False
    return True


def pack_linears(model: Any) -> int:
    """Route every ``torch.nn.Linear`` of ``model`` through a packed weight when that gives the
    same bits (checked once per weight shape); returns how many were packed (0: none, e.g. not
    CPU bf16, or a shape whose packed product differed)."""
    import torch

    if not packing_available(model):
        return 0
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    kinds: dict[tuple, Any] = {}
    for m in linears:
        kinds.setdefault((m.in_features, m.out_features, m.bias is not None), m)
    if not all(same_bits(m) for m in kinds.values()):
        return 0
    for m in linears:
        m.forward = PackedForward(m)
    return len(linears)


def unpack_linears(model: Any) -> None:
    """Undo :func:`pack_linears`: every module back to its class's forward (``F.linear``)."""
    for m in model.modules():
        m.__dict__.pop("forward", None)
