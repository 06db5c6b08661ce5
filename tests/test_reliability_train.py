"""Interrupted and repeated detection training (tools/train.py, Mask R-CNN + iFormer, CPU).

One uninterrupted reference run and one run that is SIGKILLed right after its iteration-4
checkpoint and resumed with ``--resume``. They prove: resuming restores the iteration, the lr
schedule position, the optimizer state and the RNG positions (losses after the resume point
equal the reference run's), and two runs with the same seed and ``deterministic=True`` log
identical losses. The model is a one-block-per-stage iFormer in the real Mask R-CNN config
at 192x128 on real COCO images (``../shared/data/tiny_coco``; without it the demo's generated
set) so the three runs take ~1.5 min.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

pytestmark = pytest.mark.slow

MAX_ITERS = 6
KILL_AFTER = 4  # iteration whose checkpoint exists when the run is killed

CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
classes = {classes!r}
model = dict(
    roi_head=dict(bbox_head=dict(num_classes=len(classes)), mask_head=dict(num_classes=len(classes))),
    backbone=dict(arch=dict(_delete_=True, depths=(1, 1, 1, 1), embed_dims=(96, 192, 320, 384),
                            attention_heads=(1, 3, 7, 9)),
                  drop_path_rate=0.1, init_cfg=None),  # drop-path draws from torch's RNG
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),  # draws from numpy's RNG in the data pipeline
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 metainfo=dict(classes=classes), data_prefix=dict(img='images/train2017/'),
                 pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters}, val_interval=1000)
# warm-up over iterations 0-3, then x0.1 at 5: the resumed run must land mid-schedule.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end={max_iters}, milestones=[5], gamma=0.1)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                     logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=True)
"""


def _env() -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)  # must work with safe loading on
    env.pop('TORCH_FORCE_WEIGHTS_ONLY_LOAD', None)
    return env


def _train_cmd(repo: Path, cfg: Path, work: Path, *extra: str) -> List[str]:
    return [sys.executable, str(repo / 'tools' / 'train.py'), str(cfg), '--work-dir', str(work), *extra]


def _scalars(work: Path) -> Dict[int, dict]:
    """iteration -> logged scalars, over every run (timestamped folder) in ``work``."""
    out: Dict[int, dict] = {}
    for path in sorted(glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if 'loss' in rec:
                    out.setdefault('_runs', {})
                    out[rec['iter']] = dict(rec, _file=path)
    out.pop('_runs', None)
    return out


def _load(path: Path) -> dict:
    from iformer_mm.engine import trusted_run_checkpoints
    with trusted_run_checkpoints():
        return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, repo_root, tiny_coco_dir, tiny_coco_classes):
    """Reference run, killed run, resumed run; returns their work dirs and what happened."""
    tmp = tmp_path_factory.mktemp('kill_resume')
    cfg = tmp / 'tiny_mask_rcnn.py'
    cfg.write_text(CONFIG.format(base=str(repo_root / 'configs/detection/mask_rcnn_iformer_s_1x.py'),
                                 data_root=str(tiny_coco_dir) + '/', classes=tiny_coco_classes,
                                 max_iters=MAX_ITERS))
    ref, killed = tmp / 'ref', tmp / 'killed'

    t0 = time.time()
    res = subprocess.run(_train_cmd(repo_root, cfg, ref), env=_env(), capture_output=True, text=True,
                         timeout=600, cwd=tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    t_ref = time.time() - t0

    # Second run, killed (SIGKILL: no handler, no cleanup) once iter_4.pth is complete.
    proc = subprocess.Popen(_train_cmd(repo_root, cfg, killed), env=_env(), cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer, want = killed / 'last_checkpoint', str(killed / f'iter_{KILL_AFTER}.pth')
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if pointer.exists() and pointer.read_text().strip() == want:
                break
            time.sleep(0.05)
        alive_at_kill = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    before_resume = _scalars(killed)

    res = subprocess.run(_train_cmd(repo_root, cfg, killed, '--resume'), env=_env(), capture_output=True,
                         text=True, timeout=600, cwd=tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return dict(ref=ref, killed=killed, alive_at_kill=alive_at_kill, returncode=proc.returncode,
                before_resume=before_resume, resume_log=res.stdout + res.stderr, t_ref=t_ref)


def test_kill_then_resume_matches_uninterrupted_run(runs):
    """SIGKILL mid-run, --resume: same iteration, lr, optimizer state and losses as never stopping."""
    assert runs['alive_at_kill'] and runs['returncode'] == -signal.SIGKILL, 'the run was not killed mid-way'
    ref, resumed = _scalars(runs['ref']), _scalars(runs['killed'])
    assert sorted(ref) == list(range(1, MAX_ITERS + 1))
    # The resumed process logged exactly the iterations after the checkpoint.
    resumed_file = resumed[MAX_ITERS]['_file']
    after = sorted(i for i, r in resumed.items() if r['_file'] == resumed_file)
    assert after == list(range(KILL_AFTER + 1, MAX_ITERS + 1)), after
    for it in after:
        r, q = ref[it], resumed[it]
        assert q['lr'] == pytest.approx(r['lr'], rel=1e-12), f'lr at iteration {it}'
        for key in ('loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
            assert q[key] == pytest.approx(r[key], rel=1e-5, abs=1e-6), f'{key} at iteration {it}: {q[key]} vs {r[key]}'
    assert ref[MAX_ITERS]['lr'] < ref[KILL_AFTER]['lr'], 'the lr step after the resume point was not exercised'

    # Final checkpoints agree: weights, AdamW moments and step counts, scheduler positions.
    a, b = _load(runs['ref'] / f'iter_{MAX_ITERS}.pth'), _load(runs['killed'] / f'iter_{MAX_ITERS}.pth')
    assert a['meta']['iter'] == b['meta']['iter'] == MAX_ITERS
    for k, v in a['state_dict'].items():
        torch.testing.assert_close(b['state_dict'][k], v, rtol=1e-5, atol=1e-7, msg=f'weight {k}')
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys()
    for k in sa:
        assert int(sa[k]['step']) == int(sb[k]['step']) == MAX_ITERS
        torch.testing.assert_close(sb[k]['exp_avg'], sa[k]['exp_avg'], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(sb[k]['exp_avg_sq'], sa[k]['exp_avg_sq'], rtol=1e-4, atol=1e-12)
    for sch_a, sch_b in zip(a['param_schedulers'], b['param_schedulers']):
        assert sch_a['last_step'] == sch_b['last_step']
        assert sch_a['_last_value'] == pytest.approx(sch_b['_last_value'], rel=1e-12)


def test_same_seed_deterministic_runs_give_identical_losses(runs):
    """Two separate processes, seed 0 + deterministic=True: bit-identical losses before the kill."""
    ref, first = _scalars(runs['ref']), runs['before_resume']
    shared = [i for i in sorted(first) if i <= KILL_AFTER]
    assert shared == list(range(1, KILL_AFTER + 1))
    for it in shared:
        for key in ('loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask', 'lr'):
            assert first[it][key] == ref[it][key], f'{key} at iteration {it}: {first[it][key]} vs {ref[it][key]}'


def test_checkpoints_written_by_a_run_are_complete_and_resumable(runs):
    """Every checkpoint a (killed) run left loads under weights_only=True; no temp file is left
    under a checkpoint name; the pointer names a complete file."""
    work = runs['killed']
    ckpts = sorted(work.glob('iter_*.pth'))
    assert [p.name for p in ckpts] == [f'iter_{i}.pth' for i in range(2, MAX_ITERS + 1, 2)]
    for p in ckpts:
        c = _load(p)
        assert c['meta']['iter'] == int(p.stem.split('_')[1])
        assert 'iformer_mm_rng_state' in c
    assert not [p for p in work.iterdir() if '.tmp-' in p.name]
    assert (work / 'last_checkpoint').read_text().strip() == str(work / f'iter_{MAX_ITERS}.pth')


TEST_CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
classes = {classes!r}
model = dict(roi_head=dict(bbox_head=dict(num_classes=len(classes)), mask_head=dict(num_classes=len(classes))),
             backbone=dict(arch=dict(_delete_=True, depths=(1, 1, 1, 1), embed_dims=(96, 192, 320, 384),
                                     attention_heads=(1, 3, 7, 9)), init_cfg=None))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 metainfo=dict(classes=classes), data_prefix=dict(img='images/train2017/')))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json', metainfo=dict(classes=classes),
                 data_prefix=dict(img='images/val2017/'), test_mode=True, pipeline=test_pipeline))
test_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
                      metric=['bbox', 'segm'])
val_dataloader = test_dataloader
val_evaluator = test_evaluator
"""


class _CreatesFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.mark.parametrize('tool', ['test', 'train_resume'])
def test_tools_refuse_crafted_checkpoint(tool, tmp_path, repo_root, tiny_coco_dir, tiny_coco_classes):
    """tools/test.py CKPT and tools/train.py --resume CKPT on a pickle that would create a file:
    refused with our message (not torch's 'use weights_only=False'), the file never appears."""
    marker = tmp_path / 'PWNED'
    evil = tmp_path / 'iter_4.pth'
    torch.save({'meta': {'iter': 4, 'note': _CreatesFile(str(marker))},
                'state_dict': {'backbone.pos_embed1': torch.zeros(1, 56, 56, 96)}}, evil)
    cfg = tmp_path / 'tiny_mask_rcnn_test.py'
    cfg.write_text(TEST_CONFIG.format(base=str(repo_root / 'configs/detection/mask_rcnn_iformer_s_1x.py'),
                                      data_root=str(tiny_coco_dir) + '/', classes=tiny_coco_classes))
    if tool == 'test':
        cmd = [sys.executable, str(repo_root / 'tools/test.py'), str(cfg), str(evil), '--work-dir', str(tmp_path / 'w')]
    else:
        cmd = _train_cmd(repo_root, cfg, tmp_path / 'w', '--resume', str(evil))
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "refused by safe loading (weights_only=True): it references the Python object 'io.open'" in res.stderr \
        or "object 'builtins.open'" in res.stderr, res.stderr[-2000:]
    assert 'weights_only` set to `False`' not in res.stderr
    assert not marker.exists()


def test_test_tool_preflight_names_missing_test_set_and_checkpoint(tmp_path, repo_root, tiny_coco_dir,
                                                                  tiny_coco_classes):
    """tools/test.py runs the same preflight as train.py: a moved test set or a mistyped
    checkpoint path fails before any model is built, naming the setting and the fix."""
    cfg = tmp_path / 'tiny_mask_rcnn_test.py'
    cfg.write_text(TEST_CONFIG.format(base=str(repo_root / 'configs/detection/mask_rcnn_iformer_s_1x.py'),
                                      data_root=str(tiny_coco_dir) + '/', classes=tiny_coco_classes))
    ckpt = tmp_path / 'iter_2.pth'
    torch.save({'state_dict': {}}, ckpt)
    tool = [sys.executable, str(repo_root / 'tools/test.py'), str(cfg)]

    res = subprocess.run(tool + [str(tmp_path / 'missing.pth')], env=_env(), capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 1
    assert "missing.pth' not found (give the .pth that tools/train.py wrote" in res.stderr
    assert 'Traceback' not in res.stderr

    moved = str(tmp_path / 'nowhere') + '/'
    res = subprocess.run(tool + [str(ckpt), '--cfg-options', f'test_dataloader.dataset.data_root={moved}'],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 1
    assert f"test_dataloader.dataset.data_root={moved!r} does not exist" in res.stderr, res.stderr[-1500:]
    assert 'Traceback' not in res.stderr
