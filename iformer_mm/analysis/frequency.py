"""Fourier analysis of feature maps: the iFormer paper's Fig. 1 (per block) and Fig. 4 (per branch).

Method (Park & Kim, "How do vision transformers work?", ICLR 2022, Fig. 2a, and their
``fourier_analysis.ipynb``; the iFormer paper follows it):

1. 2-D discrete Fourier transform of every channel of a feature map ``(B, C, H, W)``;
2. log amplitude ``log(|F| + 1e-6)``;
3. mean over channels and images (a mean of *log* amplitudes, as in their code);
4. the values along the diagonal of the frequency plane, from frequency 0 ``(0, 0)`` to the
   highest frequency ``(pi, pi)``;
5. minus the value at frequency 0: the *relative* log amplitude. It is 0 at frequency 0;
   the more negative it is at high frequencies, the more the map is low-pass.

One detail differs from their notebook: they shift the spectrum and read ``H/2`` diagonal
cells from the centre, which stops one bin short of ``pi`` on even maps and labels the axis
0..1 pi regardless. Here the diagonal cells ``(k, k)`` for ``k = 0 .. min(H, W)//2`` are read
from the unshifted spectrum, so the last point is exactly ``pi`` on even maps and the x axis is
the true angular frequency ``2 pi k / H`` (non-square maps sample ``k_h, k_w`` proportionally).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .features import (AnalysisError, LoadedModel, collect_feature_maps, find_layers, mixer_layers,
                       resolve_layouts)

EPS = 1e-6  # added to the amplitude before the log, as in Park & Kim's code
HIGH_FREQ = 0.5  # "high-frequency energy" = mean relative log amplitude over (0.5 pi, pi]
BRANCHES = ('pool', 'conv', 'attn')
BRANCH_TITLES = {'pool': 'MaxPool branch', 'conv': 'DwConv branch', 'attn': 'Attention branch'}


def log_amplitude(fmap: torch.Tensor) -> torch.Tensor:
    """``log(|FFT2(fmap)| + eps)`` summed over the batch and averaged over channels: ``(H, W)``.

    Summed (not averaged) over images so batches of any size can be accumulated; divide by
    the number of images.
    """
    if fmap.ndim != 4:
        raise AnalysisError(f'expected a (B, C, H, W) feature map, got shape {tuple(fmap.shape)}')
    amp = torch.fft.fft2(fmap.double()).abs()
    return torch.log(amp + EPS).mean(dim=1).sum(dim=0)


def diagonal(spectrum: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Values of an unshifted ``(H, W)`` spectrum along the diagonal from 0 to pi.

    Returns:
        ``(freq, values)``: angular frequency in units of pi (0 .. 1) and the values there.
    """
    H, W = spectrum.shape
    n = min(H, W) // 2
    if n == 0:  # a 1-pixel map has only frequency 0
        return np.zeros(1), spectrum[:1, 0].double().cpu().numpy()
    steps = np.arange(n + 1)
    kh = np.floor(steps * H / (2 * n)).astype(int)
    kw = np.floor(steps * W / (2 * n)).astype(int)
    values = spectrum[torch.from_numpy(kh), torch.from_numpy(kw)].double().cpu().numpy()
    freq = 2.0 * kh / H  # in units of pi
    return freq, values


def relative_log_amplitude(fmap: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Park & Kim's relative log amplitude of a ``(B, C, H, W)`` map, averaged over B and C.

    Returns:
        ``(freq, delta)``: frequencies (units of pi, 0 .. 1) along the diagonal and the log
        amplitude there minus that at frequency 0.
    """
    freq, values = diagonal(log_amplitude(fmap) / fmap.shape[0])
    return freq, values - values[0]


def high_frequency(freq: Sequence[float], delta: Sequence[float]) -> float:
    """Mean relative log amplitude over frequencies above ``HIGH_FREQ`` pi (higher = more high-frequency energy)."""
    freq, delta = np.asarray(freq), np.asarray(delta)
    sel = freq > HIGH_FREQ
    if not sel.any():
        sel = freq == freq.max()
    return float(delta[sel].mean())


@dataclass
class _Meter:
    """Running sum of log-amplitude spectra of one layer over all images."""

    total: Optional[torch.Tensor] = None
    count: int = 0
    shape: Tuple[int, ...] = ()

    def update(self, fmap: torch.Tensor, key: str) -> None:
        spec = log_amplitude(fmap)
        if self.total is not None and spec.shape != self.total.shape:
            raise AnalysisError(f'{key}: map size changed from {tuple(self.total.shape)} to '
                                f'{tuple(spec.shape)} between batches; resize all images to one size')
        self.total = spec if self.total is None else self.total + spec
        self.count += fmap.shape[0]
        self.shape = tuple(fmap.shape[1:])

    def mean(self) -> torch.Tensor:
        return self.total / self.count


@dataclass
class FrequencyResult:
    """Relative log amplitudes of one model.

    ``blocks[name]`` and ``branches[mixer][branch]`` are dicts with ``freq`` (units of pi),
    ``delta`` (relative log amplitude), ``high`` (mean over the upper half of the band) and
    ``shape`` (C, H, W); ``spectra`` holds the mean 2-D log spectra (shifted, relative to
    frequency 0) for the heat maps.
    """

    label: str
    num_images: int
    image_size: Tuple[int, int]
    checkpoint: Optional[str]
    blocks: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    branches: Dict[str, Dict[str, Dict[str, Any]]] = field(default_factory=dict)
    spectra: Dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return dict(label=self.label, num_images=self.num_images, image_size=list(self.image_size),
                    checkpoint=self.checkpoint, blocks=self.blocks, branches=self.branches)


def _summary(meter: _Meter) -> Tuple[Dict[str, Any], np.ndarray]:
    spec = meter.mean()
    freq, values = diagonal(spec)
    delta = values - values[0]
    rel2d = torch.fft.fftshift(spec - spec[0, 0]).cpu().numpy()
    return (dict(freq=[round(float(f), 6) for f in freq], delta=[round(float(d), 6) for d in delta],
                 high=round(high_frequency(freq, delta), 6), shape=list(meter.shape)), rel2d)


def analyse(model: LoadedModel, images: torch.Tensor, layers: Union[None, str, Sequence[str]] = None,
            branches: bool = True, batch_size: int = 4, layout: str = 'auto',
            progress: bool = True) -> FrequencyResult:
    """Relative log amplitudes per layer (and per iFormer mixer branch) over ``images``.

    Args:
        model: from :func:`~iformer_mm.analysis.load_model`.
        images: ``(N, 3, H, W)`` normalised images (all one size).
        layers: layer names/patterns (default: every block, see ``find_layers``).
        branches: also the conv / max-pool / attention branch outputs of every iFormer
            Inception mixer (ignored for models without such mixers).
        batch_size: images per forward pass.
        layout: feature-map layout of the layers (``'auto'`` detects it).
        progress: show a progress bar over batches.

    Raises:
        AnalysisError: unknown layers, no matching layers, or layers that never ran.
    """
    from tqdm import tqdm
    net = model.backbone
    chosen = find_layers(net, layers, model.label)
    mixers = mixer_layers(net) if branches else []
    block_meters = {n: _Meter() for n, _ in chosen}
    branch_meters: Dict[str, _Meter] = {}
    batches = range(0, images.shape[0], batch_size)
    layouts = resolve_layouts(model.backbone_forward, images[:1], chosen, layout)
    for s in tqdm(batches, desc=f'frequency {model.label}', unit='batch', disable=not progress):
        x = images[s:s + batch_size]
        maps = collect_feature_maps(model.backbone_forward, x, chosen, layouts, mixers)
        for key, fmap in maps.items():
            meters = branch_meters if '/' in key else block_meters
            meters.setdefault(key, _Meter()).update(fmap, key)
    result = FrequencyResult(label=model.label, num_images=images.shape[0],
                             image_size=tuple(images.shape[-2:]), checkpoint=model.checkpoint)
    for name, meter in block_meters.items():
        result.blocks[name], result.spectra[name] = _summary(meter)
    for key, meter in branch_meters.items():
        mixer, branch = key.rsplit('/', 1)
        result.branches.setdefault(mixer, {})[branch], result.spectra[key] = _summary(meter)
    return result


# ----------------------------------------------------------------------------- figures
def _depth_colors(n: int) -> List[Any]:
    import matplotlib
    cmap = matplotlib.colormaps['plasma_r']
    return [cmap(0.1 + 0.85 * i / max(1, n - 1)) for i in range(n)]


def _curves(ax: Any, entries: Sequence[Dict[str, Any]], title: str) -> None:
    from matplotlib.ticker import FormatStrFormatter
    for entry, color in zip(entries, _depth_colors(len(entries))):
        ax.plot(entry['freq'], entry['delta'], color=color, lw=1.4)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(FormatStrFormatter('%.1fπ'))
    ax.set_xlabel('Frequency')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _depth_bar(fig: Any, axes: Any, n: int) -> None:
    import matplotlib
    sm = matplotlib.cm.ScalarMappable(cmap=matplotlib.colormaps['plasma_r'],
                                      norm=matplotlib.colors.Normalize(0, 1))
    bar = fig.colorbar(sm, ax=axes, fraction=0.04, pad=0.02)
    bar.set_label(f'normalised depth ({n} layers)' if n else 'normalised depth')


def plot_relative_log_amplitude(results: Sequence[FrequencyResult], path: str) -> str:
    """Fig. 1b: relative log amplitude vs frequency, one panel per model, curves coloured by depth."""
    from .figures import subplots
    fig, axes = subplots(1, len(results), figsize=(3.6 * len(results) + 0.9, 3.4),
                             sharey=True, squeeze=False, constrained_layout=True)
    for ax, res in zip(axes[0], results):
        _curves(ax, list(res.blocks.values()), res.label)
    axes[0][0].set_ylabel('Δ log amplitude')
    _depth_bar(fig, axes[0].tolist(), max(len(r.blocks) for r in results))
    fig.savefig(path, dpi=110)
    return path


def plot_high_frequency_vs_depth(results: Sequence[FrequencyResult], path: str) -> str:
    """Park & Kim's Fig. 2b: the high-frequency relative log amplitude of every layer vs depth."""
    from .figures import subplots
    fig, ax = subplots(figsize=(5.2, 3.2), constrained_layout=True)
    for res, marker in zip(results, 'os^D'):
        highs = [b['high'] for b in res.blocks.values()]
        depth = np.linspace(0, 1, len(highs)) if len(highs) > 1 else np.zeros(1)
        ax.plot(depth, highs, marker=marker, ms=3.5, lw=1.3, label=res.label)
    ax.set_xlabel('Normalised depth')
    ax.set_ylabel(f'Δ log amplitude (> {HIGH_FREQ:g}π)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def _pick(names: Sequence[str], k: int) -> List[str]:
    if len(names) <= k:
        return list(names)
    idx = np.linspace(0, len(names) - 1, k).round().astype(int)
    return [names[i] for i in idx]


def plot_spectra_2d(results: Sequence[FrequencyResult], path: str, per_model: int = 5) -> str:
    """Fig. 1a: 2-D relative log spectra (frequency 0 at the centre) of a few blocks per model."""
    from .figures import subplots
    fig, axes = subplots(len(results), per_model, figsize=(1.9 * per_model + 0.8, 2.0 * len(results)),
                             squeeze=False, constrained_layout=True)
    image = None
    for row, res in zip(axes, results):
        names = _pick(list(res.blocks), per_model)
        for ax, name in zip(row, names):
            image = ax.imshow(res.spectra[name], cmap='viridis', vmin=-6, vmax=0,
                              extent=(-1, 1, -1, 1), interpolation='nearest')
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(names):]:
            ax.axis('off')
        row[0].set_ylabel(res.label, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, label='Δ log amplitude')
    fig.savefig(path, dpi=110)
    return path


def plot_branches(result: FrequencyResult, path: str) -> str:
    """Fig. 4: relative log amplitude of each Inception-mixer branch (curves coloured by depth),
    and the high-frequency level of the three branches block by block."""
    from .figures import subplots
    mixers = list(result.branches)
    fig, axes = subplots(1, 4, figsize=(15, 3.3), constrained_layout=True,
                             gridspec_kw=dict(width_ratios=[1, 1, 1, 1.4]))
    for ax, branch in zip(axes[:3], BRANCHES):
        _curves(ax, [result.branches[m][branch] for m in mixers], BRANCH_TITLES[branch])
    lo = min(min(result.branches[m][b]['delta']) for m in mixers for b in BRANCHES)
    for ax in axes[:3]:
        ax.set_ylim(max(lo, -14) - 0.3, 0.5)
    axes[0].set_ylabel('Δ log amplitude')
    _depth_bar(fig, axes[:3].tolist(), len(mixers))
    ax = axes[3]
    for branch, color in zip(BRANCHES, ('tab:blue', 'tab:orange', 'tab:gray')):
        ax.plot(range(len(mixers)), [result.branches[m][branch]['high'] for m in mixers],
                marker='o', ms=3, color=color, label=BRANCH_TITLES[branch].split()[0])
    ax.set_xticks(range(len(mixers)))
    ax.set_xticklabels([m.replace('.attn', '') for m in mixers], rotation=90, fontsize=7)
    ax.set_ylabel(f'Δ log amplitude (> {HIGH_FREQ:g}π)')
    ax.set_title(f'{result.label}: high frequencies per block', fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    return path


def write_outputs(results: Sequence[FrequencyResult], out_dir: str) -> Dict[str, str]:
    """All figures and ``frequency.json`` into ``out_dir``; returns ``{what: path}``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: plot(results, os.path.join(out_dir, f'{name}.png')) for name, plot in (
        ('relative_log_amplitude', plot_relative_log_amplitude),
        ('high_frequency_vs_depth', plot_high_frequency_vs_depth),
        ('spectra_2d', plot_spectra_2d))}
    for i, res in enumerate(results):
        if res.branches:
            name = 'branches.png' if len(results) == 1 else f'branches_{i}_{_slug(res.label)}.png'
            paths[f'branches_{i}'] = plot_branches(res, os.path.join(out_dir, name))
    paths['json'] = os.path.join(out_dir, 'frequency.json')
    with open(paths['json'], 'w') as f:
        json.dump(dict(method=__doc__.split('\n\n')[1], high_frequency_band=f'({HIGH_FREQ} pi, pi]',
                       models=[r.to_json() for r in results]), f, indent=1)
    return paths


def _slug(text: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_' else '_' for c in text)[:40]
