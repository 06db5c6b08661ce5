"""ONNX export (tools/deploy/export_onnx.py, iformer_mm.deploy.onnx) run in ONNX Runtime.

Fast tests use the tiny iFormer of the golden spec; the whole segmentors, detector features and
full-size classifiers are end-to-end runs (``--runslow``): segmentors are trained for one
iteration on the ADE-layout set painted from tiny COCO, exported with ``--dynamic``, compared
with PyTorch at two input sizes and scored by ``tools/deploy/onnx_test.py`` against
``tools/test.py``.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from iformer_mm import CheckpointError, load_pretrained  # noqa: E402
from iformer_mm.cli import run_cli  # noqa: E402
from iformer_mm.deploy import onnx as dep  # noqa: E402
from iformer_mm.models import InceptionTransformer  # noqa: E402
from iformer_mm.models.backbone import IFormer  # noqa: E402

from _golden import TINY_ARCH, case_input, load_cases, make_state_dict, rel_err  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max |ORT - PyTorch| / max |PyTorch|, fp32


def _tool(name: str):
    """The ``main`` of ``tools/deploy/<name>.py`` (tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f'deploy_{name}', REPO / 'tools' / 'deploy' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _tiny_classifier(golden_dir: Path, **kw) -> InceptionTransformer:
    model = InceptionTransformer(TINY_ARCH, img_size=64, num_classes=10, **kw)
    load_pretrained(model, make_state_dict(golden_dir, 'tiny'))
    return model.eval()


def _one_line_error(exc: SystemExit) -> str:
    text = str(exc.code)
    assert text.startswith('error: ') and '\n' not in text and 'Traceback' not in text, text
    return text


# ------------------------------------------------------------------ fast: tiny iFormer
def test_tiny_classifier_exports_dynamic_and_matches_golden(golden_dir, tmp_path):
    """One --dynamic export runs both tiny golden cases (2x64x64 and 2x72x100) in ONNX Runtime
    within 1e-4 of the golden logits, and a batch of one at a third size matches PyTorch."""
    model = _tiny_classifier(golden_dir)
    res = dep.export_onnx(model, str(tmp_path / 'tiny.onnx'), (1, 3, 64, 64), dynamic=True)
    assert res.input_names == ['images'] and res.output_names == ['logits'] and res.opset == dep.DEFAULT_OPSET
    session = dep.onnx_session(res.path, threads=1)
    for case in [c for c in load_cases(golden_dir) if c['name'].startswith('tiny')]:
        out = dep.run_onnx(session, case_input(case))[0]
        assert rel_err(out, case['logits']) <= TOL, case['name']
    errs = dep.check_against_pytorch(res, (1, 3, 80, 48), module=model)
    assert errs['logits'] <= TOL


def test_cpu_kernels_never_reach_the_graph(golden_dir, tmp_path, monkeypatch):
    """The kernels of iformer_mm.ops run in eager fp32 on CPU (impl='auto'), but not while
    exporting: with the kernels made to raise, impl='auto' still exports, to the same ops as
    impl='reference', with no control flow (Loop/If/Scan) in the graph."""
    import iformer_mm.models.iformer as core
    calls = []

    def refuse(name):
        def kernel(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f'{name} ran')
        return kernel
    model = _tiny_classifier(golden_dir, impl='auto')
    x = torch.randn(1, 3, 64, 64)
    monkeypatch.setattr(core, 'inception_mixer_cl', refuse('inception_mixer_cl'))
    monkeypatch.setattr(core, 'fused_mlp', refuse('fused_mlp'))
    with pytest.raises(AssertionError), torch.no_grad():
        model(x)  # eager: the rule picks a kernel here, so the check below means something
    assert calls
    calls.clear()
    auto = dep.export_onnx(model, str(tmp_path / 'auto.onnx'), (1, 3, 64, 64), dynamic=True)
    assert not calls
    ref = dep.export_onnx(_tiny_classifier(golden_dir, impl='reference'), str(tmp_path / 'ref.onnx'),
                          (1, 3, 64, 64), dynamic=True)
    assert auto.op_types == ref.op_types
    assert not {'Loop', 'If', 'Scan'} & set(auto.op_types)


def test_backbone_out_indices_subset_exports(golden_dir, tmp_path):
    """An mm backbone with out_indices=(1, 3) exports its two maps (dynamic), equal to PyTorch."""
    backbone = IFormer(arch=TINY_ARCH, out_indices=(1, 3)).eval()
    res = dep.export_onnx(backbone, str(tmp_path / 'bb.onnx'), (1, 3, 64, 96), output_names=['c3', 'c5'],
                          dynamic=True)
    session = dep.onnx_session(res.path, threads=1)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        ref = backbone(x)
    outs = dep.run_onnx(session, x)
    assert [tuple(o.shape) for o in outs] == [tuple(r.shape) for r in ref] == [(1, 64, 12, 8), (1, 128, 3, 2)]
    assert max(rel_err(o, r) for o, r in zip(outs, ref)) <= TOL


# ------------------------------------------------------------------ fast: bad input, one line each
def test_opset_that_lacks_an_op_names_it(golden_dir, tmp_path):
    with pytest.raises(dep.ExportError, match=r'--opset 13 lacks .*LayerNormalization \(opset 17\)'):
        dep.export_onnx(_tiny_classifier(golden_dir), str(tmp_path / 'x.onnx'), (1, 3, 64, 64), opset=13)
    with pytest.raises(dep.ExportError, match=r'--opset 99: .* up to \d+'):
        dep.export_onnx(_tiny_classifier(golden_dir), str(tmp_path / 'x.onnx'), (1, 3, 64, 64), opset=99)


def test_torch_without_the_exporter_gets_one_line(golden_dir, tmp_path, monkeypatch):
    """torch < 2.5 (no ``dynamo=`` argument): the export stops with the reason, before tracing."""
    def old_export(model, args, f, export_params=True, verbose=False, opset_version=None):
        raise AssertionError('must not be called')
    monkeypatch.setattr(torch.onnx, 'export', old_export)
    with pytest.raises(dep.ExportError, match=r'has no torch.onnx.export\(dynamo=True\) \(added in torch 2.5\)'):
        dep.export_onnx(_tiny_classifier(golden_dir), str(tmp_path / 'x.onnx'), (1, 3, 64, 64))


def test_checkpoint_of_another_model_gets_the_loaders_error(golden_dir, tmp_path, capsys):
    """A classifier's weights given for a segmentor config: the package loader's one line."""
    ckpt = tmp_path / 'tiny_cls.pth'
    torch.save(make_state_dict(golden_dir, 'tiny'), ckpt)
    cfg = REPO / 'configs' / 'segmentation' / 'fpn_iformer_s_demo.py'
    status = run_cli(_tool('export_onnx'), [str(cfg), str(ckpt), '--shape', '64', '64',
                                            '--out', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.startswith('error: ') and len(err.splitlines()) == 1
    assert 'does not fit this model' in err and str(ckpt) in err
    assert not (tmp_path / 'x.onnx').exists()


def test_config_that_cannot_export_gets_one_line(tmp_path):
    """A cascade segmentor (mmseg's OCRNet: two decode heads) is refused with the reason."""
    cfg = tmp_path / 'ocrnet.py'
    cfg.write_text("_base_ = 'mmseg::ocrnet/ocrnet_hr18_4xb2-160k_cityscapes-512x1024.py'\n"
                   "norm_cfg = dict(type='BN', requires_grad=True)\n"
                   "model = dict(data_preprocessor=dict(size=None), backbone=dict(norm_cfg=norm_cfg),\n"
                   "             decode_head=[dict(norm_cfg=norm_cfg), dict(norm_cfg=norm_cfg)])\n")
    with pytest.raises(SystemExit) as e:
        _tool('export_onnx')([str(cfg), '--shape', '64', '64', '--out', str(tmp_path / 'x.onnx')])
    assert 'CascadeEncoderDecoder' in _one_line_error(e.value) and 'cannot export' in str(e.value.code)


def test_onnx_test_refuses_a_classifier_file(golden_dir, tmp_path):
    res = dep.export_onnx(_tiny_classifier(golden_dir), str(tmp_path / 'cls.onnx'), (1, 3, 64, 64))
    cfg = REPO / 'configs' / 'segmentation' / 'fpn_iformer_s_demo.py'
    with pytest.raises(SystemExit) as e:
        _tool('onnx_test')([str(cfg), res.path])
    assert 'holds a classifier, not a segmentor' in _one_line_error(e.value)
