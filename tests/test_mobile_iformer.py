"""Mobile iFormer (ICLR 2025): the dense backbone against the authors' windowed models, timm's
classification models against the authors' classification code, and every checkpoint format.

Golden tensors and the authors' key layout: ../shared/spec/mobile_iformer/ (see its README), or
without it the reduced copy in tests/assets/golden/mobile_iformer/ (conftest.mobile_golden_files).
Weights are the spec's deterministic ones (../shared/spec/golden/weights.py), saved in the
authors' own file formats and loaded through the package's loader with ``weights_only=True``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from _golden import case_input, rel_err, stage_errors
from conftest import golden_weights_dir, mobile_golden_files

pytest.importorskip('timm.models.iformer')
import timm  # noqa: E402

from iformer_mm import compat  # noqa: E402
from iformer_mm.models.mobile_iformer import AUTHORS_WINDOW_BLOCKS, MobileIFormer  # noqa: E402
from iformer_mm.pretrained import (CheckpointError, load_checkpoint_file, load_mobile_iformer,  # noqa: E402
                                   mobile_iformer_safe_globals)

TOL = 1e-4  # max |diff| / max |ref| per tensor (spec/mobile_iformer/README.md)
DENSE = ['dense_iFormer_m_256x256', 'dense_iFormer_m_320x480', 'dense_iFormer_m_333x517',
         'dense_iFormer_l_320x480', 'dense_iFormer_l2_256x384']
CLS = ['cls_iFormer_m_2x224x224', 'cls_iFormer_t_224x224', 'cls_iFormer_h_160x160']
# The authors' files hold an argparse.Namespace and NumPy 1 scalars. Our loader reads them on
# every supported torch (pretrained.torch_load_allowing). timm's own pretrained=True reads them
# where torch's allow-list can: torch >= 2.4, and under NumPy 2 only torch >= 2.6 (timm 1.0.31
# gives the scalar to the allow-list under NumPy 1's name, an (object, name) pair that torch
# 2.4-2.5 cannot take: AttributeError inside torch.load). There the timm half of a test is left out.
TIMM_READS_AUTHORS_FILES = compat.HAS_SAFE_GLOBALS and (
    compat.has_safe_global_aliases() or np.lib.NumpyVersion(np.__version__) < '2.0.0')


# ------------------------------------------------------------------ fixtures: authors' files
@pytest.fixture(scope='module')
def shapes_file() -> Path:
    return mobile_golden_files()[1]


@pytest.fixture(scope='module')
def cases():
    return {c['name']: c for c in torch.load(mobile_golden_files()[0], weights_only=True)}


@pytest.fixture(scope='module')
def authors_sd(shapes_file):
    """``authors_sd('m', 'dense')``: deterministic weights in the authors' key layout."""
    spec = importlib.util.spec_from_file_location('golden_weights', golden_weights_dir() / 'weights.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shapes = json.loads(shapes_file.read_text())

    def make(arch: str, kind: str):
        return mod.make_state_dict(shapes[f'iFormer_{arch}_{kind}'])
    return make


def _arch(case_name: str) -> str:
    return case_name.split('_')[2]


def save_authors_cls_file(path: Path, sd: dict, numpy1_names: bool = False, distilled: bool = False,
                          ema: bool = False) -> Path:
    """The authors' training-script layout: ``model``, ``args`` Namespace, NumPy scalars.

    Args:
        numpy1_names: write NumPy scalars under the NumPy 1.x module name
            (``numpy.core.multiarray.scalar``), as the released files have them.
        distilled: add the distillation classifier (``classifier.classifier_dist``).
        ema: add ``model_ema`` (the weights + 0.01), which timm and our loader prefer.
    """
    sd = dict(sd)
    if distilled:  # their distilled runs carry a second classifier
        sd.update({k.replace('classifier.classifier.', 'classifier.classifier_dist.'): v.clone()
                   for k, v in sd.items() if k.startswith('classifier.classifier.')})
    obj = {'model': sd, 'epoch': 299, 'max_accuracy': np.float64(80.4),
           'args': argparse.Namespace(model='iFormer_m', lr=4e-3, input_size=224, distillation_type='hard')}
    if ema:
        obj['model_ema'] = {k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}
    if not numpy1_names:
        torch.save(obj, path)
        return path
    # The legacy (non-zip) format keeps pickle's text GLOBAL opcodes, so the module name can be
    # rewritten to what NumPy 1.x wrote; the zip format's alignment would not survive an edit.
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    if np.lib.NumpyVersion(np.__version__) < '2.0.0':
        return path  # NumPy 1 writes its own names
    data = path.read_bytes()
    assert b'numpy._core.multiarray\nscalar' in data
    path.write_bytes(data.replace(b'numpy._core.multiarray\nscalar', b'numpy.core.multiarray\nscalar'))
    return path


def save_authors_det_file(path: Path, sd: dict) -> Path:
    """An mmdet-3 checkpoint of the authors' Mask R-CNN: ``state_dict`` with ``backbone.`` keys
    in their layout next to neck/head keys, and plain ``meta``."""
    full = {f'backbone.{k}': v for k, v in sd.items()}
    full.update({'neck.lateral_convs.0.conv.weight': torch.zeros(256, 48, 1, 1),
                 'rpn_head.rpn_conv.weight': torch.zeros(256, 256, 3, 3)})
    torch.save({'meta': {'epoch': 12, 'iter': 87960, 'mmdet_version': '3.3.0'}, 'state_dict': full}, path)
    return path


# ------------------------------------------------------------------ golden: dense (mm backbone)
@pytest.mark.parametrize('name', DENSE)
def test_dense_backbone_matches_authors_windowed_model(name, cases, authors_sd, tmp_path):
    """The authors' det checkpoint, loaded strictly through init_cfg, reproduces their dense
    (windowed) model's four stage outputs on the golden input."""
    case = cases[name]
    arch = _arch(name)
    ckpt = save_authors_det_file(tmp_path / 'mask_rcnn.pth', authors_sd(arch, 'dense'))
    model = MobileIFormer(arch=arch, init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    model.init_weights()
    report = model._pretrained_report
    assert not report.missing and not report.unexpected and len(report.loaded) == len(model.state_dict())
    model.eval()
    with torch.no_grad():
        outs = model(case_input(case))
    assert len(outs) == 4
    errs = stage_errors(list(outs), case)
    assert max(errs) <= TOL, errs


@pytest.mark.parametrize('name', DENSE[1:])
def test_global_attention_misses_the_windowed_golden(name, cases, authors_sd):
    """Windows change the outputs: the same weights with window_size=None are far off in
    stages 3-4 (so the match above checks the windows), and the windowed-minus-global gap
    equals the one the authors' code shows (``window_vs_global_maxabs``)."""
    case = cases[name]
    arch = _arch(name)
    sd = authors_sd(arch, 'dense')
    x = case_input(case)
    outs = {}
    for ws in ('auto', None):
        model = MobileIFormer(arch=arch, window_size=ws)
        load_mobile_iformer(model, sd)
        with torch.no_grad():
            outs[ws] = model.eval()(x)
    errs = stage_errors(list(outs[None]), case)
    assert errs[0] <= TOL and errs[1] <= TOL  # stages 1-2 never see windows
    assert min(errs[2:]) > 1e-2, errs
    for i in (2, 3):
        gap = (outs['auto'][i] - outs[None][i]).abs().max().item()
        ref = case['window_vs_global_maxabs'][i]
        assert abs(gap - ref) / ref < 1e-3, (i, gap, ref)


def test_one_window_without_padding_equals_global(cases, authors_sd):
    """256x256 gives a single unpadded 16x16 stage-3 window: windowed == global (case 1)."""
    case = cases['dense_iFormer_m_256x256']
    sd = authors_sd('m', 'dense')
    win, glob = MobileIFormer('m'), MobileIFormer('m', window_size=None)
    load_mobile_iformer(win, sd)
    load_mobile_iformer(glob, sd)
    x = case_input(case)
    with torch.no_grad():
        for a, b in zip(win.eval()(x), glob.eval()(x)):
            assert rel_err(a, b) < 1e-6


# ------------------------------------------------------------------ golden: classification (timm)
@pytest.mark.parametrize('name', CLS)
def test_timm_classifier_loads_authors_file_and_matches(name, cases, authors_sd, tmp_path):
    """timm.create_model(..., pretrained=True, file=<authors' file with Namespace and NumPy
    scalars>) gives the authors' logits and stages; our loader into the same timm model
    gives the identical model."""
    case = cases[name]
    arch = _arch(name)
    sd = authors_sd(arch, 'cls')
    # NumPy 1.x scalar names, as in the released files (timm allows the scalar under that
    # name only; files re-saved under NumPy 2 need our loader)
    path = save_authors_cls_file(tmp_path / f'iFormer_{arch}.pth', sd, numpy1_names=True)
    if TIMM_READS_AUTHORS_FILES:
        model = timm.create_model(f'iformer_{arch}', pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path))).eval()
    else:  # timm cannot read the file on this torch (see above); ours can: same golden check
        model = timm.create_model(f'iformer_{arch}').eval()
        load_mobile_iformer(model, path)
    assert (model.stages[2].blocks[-1].mixer.gamma is not None) == (arch == 'h')  # layer scale
    x = case_input(case)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        logits = model.forward_head(final)
    assert rel_err(logits, case['logits']) <= TOL
    assert max(stage_errors(stages, case)) <= TOL

    ours = timm.create_model(f'iformer_{arch}')
    report = load_mobile_iformer(ours, path)  # strict
    assert not report.missing and not report.unexpected and not report.dropped
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), model(x))


def test_windows_off_equals_timm_classifier_stages(cases, authors_sd):
    """window_size=None: the dense backbone is timm's classification model (case 6 input,
    batch 2, 14x14 stage-3 map), stage by stage; the authors' windowed model differs from
    it by what their code shows (``window_vs_global_maxabs`` of case 6)."""
    case = cases['cls_iFormer_m_2x224x224']
    sd = authors_sd('m', 'cls')
    cls = timm.create_model('iformer_m')
    load_mobile_iformer(cls, sd)
    glob, win = MobileIFormer('m', window_size=None), MobileIFormer('m')
    for m in (glob, win):
        report = load_mobile_iformer(m, sd)
        assert len(report.dropped) == 7 and all(k.startswith('head.') for k in report.dropped)
    x = case_input(case)
    with torch.no_grad():
        ref = cls.eval().forward_intermediates(x, intermediates_only=True)
        outs, wouts = glob.eval()(x), win.eval()(x)
    for a, b in zip(outs, ref):
        assert torch.equal(a, b)
    assert max(stage_errors(list(outs), case)) <= TOL
    for i in (2, 3):
        gap = (wouts[i] - outs[i]).abs().max().item()
        assert abs(gap - case['window_vs_global_maxabs'][i]) / case['window_vs_global_maxabs'][i] < 1e-3


# ------------------------------------------------------------------ checkpoint formats
@pytest.mark.parametrize('restricted_unpickler', [False, True])
def test_authors_file_needs_the_allow_list_and_loads_strictly_with_it(authors_sd, tmp_path, monkeypatch,
                                                                      restricted_unpickler):
    """Plain torch.load(weights_only=True) refuses the authors' file (Namespace, NumPy
    scalars); our loader allows exactly those, under NumPy 1.x's and NumPy 2's module names,
    for the usual scalar types, on every supported torch (``restricted_unpickler``: the path
    torch 2.1-2.5 take, forced on this torch)."""
    from iformer_mm import pretrained
    if restricted_unpickler:
        monkeypatch.setattr(pretrained, 'has_safe_global_aliases', lambda: False)
    sd = authors_sd('m', 'cls')
    for numpy1 in (False, True):
        path = save_authors_cls_file(tmp_path / f'iFormer_m_{numpy1}.pth', sd, numpy1_names=numpy1)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
        model = MobileIFormer('m')
        report = load_mobile_iformer(model, path)
        assert not report.missing and not report.unexpected
        assert "took 'model'" in report.notes
        assert torch.equal(model.stem.conv1.c.weight, sd['downsample_layers.0.0.c.weight'])
    scalars = {'i8': np.int64(3), 'i4': np.int32(3), 'f4': np.float32(0.5), 'b': np.bool_(True)}
    torch.save({'model': sd, 'stats': scalars}, tmp_path / 'scalars.pth')
    ck = load_checkpoint_file(tmp_path / 'scalars.pth', allowed=mobile_iformer_safe_globals())
    assert ck['stats'] == scalars


@pytest.mark.parametrize('restricted_unpickler', [False, True])
def test_crafted_pickle_is_still_refused(tmp_path, monkeypatch, restricted_unpickler):
    """A file whose pickle would run a command is refused with a clear error; nothing runs."""
    from iformer_mm import pretrained
    if restricted_unpickler:
        monkeypatch.setattr(pretrained, 'has_safe_global_aliases', lambda: False)
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    path = tmp_path / 'iFormer_m.pth'
    torch.save({'model': {'x': torch.zeros(1)}, 'args': Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused by safe loading.*'(posix|os)\.system'"):
        load_mobile_iformer(MobileIFormer('m'), path)
    assert not marker.exists()


def test_distilled_file_loads_into_distilled_timm_model_and_backbone(authors_sd, tmp_path):
    sd = authors_sd('m', 'cls')
    path = save_authors_cls_file(tmp_path / 'iFormer_m_distill.pth', sd, numpy1_names=True, distilled=True)
    if TIMM_READS_AUTHORS_FILES:
        cls = timm.create_model('iformer_m_distilled', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        assert torch.equal(cls.head.head_dist.l.weight, sd['classifier.classifier.l.weight'])
    cls = timm.create_model('iformer_m_distilled')
    report = load_mobile_iformer(cls, path)
    assert not report.missing and not report.unexpected
    assert torch.equal(cls.head.head_dist.l.weight, sd['classifier.classifier.l.weight'])
    report = load_mobile_iformer(MobileIFormer('m'), path)
    assert sorted({k.split('.')[1] for k in report.dropped}) == ['head', 'head_dist']
    assert not report.missing


def test_model_ema_is_preferred_as_timm_does(authors_sd, tmp_path):
    sd = authors_sd('m', 'cls')
    path = save_authors_cls_file(tmp_path / 'iFormer_m.pth', sd, numpy1_names=True, ema=True)
    w = sd['downsample_layers.0.0.c.weight']
    if TIMM_READS_AUTHORS_FILES:
        timm_model = timm.create_model('iformer_m', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        assert torch.equal(timm_model.stem.conv1.c.weight, w + 0.01)
    model = MobileIFormer('m')
    assert "took 'model_ema'" in load_mobile_iformer(model, path).notes
    assert torch.equal(model.stem.conv1.c.weight, w + 0.01)
    load_mobile_iformer(model, path, use_ema=False)
    assert torch.equal(model.stem.conv1.c.weight, w)


def test_timm_hub_file_and_own_run_checkpoint_load(authors_sd, tmp_path):
    """timm's layout (a hub file: plain state_dict with head) and our own mmdet run's
    checkpoint (``backbone.`` + timm layout) load strictly."""
    sd = authors_sd('l', 'dense')
    ref = MobileIFormer('l')
    load_mobile_iformer(ref, sd)
    hub = timm.create_model('iformer_l')  # a timm file: timm's keys, classifier included
    load_mobile_iformer(hub, {'model': sd}, allowed_missing=[r'^head\.'])
    torch.save(hub.state_dict(), tmp_path / 'model.pth')
    model = MobileIFormer('l')
    report = load_mobile_iformer(model, tmp_path / 'model.pth')
    assert not report.missing and not report.unexpected and report.dropped
    assert torch.equal(model.stages[2].blocks[9].mixer.module.q.c.weight,
                       ref.stages[2].blocks[9].mixer.module.q.c.weight)
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in ref.state_dict().items()}}, tmp_path / 'run.pth')
    model = MobileIFormer('l')
    load_mobile_iformer(model, tmp_path / 'run.pth')
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_wrong_variant_and_non_strict_files_are_refused(authors_sd, tmp_path):
    sd = authors_sd('l', 'dense')
    with pytest.raises(CheckpointError,
                       match=r'shape \[256, 96, 3, 3\] in the checkpoint but \[192, 96, 3, 3\] '
                             r'in the model: .*another variant'):
        load_mobile_iformer(MobileIFormer('m'), sd)
    sd_m = authors_sd('m', 'dense')
    del sd_m['stages.2.10.block.token_channel_mixer.m.q.c.weight']
    with pytest.raises(CheckpointError, match=r'(?s)does not match the model strictly.*stages\.2\.blocks\.10'):
        load_mobile_iformer(MobileIFormer('m'), sd_m)
    with pytest.raises(CheckpointError, match=r'(?s)no key matches.*Inception Transformer.*iformer_mm.IFormer'):
        load_mobile_iformer(MobileIFormer('m'), {'blocks1.0.norm1.weight': torch.ones(3)})


def test_pruned_backbone_drops_later_stages(authors_sd):
    model = MobileIFormer('m', out_indices=(0, 1))
    assert len(model.stages) == 2 and model.out_channels == (48, 96)
    report = load_mobile_iformer(model, authors_sd('m', 'dense'))
    assert report.dropped and all(k.startswith(('stages.2.', 'stages.3.')) for k in report.dropped)
    assert len(model(torch.randn(1, 3, 64, 64))) == 2


# ------------------------------------------------------------------ options
def test_window_options_and_errors():
    assert MobileIFormer('m').window_blocks == AUTHORS_WINDOW_BLOCKS['m'] == (10, 19)
    assert MobileIFormer('l2', out_indices=(2,)).window_blocks == (13, 40)
    assert MobileIFormer('t').window_blocks is None  # no authors' dense T: global by default
    assert MobileIFormer('t', window_size=16, window_blocks=(7, 13)).window_blocks == (7, 13)
    with pytest.raises(ValueError, match=r'window_blocks=\(split, merge\).*\[7, 10, 13\]'):
        MobileIFormer('t', window_size=16)
    with pytest.raises(ValueError, match=r'attention blocks .*\[10, 13, 16, 19\]'):
        MobileIFormer('m', window_blocks=(9, 19))
    with pytest.raises(ValueError, match="not a Mobile iFormer.*iformer_mm.IFormer"):
        MobileIFormer('small')
    from timm.layers import DropPath
    rates = [m.drop_prob for m in MobileIFormer('m', drop_path_rate=0.1).modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)
    assert not any(isinstance(m, DropPath) for m in MobileIFormer('m').modules())  # authors: none


def test_norm_eval_frozen_stages_and_with_cp():
    torch.manual_seed(0)
    model = MobileIFormer('t', frozen_stages=1)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # norm_eval=True by default
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert any(m.training for m in MobileIFormer('t', norm_eval=False).train().modules()
               if isinstance(m, torch.nn.BatchNorm2d))

    x = torch.randn(1, 3, 96, 128)
    plain = MobileIFormer('m', drop_path_rate=0.0).train()
    ckpt = MobileIFormer('m', drop_path_rate=0.0, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for m in (plain, ckpt):
        out = m(x)
        sum(o.square().mean() for o in out).backward()
        grads.append(m.stages[2].blocks[10].mixer.module.q.c.weight.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_layer_depth_syncbn_and_out_norm():
    model = MobileIFormer('m', norm_cfg=dict(type='SyncBN'), out_norm='ln')
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    assert [n for n, _ in model.named_children()][-4:] == ['norm0', 'norm1', 'norm2', 'norm3']
    n = sum(model.depths) + 2
    assert model.get_layer_depth('backbone.stem.conv1.c.weight', 'backbone.') == (0, n)
    assert model.get_layer_depth('backbone.stages.1.downsample.c.weight', 'backbone.') == (3, n)
    assert model.get_layer_depth('backbone.stages.2.blocks.10.mixer.module.q.c.weight', 'backbone.') == (15, n)
    assert model.get_layer_depth('backbone.norm3.weight', 'backbone.') == (n - 1, n)
    assert model.get_layer_depth('neck.conv.weight', 'backbone.') == (n - 1, n)


# The authors' table counts the deployed model (BN folded into the convs, RepCPE into one
# conv): timm's fuse() gives that model. H is published as "99M".
AUTHORS_PARAMS_M = {'t': 2.9, 's': 6.5, 'm': 8.9, 'l': 14.7, 'l2': 24.5, 'h': 99}


@pytest.mark.parametrize('arch', list(AUTHORS_PARAMS_M))
def test_parameter_counts_match_the_authors_table(arch):
    """timm's fused classifier has the authors' published parameter count; our backbone is
    timm's model minus its classifier, parameter for parameter."""
    cls = timm.create_model(f'iformer_{arch}').eval()
    total = sum(p.numel() for p in cls.parameters())
    head = sum(p.numel() for p in cls.head.parameters())
    assert sum(p.numel() for p in MobileIFormer(arch).parameters()) == total - head
    fused = sum(p.numel() for p in cls.fuse().parameters()) / 1e6
    digits = 0 if arch == 'h' else 1
    assert round(fused, digits) == AUTHORS_PARAMS_M[arch], fused


@pytest.mark.parametrize('arch', ['m', 'l', 'l2'])
def test_backbone_tensors_equal_the_authors_dense_layout(arch, shapes_file):
    """Same number of weight and buffer elements as the authors' dense model (their
    state_dict shapes, ``num_batches_tracked`` excluded), and the same key count."""
    shapes = json.loads(shapes_file.read_text())[f'iFormer_{arch}_dense']
    ours = MobileIFormer(arch).state_dict()
    count = lambda sd: sum(int(np.prod(s.shape if hasattr(s, 'shape') else s))  # noqa: E731
                           for k, s in sd.items() if not k.endswith('num_batches_tracked'))
    assert len(ours) == len(shapes) and count(ours) == count(shapes)
