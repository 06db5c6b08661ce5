"""bf16 mixed precision on CPU (iformer_mm/engine/amp.py, ``--amp`` of tools/train.py and
tools/test.py): the backbone really computes in bf16, the heads and the weights stay fp32,
a Mask R-CNN training step and prediction work (mmengine's own AMP paths do not on CPU),
and the tools' flag turns it on with a clear error for what cannot run."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')

from _samples import det_sample, mask_rcnn, seg_sample, semantic_fpn  # noqa: E402
from iformer_mm.engine.amp import FeatureAutocastHook, apply_amp, autocast_features  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def det_model():
    return mask_rcnn('ours')


def test_mask_rcnn_trains_and_predicts_with_a_bf16_backbone_on_cpu(det_model):
    model = det_model
    keys = list(model.state_dict())
    autocast_features(model, 'bf16')
    autocast_features(model, 'bf16')  # idempotent: not wrapped twice
    assert list(model.state_dict()) == keys  # checkpoints load unchanged

    seen = {}
    # the neck's outputs come from convs: bf16 under autocast (the backbone's own outputs
    # leave through a norm, fp32 under autocast; hooks inside it would disable the kernels)
    hooks = [model.neck.register_forward_hook(lambda m, i, o: seen.__setitem__('neck', o[0].dtype)),
             model.rpn_head.register_forward_hook(lambda m, i, o: seen.__setitem__('rpn', o[0][0].dtype))]
    try:
        h = w = 128
        data = dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8)],
                    data_samples=[det_sample(h, w)])
        model.train()
        from mmengine.optim import OptimWrapper
        optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
        losses = model.train_step(data, optim)
        assert seen == {'neck': torch.bfloat16, 'rpn': torch.float32}
        assert all(torch.isfinite(v).all() for v in losses.values())
        assert losses['loss_rpn_cls'].dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.parameters())

        model.eval()
        with torch.no_grad():
            out = model.test_step(dict(inputs=[data['inputs'][0]], data_samples=[det_sample(h, w)]))
        assert out[0].pred_instances.bboxes.dtype == torch.float32
    finally:
        for hk in hooks:
            hk.remove()


def test_bf16_backbone_features_stay_close_to_fp32():
    """The features the heads get under bf16 are those of fp32 to bf16 precision (< 2 % rel. L2)."""
    from iformer_mm.models.backbone import IFormer
    torch.manual_seed(0)
    bb = IFormer('small', drop_path_rate=0.0, out_norm=False).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = bb(x)
        with torch.autocast('cpu', torch.bfloat16):
            low = bb(x)
    for r, o in zip(ref, low):
        err = ((o.float() - r).norm() / r.norm()).item()
        assert 0 < err < 0.02  # > 0: the matmuls did run in bf16


def test_apply_amp_on_cpu_and_its_errors():
    from mmengine.config import Config
    if torch.cuda.is_available():
        pytest.skip('checks the CPU behaviour')
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
                      custom_hooks=[dict(type='iformer_mm.RNGStateHook')]))
    apply_amp(cfg, 'bf16', training=True)
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # mmengine's AmpOptimWrapper asserts a GPU
    # training keeps fp32 weights for the optimizer; a test run stores them in bf16
    assert cfg.custom_hooks[-1] == dict(type='iformer_mm.FeatureAutocastHook', dtype='bf16',
                                        inference=False)
    apply_amp(cfg, 'bf16', training=False)  # not added twice
    assert [h['type'] for h in cfg.custom_hooks].count('iformer_mm.FeatureAutocastHook') == 1
    assert cfg.custom_hooks[-1]['inference'] is True
    with pytest.raises(SystemExit, match='--amp fp16 needs a CUDA GPU.*--amp bf16'):
        apply_amp(cfg, 'fp16', training=False)
    with pytest.raises(ValueError, match='dtype must be one of'):
        FeatureAutocastHook('int8')
    from mmengine.registry import HOOKS
    assert isinstance(HOOKS.build(dict(type='iformer_mm.FeatureAutocastHook')), FeatureAutocastHook)


@pytest.mark.slow
def test_train_and_test_tools_with_amp_bf16(tiny_coco_dir, tmp_path):
    """tools/train.py --amp bf16 trains on CPU; tools/test.py --amp bf16 evaluates the same
    checkpoint as fp32 does, with box/mask AP within 0.02 of fp32's."""
    from test_detection_e2e import _run, _write_cfg  # tests/ is on sys.path under pytest
    cfg = _write_cfg(tmp_path / 'tiny.py', tiny_coco_dir)
    wd = tmp_path / 'wd'
    out = _run([sys.executable, REPO / 'tools' / 'train.py', cfg, '--work-dir', wd, '--amp', 'bf16'], REPO)
    assert 'Epoch(train) [1][2/2]' in out and re.search(r'loss: \d+\.\d+', out)
    assert 'FeatureAutocastHook: backbone and neck run under bf16 autocast on cpu' in out
    ckpt = wd / 'epoch_1.pth'
    aps = {}
    for amp in ([], ['--amp', 'bf16']):
        out = _run([sys.executable, REPO / 'tools' / 'test.py', cfg, ckpt, '--work-dir', tmp_path / 't'] + amp, REPO)
        assert ('FeatureAutocastHook: backbone and neck run under bf16' in out) == bool(amp)
        aps[bool(amp)] = {k: float(re.search(rf'{k}_mAP_copypaste: (\d\.\d{{3}})', out).group(1))
                          for k in ('bbox', 'segm')}
    for k in ('bbox', 'segm'):
        assert abs(aps[True][k] - aps[False][k]) <= 0.02, aps
    # tools/analysis/amp_eval.py: the same checkpoint both ways in one process, same batches
    from iformer_mm.analysis.amp_eval import evaluate_precisions, format_report
    res = evaluate_precisions(str(cfg), str(ckpt), 'bf16', clock='cpu')
    assert res['fp32']['images'] == res['bf16']['images'] > 0 and res['speedup'] > 0
    for k in ('bbox', 'segm'):
        assert res['fp32']['metrics'][f'coco/{k}_mAP'] == pytest.approx(aps[False][k], abs=1e-3)
        assert abs(res['metric_diff'][f'coco/{k}_mAP']) <= 0.02
    report = format_report(res)
    assert '| coco/bbox_mAP |' in report and 'x faster' in report
    # its temporary work dir is gone, and a Runner built next in the same process (a notebook, a
    # test session) must not inherit a visualizer that still writes there
    from mmengine.config import Config
    from mmengine.runner import Runner
    after = Config.fromfile(str(cfg))
    after.work_dir = str(tmp_path / 'after')
    assert Runner.from_cfg(after).visualizer.get_backend('LocalVisBackend')._save_dir.startswith(after.work_dir)


def test_kernels_equal_the_reference_under_bf16_autocast_forward_and_backward():
    """What impl='fast' runs under bf16 autocast is the reference function to bf16
    precision: outputs, and every parameter gradient the bf16 reference itself gets right,
    are as close to fp32 as the reference's. (The patch-embedding conv biases feed a norm,
    so their true gradient is ~0 and any bf16 run is all rounding there: those are the
    parameters the bf16 reference itself misses, and they are held to the global check.)"""
    from iformer_mm.models.backbone import IFormer
    torch.manual_seed(0)
    ref = IFormer('small', drop_path_rate=0.0, out_norm=False, impl='reference').train()
    fast = IFormer('small', drop_path_rate=0.0, out_norm=False, impl='fast').train()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 96, 128)

    def run(m, bf16):
        m.zero_grad()
        with torch.autocast('cpu', torch.bfloat16, enabled=bf16):
            o = m(x)
        sum((oi.float() * torch.linspace(-1, 1, oi.numel()).view_as(oi)).sum() for oi in o).backward()
        return [oi.detach().float() for oi in o], {n: p.grad.clone() for n, p in m.named_parameters()}

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    (o32, g32), (o16, g16), (of, gf) = run(ref, False), run(ref, True), run(fast, True)
    for a, r, b in zip(of, o16, o32):
        assert rel(a, b) < 0.02 and rel(a, b) < 2 * rel(r, b) + 1e-3
    assert all(g.dtype == torch.float32 for g in gf.values())
    flat = [torch.cat([g[n].flatten() for n in g32]) for g in (gf, g16, g32)]
    assert rel(flat[0], flat[2]) < 2 * rel(flat[1], flat[2]) + 0.01
    checked = [n for n in g32 if rel(g16[n], g32[n]) < 0.05]
    assert len(checked) > 0.9 * len(g32)
    worst = max(rel(gf[n], g32[n]) for n in checked)
    assert worst < 0.1, worst


@pytest.mark.slow
def test_demo_with_amp_bf16(tmp_path):
    """tools/demo.py --amp bf16 trains, evaluates and paints with the bf16 backbone (tiny run;
    --verbose shows mmengine's log, where the hook says what it does)."""
    from test_detection_e2e import _run  # tests/ is on sys.path under pytest
    out = _run([sys.executable, REPO / 'tools' / 'demo.py', '--amp', 'bf16', '--iters', '2', '--num-train', '8',
                '--num-val', '2', '--threads', '1', '--verbose', '--work-dir', tmp_path / 'demo'], REPO)
    assert 'FeatureAutocastHook: backbone and neck run under bf16 autocast on cpu' in out
    assert re.search(r'box AP\s+\d\.\d{3}\s+\d\.\d{3}', out)
    assert (tmp_path / 'demo' / 'demo_predictions.jpg').is_file()


def test_storing_weights_in_bf16_changes_nothing_under_autocast_but_the_casts():
    """cast_matmul_weights (tools/test.py --amp bf16): the same outputs, bit for bit, as casting
    on every forward; the norms, position tables and layer scales stay fp32; the CPU kernels
    still run; and every forward saves one cast per conv/linear weight."""
    from iformer_mm.engine.amp import cast_matmul_weights
    from iformer_mm.models.backbone import IFormer
    from iformer_mm.analysis.opcount import count_ops
    torch.manual_seed(0)
    bb = IFormer('small', drop_path_rate=0.0).eval()
    x = torch.randn(1, 3, 96, 128)

    def run():
        with torch.no_grad(), torch.autocast('cpu', torch.bfloat16):
            return bb(x)
    before, ops_before = run(), count_ops(run).total
    n_cast = cast_matmul_weights(bb, 'bf16')
    after, ops_after = run(), count_ops(run).total
    for a, b in zip(after, before):
        assert torch.equal(a, b)
    lowp = {k for k, p in bb.named_parameters() if p.dtype == torch.bfloat16}
    assert len(lowp) == n_cast and all(('.weight' in k or '.bias' in k) for k in lowp)
    assert all(p.dtype == torch.float32 for k, p in bb.named_parameters()
               if 'norm' in k or 'pos_embed' in k or 'layer_scale' in k)
    assert not any('norm' in k for k in lowp)
    assert ops_after < ops_before
    with pytest.raises(ValueError, match='dtype must be one of'):
        cast_matmul_weights(bb, 'int8')


def test_the_test_run_hook_puts_heads_in_bf16_after_loading_the_checkpoint(det_model):
    """FeatureAutocastHook(inference=True) acts in before_test (after Runner.test() has loaded
    the checkpoint): backbone, neck and the dense heads' conv/linear weights in bf16, norms
    fp32; the predictions stay fp32 and close to fp32's. A training run's hook never casts."""
    import copy
    import logging
    from types import SimpleNamespace
    model = copy.deepcopy(det_model).eval()
    h = w = 128
    data = dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8)],
                data_samples=[det_sample(h, w)])
    roi_feats = torch.randn(8, 256, 7, 7, generator=torch.Generator().manual_seed(0))
    mask_feats = torch.randn(8, 256, 14, 14, generator=torch.Generator().manual_seed(1))

    def head_outputs():
        with torch.no_grad():
            feats = model.extract_feat(model.data_preprocessor(copy.deepcopy(data), False)['inputs'])
            return [*model.rpn_head(feats)[0], *model.roi_head.bbox_head(roi_feats),
                    model.roi_head.mask_head(mask_feats)]
    ref = head_outputs()
    runner = SimpleNamespace(model=model, logger=logging.getLogger('t'))
    train_hook = FeatureAutocastHook('bf16')
    train_hook.before_run(runner)
    train_hook.before_test(runner)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    test_hook = FeatureAutocastHook('bf16', inference=True)
    test_hook.before_run(runner)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the checkpoint loads next
    test_hook.before_test(runner)
    bf16 = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    for name in ('backbone.blocks1.0.mlp.fc1.weight', 'neck.fpn_convs.0.conv.weight', 'rpn_head.rpn_conv.weight',
                 'roi_head.bbox_head.shared_fcs.0.weight', 'roi_head.mask_head.convs.0.conv.weight'):
        assert name in bf16
    assert not any('norm' in n for n in bf16)
    seen = {}
    hks = [model.rpn_head.rpn_conv.register_forward_hook(lambda m, i, o: seen.__setitem__('rpn', o.dtype)),
           model.roi_head.bbox_head.shared_fcs[0].register_forward_hook(
               lambda m, i, o: seen.__setitem__('box_fc', o.dtype))]
    try:
        with torch.no_grad():
            out = model.test_step(copy.deepcopy(data))[0].pred_instances
    finally:
        for hk in hks:
            hk.remove()
    assert seen == {'rpn': torch.bfloat16, 'box_fc': torch.bfloat16}
    assert out.bboxes.dtype == out.scores.dtype == torch.float32
    for o, r in zip(head_outputs(), ref):  # RPN scores, box scores/deltas, mask logits
        assert o.dtype == torch.float32
        err = ((o - r).norm() / r.norm()).item()
        assert 0 < err < 0.02, err


def test_segmentor_inference_in_bf16_runs_the_decode_head_in_bf16_and_agrees_with_fp32():
    """mmseg: autocast_features(inference=True) puts the decode head's convs in bf16 too; the
    predicted label map agrees with fp32's on nearly every pixel and the logits stay fp32."""
    import copy
    model = semantic_fpn('ours')
    h = w = 128
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    samples = [seg_sample(h, w)]
    with torch.no_grad():
        ref = model(x, copy.deepcopy(samples), mode='predict')[0]
    autocast_features(model, 'bf16', inference=True)
    assert model.decode_head.scale_heads[0][0].conv.weight.dtype == torch.bfloat16
    assert model.decode_head.conv_seg.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(x, copy.deepcopy(samples), mode='predict')[0]
    assert out.seg_logits.data.dtype == torch.float32
    err = ((out.seg_logits.data - ref.seg_logits.data).norm() / ref.seg_logits.data.norm()).item()
    assert 0 < err < 0.02, err
    agree = (out.pred_sem_seg.data == ref.pred_sem_seg.data).float().mean().item()
    assert agree > 0.95, agree
