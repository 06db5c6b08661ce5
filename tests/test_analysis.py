"""The analysis tools: Fourier spectra of feature maps and Grad-CAM.

Fast tests check the numbers against analytic values and toy models trained here; the
``slow`` ones run both command-line tools end to end on iFormer-S and Swin-T (mmdet configs)
and on timm models.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from iformer_mm import InceptionTransformer
from iformer_mm.analysis import AnalysisError, collect_feature_maps, find_layers, load_model, to_nchw
from iformer_mm.build import ConfigError
from iformer_mm.analysis.cam import cam_mass_inside, compute_cam
from iformer_mm.analysis.frequency import analyse, relative_log_amplitude
from iformer_mm.pretrained import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- spectrum numbers
@pytest.mark.parametrize('k0', [1, 3, 5])
def test_cosine_plus_constant_matches_analytic_relative_log_amplitude(k0):
    """a + b cos(2 pi k0 (h + w) / N): the DFT has a N^2 at (0, 0) and b N^2 / 2 at +-(k0, k0),
    so the relative log amplitude at diagonal frequency 2 k0 / N (units of pi) is log(b / 2a)."""
    n, a, b = 16, 2.0, 0.5
    h = torch.arange(n, dtype=torch.float64).view(n, 1)
    w = torch.arange(n, dtype=torch.float64).view(1, n)
    x = (a + b * torch.cos(2 * math.pi * k0 * (h + w) / n)).expand(3, 5, n, n)
    freq, delta = relative_log_amplitude(x)
    assert freq[0] == 0 and freq[-1] == pytest.approx(1.0)
    assert freq[k0] == pytest.approx(2 * k0 / n)
    assert delta[0] == 0
    assert delta[k0] == pytest.approx(math.log(b / (2 * a)), abs=1e-5)
    others = [k for k in range(len(delta)) if k not in (0, k0)]
    assert all(delta[k] < -12 for k in others)  # no energy there: only eps (and rounding) is left


def test_nyquist_cosine_reaches_pi():
    """At frequency pi the cosine (-1)^(h+w) is one DFT bin of amplitude b N^2: log(b / a)."""
    n, a, b = 8, 1.5, 0.3
    hw = torch.arange(n).view(n, 1) + torch.arange(n).view(1, n)
    x = (a + b * torch.cos(math.pi * hw)).expand(2, 1, n, n)
    freq, delta = relative_log_amplitude(x)
    assert freq[-1] == 1.0 and delta[-1] == pytest.approx(math.log(b / a), abs=1e-5)


def _square_batch(n: int, size: int, side: int, gen: torch.Generator):
    """Noise images; half of them (label 1) hold a bright side x side square."""
    x = 0.5 * torch.randn(n, 3, size, size, generator=gen)
    y = torch.arange(n) % 2
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        if y[i]:
            r, c = torch.randint(0, size - side + 1, (2,), generator=gen).tolist()
            x[i, :, r:r + side, c:c + side] += 3.0
            masks[i, r:r + side, c:c + side] = True
    return x, y, masks


def _train(model: nn.Module, steps: int, size: int, side: int, lr: float, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        x, y, _ = _square_batch(16, size, side, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return float(np.mean(losses[:5])), float(np.mean(losses[-5:]))


def test_pool_and_conv_branches_keep_more_high_frequencies_than_attention():
    """The paper's Fig. 4 claim on a toy iFormer trained here: in every Inception mixer, the
    max-pool and depth-wise conv branch outputs carry more high-frequency energy (mean relative
    log amplitude over (pi/2, pi]) than the attention branch. At 128 px the stage-4 map is
    4x4; at 64 px it would be 2x2, which a 3x3 max-pool flattens to a constant."""
    torch.manual_seed(0)
    arch = dict(depths=(1, 1, 1, 1), embed_dims=(32, 48, 64, 80), head_dim=8,
                attention_heads=(1, 2, 3, 4))
    net = InceptionTransformer(arch, img_size=128, num_classes=2, attn_impl='naive')
    first, last = _train(net, steps=30, size=128, side=24, lr=1e-3)
    assert last < 0.6 * first  # it did learn something
    x, _, _ = _square_batch(8, 128, 24, torch.Generator().manual_seed(1))
    res = analyse(load_model(net, label='toy'), x, batch_size=4, progress=False)
    assert list(res.branches) == ['blocks1.0.attn', 'blocks2.0.attn', 'blocks3.0.attn', 'blocks4.0.attn']
    for mixer, br in res.branches.items():
        assert br['pool']['high'] > br['attn']['high'], (mixer, br['pool']['high'], br['attn']['high'])
        assert br['conv']['high'] > br['attn']['high'], (mixer, br['conv']['high'], br['attn']['high'])
    assert list(res.blocks) == ['blocks1.0', 'blocks2.0', 'blocks3.0', 'blocks4.0']
    assert res.blocks['blocks1.0']['shape'] == [32, 32, 32]  # C == H == W: layout found by the probe


# ----------------------------------------------------------------------------- Grad-CAM
def test_gradcam_finds_the_bright_square():
    """A tiny CNN trained for a few steps to tell noise from noise + bright square: its Grad-CAM
    (grad-cam package, via compute_cam) puts > 3x the square's area share of its mass inside it."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))
    size, side = 32, 6
    first, last = _train(net, steps=60, size=size, side=side, lr=3e-3)
    assert last < 0.5 * first
    x, y, masks = _square_batch(16, size, side, torch.Generator().manual_seed(7))
    pos = y == 1
    res = compute_cam(load_model(net, label='toy'), x[pos], layer='5', target_class=1, progress=False)
    share = side * side / (size * size)
    mass = [cam_mass_inside(c, m.numpy()) for c, m in zip(res.maps, masks[pos])]
    assert res.maps.shape == (int(pos.sum()), size, size)
    assert np.mean(mass) > 3 * share, (mass, share)
    assert np.median(mass) > 3 * share


# ----------------------------------------------------------------------------- layouts, errors
def test_to_nchw_handles_nchw_nhwc_and_tokens_with_class_token():
    img = (64, 48)
    nchw = torch.randn(2, 5, 16, 12)
    assert to_nchw(nchw, img) is nchw
    assert torch.equal(to_nchw(nchw.permute(0, 2, 3, 1), img), nchw)
    tokens = nchw.flatten(2).transpose(1, 2)  # (B, 192, 5)
    with_cls = torch.cat([torch.zeros(2, 1, 5), tokens], dim=1)
    assert torch.equal(to_nchw(tokens, img), nchw)
    assert torch.equal(to_nchw(with_cls, img), nchw)
    with pytest.raises(AnalysisError, match='cannot tell the layout'):
        to_nchw(torch.randn(1, 8, 8, 8), (64, 64))
    with pytest.raises(AnalysisError, match='not a feature map'):
        to_nchw(torch.randn(2, 1000), (64, 64))


def test_layer_selection_errors_name_the_problem():
    net = InceptionTransformer(num_classes=0)
    names = [n for n, _ in find_layers(net)]
    assert names[0] == 'blocks1.0' and names[-1] == 'blocks4.2' and len(names) == 18
    picked = [n for n, _ in find_layers(net, r'blocks4\.\d+, blocks1.0')]
    assert picked == ['blocks4.0', 'blocks4.1', 'blocks4.2', 'blocks1.0']
    with pytest.raises(AnalysisError, match="no layer named 'blocks9.0'"):
        find_layers(net, 'blocks9.0')
    with pytest.raises(AnalysisError, match='no layer of .* matches'):
        find_layers(net, r'stages\.\d+')
    with pytest.raises(AnalysisError, match='no block-like layers'):
        find_layers(nn.Sequential(nn.Linear(4, 4)))


def test_bypassed_module_is_reported_not_silently_missing():
    """A parent that calls its child's code directly (as a fused fast path does) fires no hook."""
    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.child = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.child.forward(x)  # bypasses nn.Module.__call__, so no hooks

    p = Parent()
    with pytest.raises(AnalysisError, match='did not run as modules'):
        collect_feature_maps(p, torch.randn(1, 3, 8, 8), [('child', p.child)])


def test_missing_inputs_and_mismatched_checkpoint(tmp_path):
    from iformer_mm.analysis import load_images
    with pytest.raises(AnalysisError, match='image path not found'):
        load_images(str(tmp_path / 'nope.jpg'))
    with pytest.raises(AnalysisError, match='no images'):
        load_images(str(tmp_path))
    with pytest.raises(ConfigError, match='config file not found'):
        load_model(str(tmp_path / 'missing_config.py'))
    with pytest.raises(AnalysisError, match='checkpoint file not found'):
        load_model('resnet18', checkpoint=str(tmp_path / 'missing.pth'))
    bad = tmp_path / 'other.pth'
    torch.save({'state_dict': {'foo.weight': torch.zeros(3)}}, bad)
    with pytest.raises(CheckpointError, match='does not fit this model'):
        load_model('resnet18', checkpoint=str(bad))


# ----------------------------------------------------------------------------- end to end
def _images(folder, n=2, size=(96, 80)):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((*size, 3)) * 60 + 80).astype(np.uint8)
        img[20:50, 30:60] = (230, 40 + 60 * i, 40)  # a bright patch
        Image.fromarray(img).save(os.path.join(folder, f'img{i}.png'))
    return folder


def _run(tool, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'analysis', tool), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


SWIN_T = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
IFORMER_S = os.path.join(REPO, 'configs', 'detection', 'mask_rcnn_iformer_s_1x.py')


@pytest.mark.slow
def test_frequency_tool_iformer_s_vs_swin_t_from_configs(tmp_path):
    imgs = _images(str(tmp_path / 'images'))
    out = tmp_path / 'freq'
    log = _run('frequency.py', IFORMER_S, SWIN_T, '--labels', 'iFormer-S', 'Swin-T',
               '--images', imgs, '--out', str(out), '--size', '64', '--no-progress')
    for name in ('relative_log_amplitude.png', 'high_frequency_vs_depth.png', 'spectra_2d.png',
                 'branches_0_iFormer-S.png', 'frequency.json'):
        assert (out / name).stat().st_size > 1000, name
    data = json.loads((out / 'frequency.json').read_text())
    ifs, swin = data['models']
    assert len(ifs['blocks']) == 18 and len(ifs['branches']) == 18
    assert set(ifs['branches']['blocks3.0.attn']) == {'conv', 'pool', 'attn'}
    assert len(swin['blocks']) == 12 and not swin['branches']
    assert swin['blocks']['stages.0.blocks.0']['shape'] == [96, 16, 16]
    assert all(b['delta'][0] == 0 for b in ifs['blocks'].values())
    assert 'wrote' in log


@pytest.mark.slow
def test_cam_tool_iformer_s_vs_swin_t_detectors(tmp_path):
    imgs = _images(str(tmp_path / 'images'), n=1)
    out = tmp_path / 'cam'
    _run('cam.py', IFORMER_S, SWIN_T, '--labels', 'iFormer-S', 'Swin-T', '--images', imgs,
         '--out', str(out), '--size', '64', '--no-progress')
    assert (out / 'cam.png').stat().st_size > 1000
    meta = json.loads((out / 'cam.json').read_text())
    assert [m['layer'] for m in meta['models']] == ['backbone.blocks4.2', 'backbone.stages.3.blocks.1']
    assert all(m['targets'][0].startswith('box score') and m['boxes'][0] for m in meta['models'])


@pytest.mark.slow
def test_both_tools_on_timm_models(tmp_path):
    imgs = _images(str(tmp_path / 'images'), n=1)
    _run('frequency.py', 'vit_tiny_patch16_224', 'resnet18', '--images', imgs,
         '--out', str(tmp_path / 'freq'), '--no-progress')
    data = json.loads((tmp_path / 'freq' / 'frequency.json').read_text())
    vit, rn = data['models']
    assert len(vit['blocks']) == 12 and vit['blocks']['blocks.0']['shape'] == [192, 14, 14]  # class token dropped
    assert list(rn['blocks'])[0] == 'layer1.0'
    _run('cam.py', 'resnet18', 'vit_tiny_patch16_224', '--images', imgs, '--out', str(tmp_path / 'cam'),
         '--method', 'gradcam++', '--no-progress')
    assert (tmp_path / 'cam' / 'cam.png').stat().st_size > 1000


@pytest.mark.slow
def test_cam_tool_on_a_segmentor(tmp_path):
    """mmseg: the explained target is the region of the main predicted class."""
    imgs = _images(str(tmp_path / 'images'), n=1)
    _run('cam.py', os.path.join(REPO, 'configs', 'segmentation', 'fpn_iformer_s_ade20k_80k.py'),
         '--images', imgs, '--out', str(tmp_path / 'cam'), '--size', '64', '--no-progress')
    meta = json.loads((tmp_path / 'cam' / 'cam.json').read_text())
    assert meta['models'][0]['layer'] == 'backbone.blocks4.2'
    assert meta['models'][0]['targets'][0].startswith('region of')
    assert (tmp_path / 'cam' / 'cam.png').stat().st_size > 1000
