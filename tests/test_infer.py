"""tools/infer.py: a trained detector and segmentor on one image, a folder with a corrupt file
and a generated video; pictures and JSON written; the JSON equals mmdet's DetInferencer run in
this process; --amp bf16; and one clear line for each kind of bad input.

The models are trained here for one iteration by tools/train.py (tiny configs over the real
ones, on tiny COCO and its ADE20K-layout painting, see conftest.py); that run also shows that
tools/train.py keeps mmengine's config off the screen and in the work dir. End-to-end tests are
marked slow; the bad-input lines that need no model are fast.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from _configs import det_config, seg_config  # noqa: E402
from _subprocess import env_with_repo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The tests' parts of the tiny configs (tests/_configs.py writes the data parts)
DET_REST = '''
model = dict(backbone=dict(init_cfg=None, drop_path_rate=0.0),
             roi_head=dict(bbox_head=dict(num_classes=len(classes)), mask_head=dict(num_classes=len(classes))),
             # score_thr 0: a model trained one iteration still has detections to compare
             test_cfg=dict(rcnn=dict(score_thr=0.0, max_per_img=10)))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1, val_interval=100)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=1, save_optimizer=False),
                     visualization=dict(draw=False))
log_processor = dict(by_epoch=False, window_size=1)
'''

SEG_REST = '''
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None, drop_path_rate=0.0),
             decode_head=dict(num_classes=80))
param_scheduler = []
train_cfg = dict(max_iters=1, val_interval=100)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, save_optimizer=False))
'''


def det_text(coco_dir: Path, classes) -> str:
    return det_config(REPO / 'configs' / 'detection' / 'mask_rcnn_iformer_s_1x.py', coco_dir, classes,
                      train_images=2, val_images=1, batch_size=1, infinite_sampler=True, rest=DET_REST)


def seg_text(ade_dir: Path) -> str:
    return seg_config(REPO / 'configs' / 'segmentation' / 'fpn_iformer_s_ade20k_80k.py', ade_dir,
                      train_transforms="dict(type='RandomResize', scale=(512, 128), ratio_range=(1.0, 1.0), "
                                       "keep_ratio=True),\n    dict(type='RandomCrop', crop_size=crop_size),",
                      train_images=2, rest=SEG_REST)


def _run(args, timeout=900):
    res = subprocess.run([sys.executable, *[str(a) for a in args]], cwd=REPO, env=env_with_repo(),
                         capture_output=True, text=True, timeout=timeout)
    res.log = res.stdout + res.stderr
    return res


def _one_line_error(res, *words):
    """The process failed with one ``error: ...`` line naming ``words`` and no traceback."""
    assert res.returncode != 0, res.log[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert 'Traceback' not in res.stderr, res.stderr[-3000:]
    assert lines and lines[-1].startswith('error: '), res.stderr[-3000:]
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    return lines[-1]


# ----------------------------------------------------------------------------- trained models
@pytest.fixture(scope='module')
def det_run(tiny_coco_dir, tiny_coco_classes, tmp_path_factory):
    """Mask R-CNN iFormer-S trained one iteration by tools/train.py: (config, checkpoint, console)."""
    root = tmp_path_factory.mktemp('infer_det')
    cfg = root / 'tiny_det.py'
    cfg.write_text(det_text(tiny_coco_dir, tiny_coco_classes))
    res = _run(['tools/train.py', cfg, '--work-dir', root / 'work'])
    assert res.returncode == 0, res.log[-4000:]
    return cfg, root / 'work' / 'iter_1.pth', res


@pytest.fixture(scope='module')
def seg_run(tiny_coco_dir, tmp_path_factory):
    """Semantic FPN iFormer-S trained one iteration on tiny COCO painted as ADE20K."""
    from iformer_mm.datagen.ade_from_coco import build_ade_from_coco
    root = tmp_path_factory.mktemp('infer_seg')
    build_ade_from_coco(tiny_coco_dir, root / 'ade', overwrite=True)
    cfg = root / 'tiny_seg.py'
    cfg.write_text(seg_text(root / 'ade'))
    res = _run(['tools/train.py', cfg, '--work-dir', root / 'work'])
    assert res.returncode == 0, res.log[-4000:]
    return cfg, root / 'work' / 'iter_1.pth'


@pytest.fixture(scope='module')
def inputs(tiny_coco_dir, tmp_path_factory):
    """One image, a folder of two images and a corrupt one, a 3-frame video (cv2.VideoWriter)."""
    import cv2
    root = tmp_path_factory.mktemp('infer_inputs')
    val = sorted((tiny_coco_dir / 'images' / 'val2017').glob('*.jpg'))
    folder = root / 'folder'
    folder.mkdir()
    for p in val[1:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    (folder / 'notes.txt').write_text('not an image: ignored')
    frames = [cv2.resize(cv2.imread(str(p)), (160, 120)) for p in val[:3]]
    video = root / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 5.0, (160, 120))
    for f in frames:
        writer.write(f)
    writer.release()
    return dict(image=val[0], folder=folder, video=video, folder_images=sorted(p.name for p in val[1:3]))


# ----------------------------------------------------------------------------- tools/train.py console
@pytest.mark.slow
def test_train_keeps_config_off_the_screen_and_in_the_work_dir(det_run):
    """One iteration of tools/train.py: mmengine's config is not printed (one line says where
    it is), but the work dir has it, as a .py file and in the log file."""
    cfg, ckpt, res = det_run
    assert ckpt.is_file() and 'Iter(train) [1/1]' in res.log
    assert 'train_pipeline = [' not in res.stdout and 'model = dict(' not in res.stdout
    assert 'Config: written to' in res.stdout and '--verbose' in res.stdout
    copy = ckpt.parent / 'tiny_det.py'
    assert 'train_pipeline = [' in copy.read_text()
    log = next(ckpt.parent.glob('*/*.log')).read_text()
    assert 'Config:\n' in log and "type='iformer_mm.IFormer'" in log


# ----------------------------------------------------------------------------- detection
@pytest.mark.slow
def test_detector_on_image_folder_and_video(det_run, inputs, tiny_coco_classes, tmp_path):
    """Pictures and one JSON per image and frame; the corrupt file is skipped with a warning;
    the video comes back painted; the JSON holds boxes, scores, names and decodable RLE masks."""
    from pycocotools import mask as mask_util
    cfg, ckpt, _ = det_run
    out = tmp_path / 'out'
    res = _run(['tools/infer.py', cfg, ckpt, inputs['image'], inputs['folder'], inputs['video'],
                '--out-dir', out, '--score-thr', '0'])
    assert res.returncode == 0, res.log[-4000:]
    assert 'skipping' in res.stderr and 'broken.jpg' in res.stderr
    assert 'infer: 100%' in res.stderr  # the progress bar
    assert '[infer] detector: 3 images and 3 video frames' in res.stdout
    names = [inputs['image'].stem] + [Path(n).stem for n in inputs['folder_images']]
    for n in names:
        assert (out / 'vis' / f'{n}.jpg').stat().st_size > 1000
    assert sorted(p.stem for p in (out / 'preds').glob('*.json')) == sorted(names + [f'clip_{i:06d}' for i in range(3)])
    import cv2
    cap = cv2.VideoCapture(str(out / 'vis' / 'clip.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 160
    cap.release()
    rec = json.loads((out / 'preds' / f'{names[0]}.json').read_text())
    assert rec['image'] == str(inputs['image']) and rec['classes'] == list(tiny_coco_classes)
    n = len(rec['bboxes'])
    assert n > 0 and len(rec['scores']) == len(rec['labels']) == len(rec['masks']) == n
    assert rec['label_names'] == [tiny_coco_classes[i] for i in rec['labels']]
    mask = mask_util.decode({'size': rec['masks'][0]['size'], 'counts': rec['masks'][0]['counts'].encode()})
    assert mask.shape == (rec['height'], rec['width'])
    frame = json.loads((out / 'preds' / 'clip_000001.json').read_text())
    assert frame['image'] == f'{inputs["video"]}#frame=1' and (frame['height'], frame['width']) == (120, 160)


@pytest.mark.slow
def test_detector_json_equals_detinferencer_in_process(det_run, inputs, tmp_path):
    """The JSON's boxes, labels and scores are mmdet's DetInferencer's, run here on the same
    file; --score-thr keeps exactly the detections at or above it."""
    from mmdet.apis import DetInferencer

    from iformer_mm.engine import trusted_run_checkpoints
    cfg, ckpt, _ = det_run
    with trusted_run_checkpoints():
        ref = DetInferencer(str(cfg), str(ckpt), device='cpu', show_progress=False)(str(inputs['image']))
    ref = ref['predictions'][0]
    sys.path.insert(0, str(REPO))
    from tools import infer as tool
    for thr in (0.0, float(np.median(ref['scores']))):
        out = tmp_path / f'thr{thr}'
        tool.main([str(cfg), str(ckpt), str(inputs['image']), '--out-dir', str(out), '--score-thr', str(thr),
                   '--no-progress'])
        got = json.loads((out / 'preds' / f'{inputs["image"].stem}.json').read_text())
        keep = [i for i, s in enumerate(ref['scores']) if s >= thr]
        assert 0 < len(keep) and (thr == 0.0) == (len(keep) == len(ref['scores']))
        np.testing.assert_allclose(np.array(got['bboxes']), np.array([ref['bboxes'][i] for i in keep]), atol=1e-4)
        assert got['labels'] == [ref['labels'][i] for i in keep]
        assert got['scores'] == pytest.approx([ref['scores'][i] for i in keep], abs=1e-6)


@pytest.mark.slow
def test_demo_style_weights_and_amp_bf16(det_run, inputs, tiny_coco_classes, tmp_path):
    """Tensors-only weights (what tools/demo.py saves) take their class names from the config,
    or from --classes-from; --amp bf16 runs and gives boxes close to fp32's."""
    cfg, ckpt, _ = det_run
    from iformer_mm.engine import trusted_run_checkpoints
    with trusted_run_checkpoints():
        sd = torch.load(ckpt, map_location='cpu')['state_dict']
    weights = tmp_path / 'demo_model.pth'
    torch.save({'state_dict': sd}, weights)
    sys.path.insert(0, str(REPO))
    from tools import infer as tool
    fp32 = tool.main([str(cfg), str(weights), str(inputs['image']), '--out-dir', str(tmp_path / 'fp32'),
                      '--score-thr', '0', '--no-progress'])
    rec = json.loads(Path(fp32.predictions[0]).read_text())
    assert rec['classes'] == list(tiny_coco_classes)
    coco_json = tmp_path / 'cats.json'
    cats = [{'id': i + 1, 'name': f'c{i}'} for i in range(len(tiny_coco_classes))]
    coco_json.write_text(json.dumps({'categories': cats}))
    named = tool.main([str(cfg), str(weights), str(inputs['image']), '--out-dir', str(tmp_path / 'named'),
                       '--classes-from', str(coco_json), '--no-progress'])
    assert json.loads(Path(named.predictions[0]).read_text())['classes'][:2] == ['c0', 'c1']
    bf16 = tool.main([str(cfg), str(weights), str(inputs['image']), '--out-dir', str(tmp_path / 'bf16'),
                      '--score-thr', '0', '--amp', 'bf16', '--no-progress'])
    low = json.loads(Path(bf16.predictions[0]).read_text())
    assert len(low['bboxes']) > 0 and Path(bf16.pictures[0]).is_file()
    top = np.array(rec['bboxes'][0])
    assert np.abs(np.array(low['bboxes']) - top).max(axis=1).min() < 8.0  # fp32's best box is found in bf16 too


# ----------------------------------------------------------------------------- segmentation
@pytest.mark.slow
def test_segmentor_label_map_legend_and_video(seg_run, inputs, tmp_path):
    """A label map PNG (one class index per pixel, the image's size) and a JSON pointing at it;
    the picture is the blended map with a legend strip below; video frames too."""
    from PIL import Image
    from iformer_mm.datagen.ade_from_coco import COCO_CLASSES
    cfg, ckpt = seg_run
    out = tmp_path / 'seg'
    res = _run(['tools/infer.py', cfg, ckpt, inputs['image'], inputs['video'], '--out-dir', out])
    assert res.returncode == 0, res.log[-4000:]
    assert '[infer] segmentor: 1 images and 3 video frames' in res.stdout
    stem = inputs['image'].stem
    rec = json.loads((out / 'preds' / f'{stem}.json').read_text())
    label_map = np.array(Image.open(out / rec['label_map']))
    w, h = Image.open(inputs['image']).size
    assert label_map.shape == (h, w) and rec['classes'] == list(COCO_CLASSES)
    assert sum(p['pixels'] for p in rec['present']) == h * w
    assert {p['label'] for p in rec['present']} == set(np.unique(label_map).tolist())
    vis = np.array(Image.open(out / 'vis' / f'{stem}.jpg'))
    assert vis.shape[1] == w and vis.shape[0] > h  # the legend strip below the picture
    assert (out / 'vis' / 'clip.mp4').stat().st_size > 0 and (out / 'preds' / 'clip_000002.png').is_file()


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_fail_in_one_line_before_a_model_is_built(tmp_path):
    """No such file, an image that does not decode, a config that is neither detector nor
    segmentor, a missing checkpoint: one ``error:`` line each, naming the problem and the fix."""
    from iformer_mm.inference import InferenceError, build_inferencer, collect_inputs
    with pytest.raises(InferenceError, match=r"input '.*nope\.jpg' not found: give image files, a folder"):
        collect_inputs([str(tmp_path / 'nope.jpg')])
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not a png')
    with pytest.raises(InferenceError, match=r'cannot decode .*bad\.png as an image'):
        collect_inputs([str(bad)])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(InferenceError, match='has no images'):
        collect_inputs([str(empty)])
    with pytest.raises(InferenceError, match="checkpoint '.*missing.pth' not found"):
        build_inferencer(str(REPO / 'configs' / 'detection' / 'mask_rcnn_iformer_s_1x.py'),
                         str(tmp_path / 'missing.pth'))
    cls_cfg = tmp_path / 'classifier.py'
    cls_cfg.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    weights = tmp_path / 'w.pth'
    torch.save({'state_dict': {}}, weights)
    with pytest.raises(InferenceError, match='neither an MMDetection detector nor an MMSegmentation segmentor'):
        build_inferencer(str(cls_cfg), str(weights))

    res = _run(['tools/infer.py', cls_cfg, weights, bad])  # the command line: one line, no traceback
    _one_line_error(res, 'cannot decode', 'bad.png')


@pytest.mark.slow
def test_checkpoint_of_another_model_or_corrupt_is_one_line(det_run, seg_run, inputs, tmp_path):
    """The segmentor's checkpoint with the detector's config, and a truncated checkpoint."""
    det_cfg, det_ckpt, _ = det_run
    _, seg_ckpt = seg_run
    res = _run(['tools/infer.py', det_cfg, seg_ckpt, inputs['image'], '--out-dir', tmp_path / 'x'])
    line = _one_line_error(res, 'is not a checkpoint of the model in', 'missing', 'Fix:')
    assert 'roi_head' in line or 'rpn_head' in line or 'neck' in line
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(det_ckpt.read_bytes()[:4096])
    res = _run(['tools/infer.py', det_cfg, broken, inputs['image'], '--out-dir', tmp_path / 'y'])
    _one_line_error(res, 'broken.pth', 'corrupt')


def test_classes_from_a_coco_json_or_a_config(tmp_path):
    """--classes-from: a COCO json's categories in id order; a config's test-dataset metainfo,
    else its dataset class's own (mmdet's CocoDataset: COCO's 80); anything else one line."""
    from iformer_mm.inference import InferenceError, classes_from
    coco = tmp_path / 'instances.json'
    coco.write_text(json.dumps({'categories': [{'id': 2, 'name': 'b'}, {'id': 1, 'name': 'a'}]}))
    assert classes_from(str(coco)) == (['a', 'b'], None)
    classes, palette = classes_from(str(REPO / 'configs' / 'segmentation' / 'fpn_iformer_s_demo.py'))
    assert classes == ['disc', 'square', 'triangle'] and palette is None
    classes, palette = classes_from(str(REPO / 'configs' / 'detection' / 'mask_rcnn_iformer_s_1x.py'))
    assert len(classes) == 80 and classes[0] == 'person' and len(palette) == 80
    (tmp_path / 'x.json').write_text('<html>404</html>')
    with pytest.raises(InferenceError, match='not a COCO annotation file'):
        classes_from(str(tmp_path / 'x.json'))
