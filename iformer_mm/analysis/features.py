"""Models, layers and feature maps for the analysis tools.

A model comes from an mmdet/mmseg config (a path, or ``mmdet::...``/``mmseg::...``), a timm
model name, or an ``nn.Module``. Layers are picked by module name; their outputs are caught by
forward hooks and turned into NCHW maps whatever the layer writes: NCHW (ResNet), channels-last
NHWC (iFormer and timm Swin blocks) or token sequences ``(B, N, C)`` (mmdet Swin, ViT, with
class tokens dropped).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

# ImageNet statistics (RGB, 0..1): what timm's models and mmdet/mmseg's default data
# preprocessors (mean 123.675/116.28/103.53, std 58.395/57.12/57.375 on 0..255 RGB) use.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')

# Default "one entry per block" layer names, tried in order (full-match regexes on module
# names); the first pattern that matches anything wins.
DEFAULT_BLOCK_PATTERNS = (
    r'blocks\d+\.\d+',             # iFormer: blocks1.0 .. blocks4.2
    r'blocks\.\d+',                # timm ViT / DeiT / PoolFormer-style flat block lists
    r'stages\.\d+\.blocks\.\d+',   # mmdet Swin, timm ConvNeXt / MetaFormer
    r'layers\.\d+\.blocks\.\d+',   # timm Swin
    r'layer\d+\.\d+',              # ResNet (mmdet and timm)
    r'stages\.\d+',                # anything else staged
)


class AnalysisError(ValueError):
    """Bad input to an analysis tool: the message names the problem and the fix."""


@dataclass
class LoadedModel:
    """A model ready for analysis.

    Attributes:
        label: name shown in figures and JSON.
        kind: ``'timm'``, ``'mmdet'``, ``'mmseg'`` or ``'module'``.
        model: the whole model (classifier, detector or segmentor), in eval mode.
        backbone: the part whose layers are analysed (``model.backbone`` for mm models).
        checkpoint: the loaded weights file, or ``None`` (initialisation only).
    """

    label: str
    kind: str
    model: nn.Module
    backbone: nn.Module
    checkpoint: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    class_names: Optional[List[str]] = None

    def backbone_forward(self, x: torch.Tensor) -> Any:
        """Run the part of the model that holds the analysed layers."""
        return self.backbone(x)


# ----------------------------------------------------------------------------- models
def _build_from_config(spec: str) -> Tuple[nn.Module, str, Optional[List[str]]]:
    """``(model, scope, class names of the config's training set or None)``; the modules' own
    initialisation, pretrained inits dropped (:func:`iformer_mm.build.build_from_config`)."""
    from ..build import TASK_SCOPES, build_from_config, load_config
    cfg = load_config(spec)
    classes = (cfg.get('train_dataloader') or {}).get('dataset', {}).get('metainfo', {}).get('classes')
    model, task = build_from_config(cfg, init_weights=True)
    return model, TASK_SCOPES[task], [str(c) for c in classes] if classes else None


def _build_timm(name: str, num_classes: Optional[int]) -> nn.Module:
    import timm
    if not timm.is_model(name):
        close = timm.list_models(f'*{name}*')[:8]
        raise AnalysisError(f'{name!r} is neither a config file nor a timm model name'
                            + (f'; similar timm models: {", ".join(close)}' if close else ''))
    kwargs = {} if num_classes is None else dict(num_classes=num_classes)
    return timm.create_model(name, pretrained=False, **kwargs)


def _state_dict_of(obj: Any, path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint: mmengine's ``state_dict``, timm's ``model``/``state_dict``
    or a bare dict; a DDP ``module.`` prefix is removed."""
    from ..pretrained import CheckpointError
    for _ in range(2):
        if isinstance(obj, dict):
            inner = next((obj[k] for k in ('state_dict', 'model', 'state_dict_ema')
                          if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not sd:
        raise CheckpointError(f'{path} holds no tensors: is it a model checkpoint?')
    if all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


def _class_names(obj: Any) -> Optional[List[str]]:
    """Class names an mmengine run stored with its weights (``meta.dataset_meta.classes``)."""
    meta = obj.get('meta') if isinstance(obj, dict) else None
    classes = (meta or {}).get('dataset_meta', {}).get('classes') if isinstance(meta, dict) else None
    return [str(c) for c in classes] if classes else None


def load_weights(model: nn.Module, path: str) -> Tuple[List[str], Optional[List[str]]]:
    """Load ``path`` into ``model`` strictly and safely (``weights_only=True``).

    iFormer classifiers go through :func:`iformer_mm.load_pretrained` (it reads the authors'
    checkpoints); other models take a checkpoint of exactly their own keys: mmengine run
    checkpoints (the allow-list of :mod:`iformer_mm.engine.trusted_runs`) and timm/torch
    state dicts.

    Returns:
        ``(notes, class_names)``: what was loaded, and the class names stored with the
        weights (mmengine runs) or ``None``.

    Raises:
        CheckpointError: missing, unreadable, refused or not matching the model.
    """
    from ..models import InceptionTransformer
    from ..pretrained import CheckpointError, load_checkpoint_file, load_pretrained
    if isinstance(model, InceptionTransformer):
        return [load_pretrained(model, path).summary()], None
    try:  # the reader mmengine's own loads use: the run allow-list on every torch
        from ..engine.trusted_runs import load_from_local_safely
    except ImportError:  # no mmengine: plain tensors only
        obj = load_checkpoint_file(path)
    else:
        if not os.path.isfile(path):
            raise CheckpointError(f'checkpoint file not found: {path!r}')
        obj = load_from_local_safely(path, map_location='cpu')
    sd = _state_dict_of(obj, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f'{path} does not fit this model ({type(model).__name__}): {len(missing)} missing '
            f'(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), '
            f'{len(wrong)} of another shape (e.g. {wrong[:3]}). Give the checkpoint of a run of '
            'this same config / model name.')
    model.load_state_dict(sd)
    return [f'loaded {len(sd)} tensors from {path}'], _class_names(obj)


def load_model(spec: Union[str, nn.Module], checkpoint: Optional[str] = None,
               label: Optional[str] = None, num_classes: Optional[int] = None) -> LoadedModel:
    """Build a model for analysis and load its weights.

    Args:
        spec: a config path (``.py``), ``mmdet::``/``mmseg::`` config name, timm model name,
            or a ready ``nn.Module``.
        checkpoint: weights to load; ``None`` keeps the initialisation (a random model).
        label: name in figures (default: derived from ``spec``).
        num_classes: classes of a timm classifier (to match a fine-tuned checkpoint).

    Raises:
        AnalysisError: an unknown spec.
        ConfigError: a missing config file (:mod:`iformer_mm.build`).
        CheckpointError: a checkpoint that is missing, unsafe or does not fit.
    """
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise AnalysisError(f'checkpoint file not found: {checkpoint!r}')
    cfg_classes = None
    if isinstance(spec, nn.Module):
        model, kind = spec, 'module'
        label = label or type(spec).__name__
    elif not isinstance(spec, str) or not spec:
        raise AnalysisError(f'model must be a config path, a timm name or an nn.Module, got {spec!r}')
    elif spec.endswith('.py') or '::' in spec or os.sep in spec:
        model, kind, cfg_classes = _build_from_config(spec)
        label = label or os.path.splitext(os.path.basename(spec.split('::')[-1]))[0]
    else:
        model, kind = _build_timm(spec, num_classes), 'timm'
        label = label or spec
    notes, classes = (load_weights(model, checkpoint) if checkpoint
                      else (['no checkpoint: initialised weights'], None))
    classes = classes or cfg_classes
    model.eval()
    backbone = getattr(model, 'backbone', model) if kind in ('mmdet', 'mmseg') else model
    return LoadedModel(label=label, kind=kind, model=model, backbone=backbone,
                       checkpoint=checkpoint, notes=notes, class_names=classes)


# ----------------------------------------------------------------------------- layers
def _is_regex(text: str) -> bool:
    return any(c in text for c in '*+?[](){}|^$\\')


def find_layers(module: nn.Module, layers: Union[None, str, Sequence[str]] = None,
                label: str = 'the model') -> List[Tuple[str, nn.Module]]:
    """Modules to analyse, in forward (registration) order.

    Args:
        module: the model or backbone.
        layers: ``None`` for one entry per block (see ``DEFAULT_BLOCK_PATTERNS``); a module
            name (``'blocks3.8'``), a full-match regex (``'blocks\\d+\\.\\d+'``), a comma-
            separated string or a list of these.

    Raises:
        AnalysisError: an unknown name, or a pattern that matches nothing.
    """
    named = [(n, m) for n, m in module.named_modules() if n]
    names = {n for n, _ in named}
    if layers is None:
        for pat in DEFAULT_BLOCK_PATTERNS:
            rx = re.compile(pat)
            hits = [(n, m) for n, m in named if rx.fullmatch(n)]
            if hits:
                return hits
        top = [n for n, _ in named if '.' not in n][:12]
        raise AnalysisError(f'{label} has no block-like layers (tried {", ".join(DEFAULT_BLOCK_PATTERNS)}); '
                            f'pass --layers with module names, e.g. one of: {", ".join(top)}')
    items = [s.strip() for s in (layers.split(',') if isinstance(layers, str) else layers) if s.strip()]
    out: List[Tuple[str, nn.Module]] = []
    for item in items:
        if item in names:
            hits = [(n, m) for n, m in named if n == item]
        elif _is_regex(item):
            rx = re.compile(item)
            hits = [(n, m) for n, m in named if rx.fullmatch(n)]
            if not hits:
                raise AnalysisError(f'no layer of {label} matches {item!r} (a full-match regex '
                                    f'on module names such as {_examples(named)})')
        else:
            import difflib
            close = difflib.get_close_matches(item, sorted(names), n=6, cutoff=0.6) or _examples(named, 6)
            raise AnalysisError(f'{label} has no layer named {item!r}; names look like: {", ".join(close)}')
        out += [h for h in hits if h[0] not in {n for n, _ in out}]
    return out


def _examples(named: List[Tuple[str, nn.Module]], k: int = 4) -> List[str]:
    step = max(1, len(named) // k)
    return [n for n, _ in named[::step]][:k]


# ----------------------------------------------------------------------------- layouts
def _spatial_fits(h: int, w: int, image_hw: Tuple[int, int]) -> bool:
    """Can an ``h x w`` map come from the image by one integer stride (floor or ceil)?"""
    H, W = image_hw
    for s in range(1, 129):
        if h in (H // s, -(-H // s)) and w in (W // s, -(-W // s)):
            return True
    return False


def _token_grid(n: int, image_hw: Tuple[int, int]) -> Optional[Tuple[int, int, int]]:
    """``(prefix, h, w)`` such that ``n - prefix = h * w`` tokens tile the image's aspect."""
    H, W = image_hw
    for prefix in range(0, 9):  # class / distillation / register tokens come first
        m = n - prefix
        if m < 1:
            break
        h0 = max(1, round(math.sqrt(m * H / W)))
        for h in (h0, h0 - 1, h0 + 1):
            if h >= 1 and m % h == 0 and _spatial_fits(h, m // h, image_hw):
                return prefix, h, m // h
    return None


def to_nchw(t: torch.Tensor, image_hw: Tuple[int, int], layout: str = 'auto',
            name: str = 'layer') -> torch.Tensor:
    """A layer output as an NCHW feature map.

    Args:
        t: ``(B, C, H, W)``, ``(B, H, W, C)`` or ``(B, N, C)`` tokens (leading class tokens
            are dropped).
        image_hw: the input image size, used to tell the spatial axes by their aspect ratio.
        layout: ``'auto'``, ``'nchw'``, ``'nhwc'`` or ``'tokens'``.
        name: layer name for error messages.

    Raises:
        AnalysisError: the output is not a feature map, or its layout is ambiguous.
    """
    if not isinstance(t, torch.Tensor):
        raise AnalysisError(f'{name} returns {type(t).__name__}, not a tensor; pick a layer that '
                            'returns one feature map (e.g. a block inside it)')
    if layout == 'nchw' and t.ndim == 4:
        return t
    if layout == 'nhwc' and t.ndim == 4:
        return t.permute(0, 3, 1, 2)
    if t.ndim == 4 and layout == 'auto':
        nchw = _spatial_fits(t.shape[2], t.shape[3], image_hw)
        nhwc = _spatial_fits(t.shape[1], t.shape[2], image_hw)
        if nchw != nhwc:
            return t if nchw else t.permute(0, 3, 1, 2)
        raise AnalysisError(f'cannot tell the layout of {name}, shape {tuple(t.shape)}, for an image '
                            f'of {image_hw}; pass --layout nchw or nhwc')
    if t.ndim == 3 and layout in ('auto', 'tokens'):
        grid = _token_grid(t.shape[1], image_hw)
        if grid is None:
            raise AnalysisError(f'{name} returns {tuple(t.shape)}: not (B, N, C) tokens of a '
                                f'{image_hw} image; pick a layer with a spatial output')
        prefix, h, w = grid
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
    raise AnalysisError(f'{name} returns shape {tuple(t.shape)} (layout {layout!r}): not a feature '
                        'map; pick a layer with a 4-D or token output')


def _layout_of(t: Any, image_hw: Tuple[int, int]) -> str:
    """``'nchw'``, ``'nhwc'``, ``'tokens'`` or ``'auto'`` (undecided) for one output."""
    if not isinstance(t, torch.Tensor):
        return 'auto'
    if t.ndim == 3:
        return 'tokens'
    if t.ndim == 4:
        nchw = _spatial_fits(t.shape[2], t.shape[3], image_hw)
        nhwc = _spatial_fits(t.shape[1], t.shape[2], image_hw)
        if nchw != nhwc:
            return 'nchw' if nchw else 'nhwc'
    return 'auto'


def resolve_layouts(forward: Callable[[torch.Tensor], Any], x: torch.Tensor,
                    layers: Sequence[Tuple[str, nn.Module]], layout: str = 'auto') -> Dict[str, str]:
    """Each layer's output layout, found once on a probe image of another aspect ratio.

    On a square image a ``(B, 32, 32, 32)`` output could be NCHW or NHWC; on a 2:1 probe the
    spatial axes are the pair with the probe's aspect ratio. Models that only take one input
    size keep ``'auto'`` (decided per call on the real images).
    """
    if layout != 'auto':
        return {n: layout for n, _ in layers}
    H, W = x.shape[-2:]
    probe_hw = (H, max(8, W // 2))
    probe = torch.nn.functional.interpolate(x[:1], size=probe_hw, mode='bilinear', align_corners=False)
    seen: Dict[str, str] = {}

    def hook_for(name: str) -> Callable:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            seen[name] = _layout_of(output, probe_hw)
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers]
    try:
        with torch.no_grad():
            forward(probe)
    except Exception:  # noqa: BLE001 - fixed-size models refuse the probe: decide per call
        seen = {}
    finally:
        for h in handles:
            h.remove()
    return {n: seen.get(n, 'auto') for n, _ in layers}


def collect_feature_maps(forward: Callable[[torch.Tensor], Any], x: torch.Tensor,
                         layers: Sequence[Tuple[str, nn.Module]],
                         layout: Union[str, Dict[str, str]] = 'auto',
                         mixers: Sequence[Tuple[str, nn.Module]] = ()) -> Dict[str, torch.Tensor]:
    """Run ``forward(x)`` once and return each layer's output as NCHW (float, detached).

    ``mixers`` are iFormer mixers (modules with ``high_mixer`` and ``low_mixer`` children, see
    :func:`mixer_layers`); each adds three maps: ``'<name>/conv'`` and ``'<name>/pool'`` from
    ``high_mixer``'s output tuple, ``'<name>/attn'`` from ``low_mixer``'s output.

    ``layout`` is one layout for all layers or one per layer name (see :func:`resolve_layouts`).

    Raises:
        AnalysisError: a layer never ran as a module during the forward pass (its parent
            bypassed it, so no hook fired), or its output is not a feature map.
    """
    image_hw = (x.shape[-2], x.shape[-1])
    layouts = layout if isinstance(layout, dict) else {n: layout for n, _ in layers}
    out: Dict[str, torch.Tensor] = {}
    handles = []

    def keep(key: str, t: Any, fmt: Optional[str] = None) -> None:
        out[key] = to_nchw(t, image_hw, fmt or layouts.get(key, 'auto'), key).detach().float()

    def hook_for(name: str) -> Callable:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            keep(name, output)
        return hook

    def high_hook(name: str) -> Callable:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            conv, pool = output  # (conv branch, max-pool branch), both NCHW
            keep(f'{name}/conv', conv, 'nchw')
            keep(f'{name}/pool', pool, 'nchw')
        return hook

    def low_hook(name: str) -> Callable:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            keep(f'{name}/attn', output, 'nchw')  # attention branch (after the 2x upsample)
        return hook

    try:
        for name, mod in layers:
            handles.append(mod.register_forward_hook(hook_for(name)))
        for name, mod in mixers:
            handles.append(mod.high_mixer.register_forward_hook(high_hook(name)))
            handles.append(mod.low_mixer.register_forward_hook(low_hook(name)))
        with torch.no_grad():
            forward(x)
    finally:
        for h in handles:
            h.remove()
    expected = [n for n, _ in layers] + [f'{n}/{b}' for n, _ in mixers for b in ('conv', 'pool', 'attn')]
    silent = [k for k in expected if k not in out]
    if silent:
        raise AnalysisError(
            f'no output was seen from {silent[:4]}{" ..." if len(silent) > 4 else ""}: these '
            'modules did not run as modules in the forward pass (a fused fast path calls their '
            'code directly, so forward hooks never fire); use a model on its reference path '
            "(iFormer: attn_impl='naive') or pick other layers")
    return out


def mixer_layers(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The iFormer Inception mixers of ``module`` (modules with ``high_mixer`` and ``low_mixer``)."""
    return [(n, m) for n, m in module.named_modules()
            if isinstance(getattr(m, 'high_mixer', None), nn.Module)
            and isinstance(getattr(m, 'low_mixer', None), nn.Module)]


# ----------------------------------------------------------------------------- images
def image_files(inputs: Union[str, Sequence[str]]) -> List[str]:
    """Image paths from a folder, a file, or a list of files/folders.

    Raises:
        AnalysisError: a path that does not exist, or no image found.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: List[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise AnalysisError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in folder {item!r}')
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise AnalysisError(f'image path not found: {item!r}')
    if not files:
        raise AnalysisError('no images given: pass --images with a folder or image files')
    return files


def load_images(inputs: Union[str, Sequence[str]], size: Union[int, Tuple[int, int]] = 224,
                limit: Optional[int] = None) -> Tuple[torch.Tensor, np.ndarray, List[str]]:
    """Read, resize and normalise images.

    Args:
        inputs: a folder, a file or a list of them.
        size: output ``(H, W)`` or one side for square images.
        limit: use at most this many images (the first ones, sorted by name).

    Returns:
        ``(batch, rgb, files)``: ImageNet-normalised ``(N, 3, H, W)`` float tensor, the resized
        ``(N, H, W, 3)`` uint8 images (for overlays) and the file names.

    Raises:
        AnalysisError: a missing path or an unreadable image.
    """
    from PIL import Image, UnidentifiedImageError
    files = image_files(inputs)[:limit]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    rgb = []
    for f in files:
        try:
            with Image.open(f) as im:
                rgb.append(np.asarray(im.convert('RGB').resize((w, h), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError) as e:
            raise AnalysisError(f'cannot read image {f!r}: {e}') from None
    arr = np.stack(rgb)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, arr, files
