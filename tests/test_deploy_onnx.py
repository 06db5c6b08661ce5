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
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from iformer_mm import compat, load_pretrained  # noqa: E402
from iformer_mm.cli import run_cli  # noqa: E402
from iformer_mm.deploy import onnx as dep  # noqa: E402
from iformer_mm.models import InceptionTransformer  # noqa: E402
from iformer_mm.models.backbone import IFormer  # noqa: E402

from _golden import TINY_ARCH, case_input, load_cases, make_state_dict, rel_err  # noqa: E402
from _subprocess import env_with_repo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The exporter the tool uses is torch >= 2.6's (iformer_mm.compat.has_onnx_dynamo_exporter); on an
# older torch what runs is the one line that says so (test_torch_without_the_exporter_...).
needs_exporter = pytest.mark.skipif(not compat.has_onnx_dynamo_exporter(), reason=(
    f'torch {torch.__version__} lacks the ONNX exporter the tool uses (torch >= 2.6)'))
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


def _run_tool(tool: str, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """``python tools/<tool> ARGS`` with this checkout first on the path; ``.log`` is stdout + stderr.
    The timeout is generous: the dynamo exporter needs about a minute of CPU per model."""
    res = subprocess.run([sys.executable, str(REPO / 'tools' / tool), *args], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout, env=env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    res.log = res.stdout + res.stderr
    return res


def _one_line_error(exc: SystemExit) -> str:
    text = str(exc.code)
    assert text.startswith('error: ') and '\n' not in text and 'Traceback' not in text, text
    return text


# ------------------------------------------------------------------ fast: tiny iFormer
@needs_exporter
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


@needs_exporter
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


@needs_exporter
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


@needs_exporter
def test_folded_preprocessing_and_argmax_equal_mmsegs_own_path(tmp_path):
    """--fold-preprocess --argmax (FPN + PoolFormer-S12, --dynamic): raw BGR pixels in, the label
    map out, equal to mmseg's data preprocessor + encode_decode + argmax at another size."""
    cfg = str(REPO / 'configs' / 'segmentation' / 'fpn_poolformer_s12_ade20k_40k.py')
    torch.manual_seed(0)
    res = dep.export_from_config(cfg, str(tmp_path / 'seg.onnx'), (64, 96), dynamic=True,
                                 fold_preprocess=True, argmax=True, keep_model=True)
    assert res.output_names == ['labels']
    seg = res.module.segmentor
    raw = torch.randint(0, 256, (3, 80, 48), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    with torch.no_grad():
        x = seg.data_preprocessor(dict(inputs=[raw]), False)['inputs']  # BGR->RGB, mean/std
        ref = seg.encode_decode(x, [dict(img_shape=(80, 48), pad_shape=(80, 48))]).argmax(1)
    out = dep.run_onnx(dep.onnx_session(res.path, threads=1), raw[None].float())[0]
    assert out.dtype == torch.int64 and torch.equal(out, ref)


# ------------------------------------------------------------------ fast: bad input, one line each
@needs_exporter
def test_opset_that_lacks_an_op_names_it(golden_dir, tmp_path):
    with pytest.raises(dep.ExportError, match=r'--opset 13 lacks .*LayerNormalization \(opset 17\)'):
        dep.export_onnx(_tiny_classifier(golden_dir), str(tmp_path / 'x.onnx'), (1, 3, 64, 64), opset=13)
    with pytest.raises(dep.ExportError, match=r'--opset 99: .* up to \d+'):
        dep.export_onnx(_tiny_classifier(golden_dir), str(tmp_path / 'x.onnx'), (1, 3, 64, 64), opset=99)


def test_torch_without_the_exporter_gets_one_line(golden_dir, tmp_path, monkeypatch):
    """torch < 2.6 (no ``dynamo=`` argument before 2.5; no ``optimize=`` nor ``Dim.DYNAMIC`` in 2.5):
    the export stops with the reason, before tracing."""
    def old_export(model, args, f, export_params=True, verbose=False, opset_version=None):
        raise AssertionError('must not be called')
    monkeypatch.setattr(torch.onnx, 'export', old_export)
    with pytest.raises(dep.ExportError, match=r'lacks the torch.onnx.export\(dynamo=True\) this tool uses \(torch >= 2.6'):
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
    cfg.write_text("_base_ = 'mmseg::ocrnet/ocrnet_hr18_4xb2-160k_cityscapes-512x1024.py'\n")
    with pytest.raises(SystemExit) as e:
        _tool('export_onnx')([str(cfg), '--shape', '64', '64', '--out', str(tmp_path / 'x.onnx')])
    assert 'CascadeEncoderDecoder' in _one_line_error(e.value) and 'cannot export' in str(e.value.code)


@needs_exporter
def test_onnx_test_refuses_a_classifier_file(golden_dir, tmp_path):
    res = dep.export_onnx(_tiny_classifier(golden_dir), str(tmp_path / 'cls.onnx'), (1, 3, 64, 64))
    cfg = REPO / 'configs' / 'segmentation' / 'fpn_iformer_s_demo.py'
    with pytest.raises(SystemExit) as e:
        _tool('onnx_test')([str(cfg), res.path])
    assert 'holds a classifier, not a segmentor' in _one_line_error(e.value)


# ------------------------------------------------------------------ slow: full-size classifiers
@needs_exporter
@pytest.mark.slow
def test_iformer_small_classifier_matches_golden_at_two_sizes(golden_dir, tmp_path):
    """iFormer-S (the spec's weights) exported once with --dynamic: both golden cases, 224x224
    and 200x264, within 1e-4 of the golden logits."""
    model = InceptionTransformer('small')
    load_pretrained(model, make_state_dict(golden_dir, 'iformer_small'))
    res = dep.export_onnx(model.eval(), str(tmp_path / 's.onnx'), (1, 3, 224, 224), dynamic=True)
    session = dep.onnx_session(res.path, threads=1)
    for case in [c for c in load_cases(golden_dir) if c['name'].startswith('small')]:
        assert rel_err(dep.run_onnx(session, case_input(case))[0], case['logits']) <= TOL, case['name']


@needs_exporter
@pytest.mark.slow
@pytest.mark.parametrize('arch', ['t', 'm'])
def test_mobile_iformer_classifier_matches_golden(arch, tmp_path):
    """timm's iformer_t / iformer_m with the spec's deterministic weights in the authors' layout,
    exported through the tool's path (timm name + checkpoint): the golden logits within 1e-4."""
    import json
    from conftest import mobile_golden_files
    golden_file, shapes_file = mobile_golden_files()
    cases = {c['name']: c for c in torch.load(golden_file, weights_only=True)}
    case = cases['cls_iFormer_m_2x224x224' if arch == 'm' else 'cls_iFormer_t_224x224']
    from assets.golden import weights
    shapes = json.loads(shapes_file.read_text())
    import timm
    from iformer_mm.pretrained import load_mobile_iformer
    model = timm.create_model(f'iformer_{arch}')
    load_mobile_iformer(model, weights.make_state_dict(shapes[f'iFormer_{arch}_cls']))
    ckpt = tmp_path / 'w.pth'
    torch.save(model.state_dict(), ckpt)
    res = dep.export_from_config(f'iformer_{arch}', str(tmp_path / 'c.onnx'), (224, 224), str(ckpt), dynamic=True)
    out = dep.run_onnx(dep.onnx_session(res.path, threads=1), case_input(case))[0]
    assert rel_err(out, case['logits']) <= TOL


@needs_exporter
@pytest.mark.slow
def test_windowed_mobile_iformer_m_backbone_matches_golden(tmp_path):
    """The dense M backbone (windowed stage 3) exported once with --dynamic equals the authors'
    golden stages at 320x480 (stage 3 padded to 32x32, 4 windows) and 333x517 (odd sizes)."""
    import json
    from conftest import mobile_golden_files
    from assets.golden import weights
    from _golden import stage_errors
    from iformer_mm.models.mobile_iformer import MobileIFormer
    from iformer_mm.pretrained import load_mobile_iformer
    golden_file, shapes_file = mobile_golden_files()
    cases = {c['name']: c for c in torch.load(golden_file, weights_only=True)}
    shapes = json.loads(shapes_file.read_text())
    model = MobileIFormer('m')
    load_mobile_iformer(model, weights.make_state_dict(shapes['iFormer_m_dense']))
    res = dep.export_onnx(model.eval(), str(tmp_path / 'm.onnx'), (1, 3, 256, 256),
                          output_names=[f'c{i}' for i in range(2, 6)], dynamic=True)
    session = dep.onnx_session(res.path, threads=1)
    for name in ('dense_iFormer_m_320x480', 'dense_iFormer_m_333x517'):
        assert max(stage_errors(dep.run_onnx(session, case_input(cases[name])), cases[name])) <= TOL, name


# ------------------------------------------------------------------ slow: detector features
@needs_exporter
@pytest.mark.slow
def test_detector_backbone_and_neck_export_and_agree(tmp_path):
    """Mask R-CNN + iFormer-S: backbone + FPN (5 maps) exported with --dynamic by the tool,
    equal to mmdet's extract_feat within 1e-4 at two sizes."""
    cfg = str(REPO / 'configs' / 'detection' / 'mask_rcnn_iformer_s_1x.py')
    torch.manual_seed(0)
    res = dep.export_from_config(cfg, str(tmp_path / 'det.onnx'), (128, 160), dynamic=True, keep_model=True)
    assert res.kind == 'detector' and res.output_names == [f'feat{i}' for i in range(5)]
    for shape in ((1, 3, 128, 160), (1, 3, 160, 96)):
        errs = dep.check_against_pytorch(res, shape)
        assert max(errs.values()) <= TOL, (shape, errs)


# ------------------------------------------------------------------ slow: segmentors, end to end
SEGMENTORS = ['fpn_iformer_s_ade20k_80k.py', 'fpn_mobile_iformer_m_ade20k_40k.py', 'upernet_iformer_s_ade20k_160k.py']


@pytest.fixture(scope='module')
def ade_dir(tiny_coco_dir, tmp_path_factory) -> Path:
    from iformer_mm.datagen.ade_from_coco import build_ade_from_coco
    out = tmp_path_factory.mktemp('ade_from_coco')
    build_ade_from_coco(tiny_coco_dir, out, overwrite=True)
    return out


@needs_exporter
@pytest.mark.slow
@pytest.mark.parametrize('base', SEGMENTORS)
def test_exported_segmentor_matches_pytorch_and_scores_the_same(base, repo_root, ade_dir, tmp_path):
    """Train one iteration, export with --dynamic (tool), then: logits within 1e-4 of mmseg's
    encode_decode at two sizes (the mobile M at 320x480 too: 4 stage-3 windows); mIoU of
    tools/deploy/onnx_test.py equal to tools/test.py's within 0.1."""
    from test_segmentation_e2e import metrics, write_tiny_config
    cfg = write_tiny_config(tmp_path / base, repo_root, base, ade_dir, iters=1)
    work = tmp_path / 'work'
    res = _run_tool('train.py', str(cfg), '--work-dir', str(work))
    assert res.returncode == 0, res.log[-3000:]
    ckpt, onnx_file = work / 'iter_1.pth', tmp_path / 'seg.onnx'
    res = _run_tool('deploy/export_onnx.py', str(cfg), str(ckpt), '--shape', '128', '160', '--dynamic',
                    '--out', str(onnx_file))
    assert res.returncode == 0 and 'segmentor' in res.stdout and 'dynamic' in res.stdout, res.log[-3000:]

    seg = dep.load_for_export(str(cfg), str(ckpt))
    session = dep.onnx_session(str(onnx_file), threads=1)
    sizes = [(128, 171), (171, 128)] + ([(320, 480)] if 'mobile' in base else [])
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            ref = seg.encode_decode(x, [dict(img_shape=(h, w), pad_shape=(h, w))])
        assert rel_err(dep.run_onnx(session, x)[0], ref) <= TOL, (h, w)

    ort = _run_tool('deploy/onnx_test.py', str(cfg), str(onnx_file), '--work-dir', str(work))
    assert ort.returncode == 0, ort.log[-3000:]
    pt = _run_tool('test.py', str(cfg), str(ckpt), '--work-dir', str(work))
    assert pt.returncode == 0, pt.log[-3000:]
    (a_ort, miou_ort, _), (a_pt, miou_pt, _) = metrics(ort.log), metrics(pt.log)
    assert abs(miou_ort - miou_pt) <= 0.1 and abs(a_ort - a_pt) <= 0.1, (miou_ort, miou_pt)
    assert re.search(r'ONNX Runtime: .*mIoU', ort.stdout)
