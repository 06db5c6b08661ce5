"""iFormer architecture settings: the published variants and the checks of a custom one."""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ['ARCH_SETTINGS', 'NUM_STAGES', 'per_stage', 'resolve_arch', 'take_indices']

# One ``attention_heads`` entry per block over all stages (global block index).
ARCH_SETTINGS: Dict[str, Dict[str, Any]] = {
    'small': dict(depths=(3, 3, 9, 3), embed_dims=(96, 192, 320, 384),
                  attention_heads=(1,) * 3 + (3,) * 3 + (7,) * 4 + (9,) * 5 + (11,) * 3),
    'base': dict(depths=(4, 6, 14, 6), embed_dims=(96, 192, 384, 512),
                 attention_heads=(1,) * 4 + (3,) * 6 + (8,) * 7 + (10,) * 7 + (15,) * 6),
    'large': dict(depths=(4, 6, 18, 8), embed_dims=(96, 192, 448, 640),
                  attention_heads=(1,) * 4 + (3,) * 6 + (10,) * 9 + (12,) * 9 + (19,) * 8),
}
ARCH_ALIASES = {'s': 'small', 'b': 'base', 'l': 'large'}
# Architecture facts shared by every variant (overridable through an ``arch`` dict).
_ARCH_DEFAULTS: Dict[str, Any] = dict(
    head_dim=32, mlp_ratio=4.0,
    layer_scale_stages=(False, False, True, True),  # layer scale only in stages 3-4
    attn_pool_stages=(True, True, False, False),  # 2x2 avg-pool before attention in 1-2
)
_REQUIRED = ('depths', 'embed_dims', 'attention_heads')
NUM_STAGES = 4


def resolve_arch(arch: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Turn an arch name or dict into a validated, complete arch dict.

    Args:
        arch: ``'small'``, ``'base'``, ``'large'`` (or ``'s'``/``'b'``/``'l'``), or a dict
            with ``depths``, ``embed_dims`` and ``attention_heads`` (one entry per block over
            all stages); optional ``head_dim``, ``mlp_ratio``, ``layer_scale_stages``,
            ``attn_pool_stages``.

    Raises:
        ValueError: unknown name, missing/unknown keys, or numbers that cannot form an iFormer.
    """
    if isinstance(arch, str):
        name = ARCH_ALIASES.get(arch.lower(), arch.lower())
        if name not in ARCH_SETTINGS:
            raise ValueError(f'Unknown iFormer arch {arch!r}. Valid names: {sorted(ARCH_SETTINGS)} '
                             f"(or a dict with 'depths', 'embed_dims' and 'attention_heads').")
        cfg = dict(ARCH_SETTINGS[name])
    elif isinstance(arch, Mapping):
        cfg = dict(arch)
    else:
        raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
    missing = set(_REQUIRED) - set(cfg)
    if missing:
        raise ValueError(f'iFormer arch dict is missing {sorted(missing)}; got keys {sorted(cfg)}')
    unknown = set(cfg) - set(_REQUIRED) - set(_ARCH_DEFAULTS)
    if unknown:
        raise ValueError(f'iFormer arch dict has unknown keys {sorted(unknown)}; valid keys: '
                         f'{sorted(set(_REQUIRED) | set(_ARCH_DEFAULTS))}')
    out = dict(_ARCH_DEFAULTS, **cfg)
    for key in ('depths', 'embed_dims', 'attention_heads', 'layer_scale_stages', 'attn_pool_stages'):
        out[key] = tuple(out[key])
        if key != 'attention_heads' and len(out[key]) != NUM_STAGES:
            raise ValueError(f'arch {key!r} needs {NUM_STAGES} entries (one per stage), got {out[key]}')
    depths, dims, heads = out['depths'], out['embed_dims'], out['attention_heads']
    if len(heads) != sum(depths):
        raise ValueError(f"arch 'attention_heads' needs one entry per block: sum(depths)="
                         f'{sum(depths)}, got {len(heads)}')
    stage_of_block = [s for s, d in enumerate(depths) for _ in range(d)]
    for block, (stage, a) in enumerate(zip(stage_of_block, heads)):
        low, dim = a * out['head_dim'], dims[stage]
        if a < 1 or dim - low <= 0 or (dim - low) % 2:
            raise ValueError(f'block {block} (stage {stage + 1}): {a} attention heads x '
                             f"{out['head_dim']} = {low} low-frequency channels leaves {dim - low} "
                             f'of {dim} for the high-frequency branches; that must be positive and even')
    return out


def per_stage(value: Any, name: str) -> Tuple[Any, ...]:
    """Broadcast a scalar setting to the four stages, or check a per-stage sequence."""
    if isinstance(value, (list, tuple)):
        if len(value) != NUM_STAGES:
            raise ValueError(f'{name} needs {NUM_STAGES} entries (one per stage), got {value!r}')
        return tuple(value)
    return (value,) * NUM_STAGES


def take_indices(num: int, indices: Optional[Union[int, Sequence[int]]]) -> List[int]:
    """timm semantics: ``None`` -> all, ``int n`` -> last n, sequence -> those (negatives ok)."""
    if indices is None:
        return list(range(num))
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f'indices={indices}: take the last 1..{num} stages')
        return list(range(num - indices, num))
    out = []
    for i in indices:
        j = i + num if i < 0 else i
        if not 0 <= j < num:
            raise ValueError(f'stage index {i} out of range for {num} stages (valid: 0..{num - 1} or negative)')
        out.append(j)
    return out
