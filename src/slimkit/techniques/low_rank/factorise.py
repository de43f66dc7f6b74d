"""One layer factorised: the math, the replacement modules and what they cost.

A Linear (or a 1x1 conv) W becomes two: x -> V (r rows) -> U, from a truncated SVD. A kxk conv
becomes Tucker-2: a 1x1 conv into r_in channels, a kxk core from r_in to r_out channels and a
1x1 conv out, from HOSVD refined by a few HOOI sweeps (each factor the leading subspace of its
mode with the other factor fixed), which is all tensorly's `partial_tucker` would do here.

With an input covariance C = S S^T the cut is made on W S instead of W (SVD-LLM, ASVD): the
directions the calibration inputs hardly use are the ones truncated, so the layer's output error
on that data, not its weight error, is what the rank bounds. The input factor then absorbs S^-1;
at full rank the product is W again whatever S is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

Kind = Literal["svd", "tucker2"]
Rank = tuple[int, ...]  # (r,) for an SVD, (r_in, r_out) for Tucker-2

# Share of the covariance's mean eigenvalue added to every eigenvalue (GPTQ's 1% damping):
# a direction the calibration data never took must not get an unbounded inverse.
DAMP = 0.01
HOOI_SWEEPS = 2


def kind_of(m: nn.Module) -> Kind | None:
    """How a layer is factorised; None for what is not (depthwise and other grouped convs:
    their weights are already one small filter per channel group)."""
    from torch import nn

    if isinstance(m, nn.Linear):
        return "svd"
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        return "svd" if tuple(m.kernel_size) == (1, 1) else "tucker2"
    return None


@dataclass(frozen=True)
class Layer:
    """A factorisable layer's shape and how many positions it sees per example."""

    name: str
    kind: Kind
    cin: int
    cout: int
    kernel: tuple[int, int]
    in_positions: int
    out_positions: int
    bias: bool

    @property
    def full(self) -> Rank:
        return (min(self.cin, self.cout),) if self.kind == "svd" else (self.cin, self.cout)

    def flops(self, rank: Rank | None = None) -> float:
        """FLOPs per example (2 per multiply-add), as slimkit's layer counter counts them."""
        kk = self.kernel[0] * self.kernel[1]
        if rank is None:
            return 2.0 * self.out_positions * self.cout * self.cin * kk
        if self.kind == "svd":
            return 2.0 * self.out_positions * rank[0] * (self.cin + self.cout)
        r_in, r_out = rank
        return 2.0 * (self.in_positions * self.cin * r_in
                      + self.out_positions * (r_in * r_out * kk + r_out * self.cout))

    def params(self, rank: Rank | None = None) -> int:
        kk = self.kernel[0] * self.kernel[1]
        extra = self.cout if self.bias else 0
        if rank is None:
            return self.cout * self.cin * kk + extra
        if self.kind == "svd":
            return rank[0] * (self.cin + self.cout) + extra
        r_in, r_out = rank
        return self.cin * r_in + r_in * r_out * kk + r_out * self.cout + extra


def whitener(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S and S^-1 with S S^T = C (damped), from C's eigendecomposition."""
    import torch

    c = cov.double()
    lam, q = torch.linalg.eigh((c + c.T) / 2)
    lam = lam.clamp(min=0) + DAMP * lam.clamp(min=0).mean() + 1e-12
    return q * lam.sqrt(), (q / lam.sqrt()).T


def svd_factors(w: torch.Tensor, r: int, cov: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second): first (r x in), second (out x r), second @ first ~ w; the singular
    values split evenly between them so neither factor's range dwarfs the other's."""
    import torch

    w64 = w.double()
    s, s_inv = whitener(cov) if cov is not None else (None, None)
    target = w64 @ s if s is not None else w64
    u, sv, vh = torch.linalg.svd(target, full_matrices=False)
    root = sv[:r].sqrt()
    first = root[:, None] * vh[:r]
    if s_inv is not None:
        first = first @ s_inv
    return first, u[:, :r] * root


def _leading(a: torch.Tensor, r: int) -> torch.Tensor:
    """The `r` leading left singular vectors of a wide `a`, from its small Gram matrix (an
    SVD would also make the right vectors, as many as a conv has inputs times taps)."""
    import torch

    vecs = torch.linalg.eigh(a @ a.T)[1]
    return vecs.flip(1)[:, :r]


def tucker2_factors(w: torch.Tensor, r_in: int, r_out: int, cov: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(into (r_in x cin), core (r_out x r_in x kh x kw), out (cout x r_out)) of a conv weight
    (cout x cin x kh x kw); `cov` is the input channels' covariance."""
    import torch

    w64 = w.double()
    s, s_inv = whitener(cov) if cov is not None else (None, None)
    t = torch.einsum("oihw,ij->ojhw", w64, s) if s is not None else w64
    cout, cin = t.shape[:2]
    u_out = _leading(t.reshape(cout, -1), r_out)
    u_in = _leading(t.transpose(0, 1).reshape(cin, -1), r_in)
    for _ in range(HOOI_SWEEPS):
        u_in = _leading(torch.einsum("oihw,or->irhw", t, u_out).reshape(cin, -1), r_in)
        u_out = _leading(torch.einsum("oihw,is->oshw", t, u_in).reshape(cout, -1), r_out)
    core = torch.einsum("oihw,or,is->rshw", t, u_out, u_in)
    into = u_in.T @ s_inv if s_inv is not None else u_in.T
    return into, core, u_out


def empty_factorised(m: nn.Module, rank: Rank) -> nn.Sequential:
    """The modules that replace `m` at `rank`, shaped but not filled (a rebuild loads them)."""
    from torch import nn

    kind = kind_of(m)
    like = {"dtype": m.weight.dtype, "device": m.weight.device}
    has_bias = m.bias is not None
    if isinstance(m, nn.Linear):
        return nn.Sequential(nn.Linear(m.in_features, rank[0], bias=False, **like),
                             nn.Linear(rank[0], m.out_features, bias=has_bias, **like))
    assert isinstance(m, nn.Conv2d) and kind is not None
    cin, cout = m.in_channels, m.out_channels
    if kind == "svd":  # stride and padding on the first 1x1: the second sees fewer positions
        return nn.Sequential(
            nn.Conv2d(cin, rank[0], 1, m.stride, m.padding, bias=False,
                      padding_mode=m.padding_mode, **like),
            nn.Conv2d(rank[0], cout, 1, bias=has_bias, **like))
    r_in, r_out = rank
    return nn.Sequential(
        nn.Conv2d(cin, r_in, 1, bias=False, **like),
        nn.Conv2d(r_in, r_out, m.kernel_size, m.stride, m.padding, m.dilation, bias=False,
                  padding_mode=m.padding_mode, **like),
        nn.Conv2d(r_out, cout, 1, bias=has_bias, **like))


def factorised(m: nn.Module, rank: Rank, cov: torch.Tensor | None = None) -> nn.Sequential:
    """`m` replaced by its factors at `rank` (whitened by `cov` when given)."""
    import torch

    new = empty_factorised(m, rank)
    w = m.weight.detach()
    with torch.no_grad():
        if kind_of(m) == "svd":
            first, second = svd_factors(w.reshape(w.shape[0], -1), rank[0], cov)
            new[0].weight.copy_(first.reshape(new[0].weight.shape))
            new[1].weight.copy_(second.reshape(new[1].weight.shape))
        else:
            into, core, out = tucker2_factors(w, rank[0], rank[1], cov)
            new[0].weight.copy_(into.reshape(new[0].weight.shape))
            new[1].weight.copy_(core)
            new[2].weight.copy_(out.reshape(new[2].weight.shape))
        if m.bias is not None:
            new[-1].bias.copy_(m.bias.detach())
    return new


def step_for(full: int, round_to: int) -> int:
    """Ranks are multiples of `round_to`, or of a smaller power of two where a layer has fewer
    than eight such steps, so a tiny layer still gets more than one or two choices."""
    step = round_to
    while step > 1 and full < 8 * step:
        step //= 2
    return step


def rounded(share: float, full: int, step: int) -> int:
    """`share` of `full`, a multiple of `step`, at least one step."""
    if full <= step:
        return full
    return min(full, max(step, round(share * full / step) * step))


def options(layer: Layer, levels: list[float], round_to: int, cost: str) -> list[Rank]:
    """The ranks a scan tries, cheapest first: one per level, each a saving over the layer
    as it is (a rank above break-even would cost more than the layer it replaces)."""
    base = layer.flops() if cost == "flops" else layer.params()
    found = set()
    for share in levels:
        rank = tuple(rounded(share, f, step_for(f, round_to)) for f in layer.full)
        spend = layer.flops(rank) if cost == "flops" else layer.params(rank)
        if spend < base:
            found.add(rank)
    return sorted(found, key=lambda r: (layer.flops(r) if cost == "flops" else layer.params(r)))
