"""Masking strategies behind one interface: which tokens of each field become targets, and how the
model input of those tokens is altered (AtmoRep spec §5.1).

A strategy maps a :class:`~atmorep.model.batch.Batch` and a generator to :class:`Masks`: per field a
boolean target mask ``(B, L, T, Y, X)`` (a plain ``dict`` to its users), plus the random draws of the
input corruption. :func:`apply` turns a batch into the model input; it is a pure function of the
batch and the masks. Strategies are registered in :data:`STRATEGIES` by name.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, P values per token, tt/ty/tx points per
token (P = tt*ty*tx), K tokens of one kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from atmorep.config import MaskingConfig
from atmorep.model.batch import Batch


@dataclass(frozen=True)
class Corruption:
    """How the masked tokens of one field enter the model (applied in this order).

    - ``zero`` ``(B, L, T, Y, X)``: tokens set to 0, the mean in normalized space;
    - ``noise`` ``(B, L, T, Y, X)``: tokens ``x <- (1 - w) x + a`` with ``noise_weight`` w ``(K,)`` and
      the additive noise ``noise_add`` a ``(K, P)`` for the K noised tokens (``noise.nonzero()`` order);
    - ``coarsen`` ``(B, L, T, Y, X)``: tokens area-averaged to ``coarse_size`` (ty', tx') points in
      lat/lon and interpolated back to ``token_size`` (tt, ty, tx).
    """

    zero: torch.Tensor
    noise: torch.Tensor
    noise_weight: torch.Tensor
    noise_add: torch.Tensor
    coarsen: torch.Tensor
    token_size: tuple[int, int, int]
    coarse_size: tuple[int, int]


class Masks(dict):
    """field -> boolean target mask ``(B, L, T, Y, X)``; ``corruptions`` holds the input alterations per
    field (a field without one has all its masked tokens zeroed)."""

    def __init__(self, masks: dict[str, torch.Tensor], corruptions: dict[str, Corruption] | None = None):
        super().__init__(masks)
        self.corruptions = dict(corruptions or {})


class Masking(Protocol):
    def __call__(self, batch: Batch, gen: torch.Generator | None = None) -> Masks: ...


def _slab_masks(batch: Batch, slabs: Callable[[int], list[int]]) -> Masks:
    """Every token of the given time slabs (a function of T) of every field, level and sample."""
    masks = {}
    for f, t in batch.tokens.items():
        m = torch.zeros(t.shape[:5], dtype=torch.bool, device=t.device)
        T = t.shape[2]
        chosen = slabs(T)
        if any(not 0 <= s < T for s in chosen) or len(set(chosen)) >= T:
            raise ValueError(f"field '{f}': cannot mask time slabs {chosen} of {T} (some context must remain)")
        m[:, :, chosen] = True
        masks[f] = m
    return Masks(masks)


class ForecastMasking:
    """The last ``slabs`` time slabs of every field and level (AtmoRep ``forecast``)."""

    def __init__(self, slabs: int):
        self.slabs = slabs

    def __call__(self, batch: Batch, gen: torch.Generator | None = None) -> Masks:
        return _slab_masks(batch, lambda T: list(range(T - self.slabs, T)))


class GlobalForecastMasking(ForecastMasking):
    """Forecast masking of the windows that tile the globe at one time (AtmoRep ``global_forecast``).

    Every tile is masked like a forecast window; producing the tiles (196 per time at 0.25°) and
    stitching them is the sampler's and the writer's job, not the mask's.
    """


class TemporalInterpolationMasking:
    """Given time slabs of every field and level; none given: the middle slab ``T // 2`` (AtmoRep)."""

    def __init__(self, slabs: tuple[int, ...] = ()):
        self.slabs = tuple(slabs)

    def __call__(self, batch: Batch, gen: torch.Generator | None = None) -> Masks:
        return _slab_masks(batch, lambda T: list(self.slabs) or [T // 2])


class BertMasking:
    """AtmoRep's ``BERT`` pre-training masks, independently per sample, field and level.

    A rate ``r ~ U(0, rate)`` is drawn and ``ceil(r * T*Y*X)`` tokens (at least one) are chosen
    uniformly without replacement. Each chosen token is, independently, zeroed with ``p_mask``, noised
    with ``p_noise`` and coarsened with ``p_coarsen``; chosen tokens hit by none stay as they are but
    remain targets. Noise: ``x <- (1 - w) x + noise_scale * std * eps`` with ``w ~ U(0, 1)`` per token
    and ``std`` the per-value standard deviation over the batch's tokens of that level. Coarsening:
    one factor ``c ~ U(1, coarsen_max)`` per batch, ``ty' = max(1, floor(ty / c))`` (the original
    up-sampled instead, a no-op smoothing, spec §5.1).

    ``token_sizes`` (field -> (tt, ty, tx)) is needed for coarsening; a field without one is assumed
    to have square lat/lon tokens (the largest square dividing P). ``cfg.field_rates`` gives a field
    its own ``[rate, p_mask, p_noise, p_coarsen]`` (the original's per-field masking entry).
    """

    def __init__(self, cfg: MaskingConfig, token_sizes: dict[str, tuple[int, int, int]] | None = None):
        self.cfg, self.token_sizes = cfg, dict(token_sizes or {})

    def __call__(self, batch: Batch, gen: torch.Generator | None = None) -> Masks:
        # Every draw comes from gen in a fixed order (fields in batch order): reordering them changes the
        # masks a seed gives.
        masks, corruptions = {}, {}
        factor = 1 + torch.rand((), generator=gen).item() * (self.cfg.coarsen_max - 1)
        for f, t in batch.tokens.items():
            masks[f] = self._targets(f, t.shape[:5], gen).to(t.device)
            corruptions[f] = self._corruption(f, t, masks[f], factor, gen)
        return Masks(masks, corruptions)

    def _rates(self, f: str) -> tuple[float, float, float, float]:
        cfg = self.cfg
        rate, p_mask, p_noise, p_coarsen = cfg.field_rates.get(f, (cfg.rate, cfg.p_mask, cfg.p_noise, cfg.p_coarsen))
        return rate, p_mask, p_noise, p_coarsen

    def _targets(self, f: str, shape_BLTYX, gen) -> torch.Tensor:
        B, L, T, Y, X = shape_BLTYX
        n = T * Y * X
        # At least one target per sample and level (the original may draw none for a level).
        count = torch.ceil(torch.rand(B, L, 1, generator=gen) * self._rates(f)[0] * n).clamp(min=1)
        # argsort of uniform draws is a random permutation, argsort again its inverse: each token's rank,
        # so rank < count picks count tokens without replacement, for all (B, L) at once.
        rank = torch.rand(B, L, n, generator=gen).argsort(dim=-1).argsort(dim=-1)
        return (rank < count).view(B, L, T, Y, X)

    def _corruption(self, f: str, t: torch.Tensor, mask: torch.Tensor, factor: float, gen) -> Corruption:
        cfg = self.cfg

        def draw(p: float) -> torch.Tensor:
            # Drawn on the CPU generator, then moved: a seed gives the same masks on every device.
            return mask & (torch.rand(mask.shape, generator=gen) < p).to(mask.device)

        _, p_mask, p_noise, p_coarsen = self._rates(f)
        zero, noise, coarsen = draw(p_mask), draw(p_noise), draw(p_coarsen)
        k = int(noise.sum())
        # The batch's own spread sets the noise scale (std of the unmasked input, per level and value).
        std_LP = level_std(t)
        # nonzero() is in C order, the order t[noise] selects tokens in corrupt(); column 1 is the level.
        level_K = noise.nonzero()[:, 1]
        eps = torch.randn(k, t.shape[-1], generator=gen).to(t)
        size = self.token_sizes.get(f) or square_token_size(t.shape[-1])
        if math.prod(size) != t.shape[-1]:
            raise ValueError(f"field '{f}': token size {tuple(size)} does not hold {t.shape[-1]} values per token")
        # Lat/lon only (size[1:]): time steps of a token are never averaged together.
        cy, cx = (max(1, math.floor(s / factor)) for s in size[1:])
        return Corruption(
            zero,
            noise,
            torch.rand(k, generator=gen).to(t),
            cfg.noise_scale * std_LP[level_K] * eps,
            coarsen,
            (size[0], size[1], size[2]),
            (cy, cx),
        )


def level_std(tokens_BLTYXP: torch.Tensor) -> torch.Tensor:
    """Per level and value, the standard deviation over the batch's tokens ``(L, P)`` (0 if undefined)."""
    x = tokens_BLTYXP.transpose(0, 1).flatten(1, 4)  # L (B T Y X) P
    # NaN when a level has a single token (unbiased std of one value): no noise rather than NaN input.
    return torch.nan_to_num(x.std(dim=1), nan=0.0)


def square_token_size(values_per_token: int) -> tuple[int, int, int]:
    """``(tt, s, s)`` with the largest ``s*s`` dividing P: the token shape when only P is known."""
    s = max(d for d in range(1, math.isqrt(values_per_token) + 1) if values_per_token % (d * d) == 0)
    return values_per_token // (s * s), s, s


def coarsen(tokens_KP: torch.Tensor, token_size: tuple[int, int, int], coarse_size: tuple[int, int]) -> torch.Tensor:
    """Tokens area-averaged to ``coarse_size`` in lat/lon and trilinearly interpolated back, ``(K, P)``."""
    tt, ty, tx = token_size
    # P is row-major over (tt, ty, tx), as the tokens are cut; the 1 is the channel the pooling wants.
    x = tokens_KP.reshape(-1, 1, tt, ty, tx)
    # adaptive pooling accepts sizes that do not divide (ty, tx): each output cell averages its share.
    low = F.adaptive_avg_pool3d(x, (tt, *coarse_size))
    return F.interpolate(low, size=(tt, ty, tx), mode="trilinear", align_corners=False).reshape(tokens_KP.shape)


def corrupt(tokens_BLTYXP: torch.Tensor, c: Corruption) -> torch.Tensor:
    """The model input of one field: zero, then noise, then coarsen (a new tensor)."""
    # masked_fill returns a copy: the in-place writes below never touch the caller's batch. Zeroing
    # first makes a token both zeroed and noised pure noise.
    x = tokens_BLTYXP.masked_fill(c.zero[..., None], 0.0)
    if c.noise.any():
        x[c.noise] = (1 - c.noise_weight[:, None]) * x[c.noise] + c.noise_add
    if c.coarsen.any():
        x[c.coarsen] = coarsen(x[c.coarsen], c.token_size, c.coarse_size)
    return x


def apply(batch: Batch, masks: dict[str, torch.Tensor]) -> Batch:
    """The model input: masked tokens altered as ``masks.corruptions`` says, else set to zero."""
    # A plain dict of masks (the signature allows one) has no corruptions: its masked tokens are zeroed.
    corruptions = getattr(masks, "corruptions", {})
    tokens = {
        f: corrupt(t, corruptions[f]) if f in corruptions else t.masked_fill(masks[f][..., None], 0.0)
        for f, t in batch.tokens.items()
    }
    return Batch(tokens, batch.info)


#: name -> factory(config, token sizes per field) of a strategy
STRATEGIES: dict[str, Callable[[MaskingConfig, dict], Masking]] = {
    "bert": lambda cfg, sizes: BertMasking(cfg, sizes),
    "forecast": lambda cfg, sizes: ForecastMasking(cfg.forecast_tokens),
    "global_forecast": lambda cfg, sizes: GlobalForecastMasking(cfg.forecast_tokens),
    "temporal_interpolation": lambda cfg, sizes: TemporalInterpolationMasking(cfg.interpolation_slabs),
}


class Unmasked:
    """``strategy`` with ``fields`` never masked (the original: rate 0 in a field's masking entry, or a
    static field, is left as it is under every strategy; such a field can only be an input)."""

    def __init__(self, strategy: Masking, fields: set[str]):
        self.strategy, self.fields = strategy, set(fields)

    def __call__(self, batch: Batch, gen: torch.Generator | None = None) -> Masks:
        # The strategy still draws for these fields, so other fields get the same masks as without them.
        masks = self.strategy(batch, gen)
        # An all-False mask, not a missing key: batch, masks and loss keep naming the same fields.
        out = {f: torch.zeros_like(m) if f in self.fields else m for f, m in masks.items()}
        return Masks(out, {f: c for f, c in getattr(masks, "corruptions", {}).items() if f not in self.fields})


def build(
    cfg: MaskingConfig, token_sizes: dict[str, tuple[int, int, int]] | None = None, predicted: list[str] | None = None
) -> Masking:
    """The configured strategy; ``token_sizes`` (field -> (tt, ty, tx)) lets ``bert`` coarsen exactly.

    With ``token_sizes``, ``cfg.field_rates`` may name only those fields; with ``predicted`` (the
    fields the model predicts), none of them may have rate 0.
    """
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"train.masking.strategy: unknown '{cfg.strategy}' (known: {', '.join(STRATEGIES)})")
    unknown = sorted(set(cfg.field_rates) - set(token_sizes)) if token_sizes else []
    if unknown:
        raise ValueError(f"train.masking.field_rates names fields the model does not have: {unknown}")
    bad = {f: r for f, r in cfg.field_rates.items() if len(r) != 4 or not all(0 <= v <= 1 for v in r)}
    if bad:
        raise ValueError(f"train.masking.field_rates: {bad} must be [rate, p_mask, p_noise, p_coarsen] in [0, 1]")
    never = {f for f, r in cfg.field_rates.items() if r[0] == 0}
    clash = sorted(never & set(predicted or ()))
    if clash:
        raise ValueError(
            f"train.masking.field_rates: {clash} have rate 0 (never masked, no targets) but the "
            "model predicts them; list them in model.inputs_only or give them a rate"
        )
    strategy = STRATEGIES[cfg.strategy](cfg, dict(token_sizes or {}))
    return Unmasked(strategy, never) if never else strategy
