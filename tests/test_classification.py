"""Classification path, fast part: tiny ImageFolder, recipes, fine-tune loading, converters.

The end-to-end runs (train, resume, validate, torchrun, detector round trip) are in
test_classification_e2e.py.
"""
import argparse
import os
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import iformer_mm  # noqa: F401  (registers the timm models)
from iformer_mm.pretrained import CheckpointError
from iformer_mm.datagen.imagefolder_from_coco import DEFAULT_CLASSES, build_imagefolder_from_coco
from iformer_mm.models.iformer import resize_pos_embed

from _golden import make_state_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def train_mod():
    import tools.classification.train as train
    return train


@pytest.fixture(scope='module')
def common_mod():
    from iformer_mm.classification import common as classification
    return classification


@pytest.fixture(scope='module')
def to_mm():
    import tools.model_converters.iformer_to_mm as to_mm
    return to_mm


@pytest.fixture(scope='module')
def to_cls():
    import tools.model_converters.mm_to_iformer as to_cls
    return to_cls


@pytest.fixture(scope='module')
def small_sd(golden_dir):
    """Stands in for the authors' iformer_small.pth (their key layout, 1000 classes)."""
    return make_state_dict(golden_dir, 'iformer_small')


# ---------------------------------------------------------------------------- tiny ImageFolder
def test_imagefolder_from_coco_has_real_crops_per_class(tiny_coco_dir, tiny_coco_classes, tmp_path):
    counts = build_imagefolder_from_coco(tiny_coco_dir, tmp_path, size=48)
    # COCO: the six default classes; another category set (the generated fallback): all of it
    expected = DEFAULT_CLASSES if set(DEFAULT_CLASSES) <= set(tiny_coco_classes) else tiny_coco_classes
    folders = {name.replace(' ', '_') for name in expected}
    for split in ('train', 'val'):
        assert {p.name for p in (tmp_path / split).iterdir()} == folders
        assert all(n >= 1 for n in counts[split].values()), counts
    train = {p.name for p in (tmp_path / 'train').rglob('*.jpg')}
    val = {p.name for p in (tmp_path / 'val').rglob('*.jpg')}
    assert len(train) == sum(counts['train'].values()) and len(val) == sum(counts['val'].values())
    assert not train & val, 'an instance is in both splits'
    stds = []
    for path in sorted((tmp_path / 'val').rglob('*.jpg')):
        with Image.open(path) as img:
            assert img.size == (48, 48) and img.mode == 'RGB'
            stds.append(np.asarray(img, dtype=np.float32).std())
    # a blank or constant crop (std ~0) would mean the box was not cut from the picture; the generated
    # fallback set has flat-coloured shapes, so its crops vary less than COCO's (> 10)
    assert min(stds) > 5, f'a crop is nearly flat (pixel std {min(stds):.1f}): not an image region'
    # deterministic: a second build writes the same files
    again = build_imagefolder_from_coco(tiny_coco_dir, tmp_path / 'again', size=48)
    assert again == counts
    assert {p.name for p in (tmp_path / 'again' / 'val').rglob('*.jpg')} == val


def test_imagefolder_from_coco_rejects_rare_class(tiny_coco_dir, tiny_coco_classes, tmp_path):
    with pytest.raises(ValueError, match="'toaster'"):
        build_imagefolder_from_coco(tiny_coco_dir, tmp_path, classes=(tiny_coco_classes[0], 'toaster'))


# ---------------------------------------------------------------------------- recipes
# The authors' released run arguments (sail-sg/iFormer checkpoint*/iformer_*/args.yaml).
AUTHORS = {
    'iformer_small_in1k': dict(model='iformer_small', img_size=224, epochs=300, cooldown_epochs=10,
                               warmup_epochs=5, lr=1e-3, min_lr=1e-6, weight_decay=0.05, drop_path=0.2,
                               mixup=0.8, cutmix=1.0, clip_grad=None, aug_repeats=0),
    'iformer_base_in1k': dict(model='iformer_base', img_size=224, epochs=300, lr=1e-3, min_lr=1e-5,
                              drop_path=0.4, clip_grad=1.0, aug_repeats=3),
    'iformer_large_in1k': dict(model='iformer_large', img_size=224, epochs=300, lr=1e-3, min_lr=1e-5,
                               drop_path=0.5, clip_grad=1.0, aug_repeats=3),
    'iformer_small_384_ft': dict(model='iformer_small_384', img_size=384, epochs=20, warmup_epochs=0,
                                 lr=1e-5, weight_decay=1e-8, mixup=0.1, cutmix=0.1, drop_path=0.3),
    'iformer_base_384_ft': dict(model='iformer_base_384', img_size=384, epochs=20, lr=5e-6,
                                weight_decay=1e-8, drop_path=0.5, aug_repeats=3),
    'iformer_large_384_ft': dict(model='iformer_large_384', img_size=384, epochs=20, lr=1e-5,
                                 weight_decay=1e-8, drop_path=0.6, aug_repeats=3),
}


@pytest.mark.parametrize('recipe', sorted(AUTHORS))
def test_recipe_holds_the_authors_numbers(train_mod, recipe):
    args = train_mod.parse_args(['DATA', '--config', str(REPO / 'configs/classification' / f'{recipe}.yaml')])
    common = dict(opt='adamw', sched='cosine', aa='rand-m9-mstd0.5-inc1', smoothing=0.1, reprob=0.25)
    for key, want in {**common, **AUTHORS[recipe]}.items():
        assert getattr(args, key) == want, f'{recipe}: {key} = {getattr(args, key)!r}, authors: {want!r}'


def test_command_line_overrides_recipe_and_typos_fail(train_mod, tmp_path):
    cfg = str(REPO / 'configs/classification/iformer_base_in1k.yaml')
    args = train_mod.parse_args(['DATA', '-c', cfg, '--lr', '2e-3', '--drop-path', '0.1', '-b', '32'])
    assert (args.lr, args.drop_path, args.batch_size, args.aug_repeats) == (2e-3, 0.1, 32, 3)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('drop_pth: 0.2\n')
    with pytest.raises(SystemExit):
        train_mod.parse_args(['DATA', '-c', str(bad)])


# ---------------------------------------------------------------------------- fine-tune loading
def test_finetune_224_to_384_with_new_classes(common_mod, small_sd, tmp_path, caplog):
    """The authors' 224 / 1000-class weights start a 384 / 10-class model: tables resized, head new."""
    import timm
    torch.save(small_sd, tmp_path / 'iformer_small.pth')
    model = timm.create_model('iformer_small_384', num_classes=10)
    fresh_head = model.head.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        common_mod.load_initial_weights(model, str(tmp_path / 'iformer_small.pth'))
    assert 'Classifier head re-initialised' in caplog.text and '1000 classes' in caplog.text
    assert 'resized pos_embed1: [1, 56, 56, 96] -> [1, 96, 96, 96]' in caplog.text
    sd = model.state_dict()
    assert torch.equal(sd['head.weight'], fresh_head)
    assert torch.allclose(sd['pos_embed3'], resize_pos_embed(small_sd['pos_embed3'], (24, 24)))
    for k, v in small_sd.items():
        if not k.startswith(('head.', 'pos_embed')):
            assert torch.equal(sd[k], v), k


def test_finetune_same_classes_keeps_head(common_mod, small_sd, tmp_path, caplog):
    import timm
    torch.save({'state_dict': small_sd, 'epoch': 3}, tmp_path / 'ours.pth')
    model = timm.create_model('iformer_small', num_classes=1000)
    with caplog.at_level(logging.INFO):
        common_mod.load_initial_weights(model, str(tmp_path / 'ours.pth'))
    assert 're-initialised' not in caplog.text
    assert torch.equal(model.head.weight, small_sd['head.weight'])


# ---------------------------------------------------------------------------- validate
@pytest.fixture(scope='module')
def tiny_folder(tiny_coco_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('if')
    build_imagefolder_from_coco(tiny_coco_dir, root, size=64)
    return root


def test_validate_authors_checkpoint_with_model_crop(tiny_folder, small_sd, tmp_path, capsys):
    """The authors' plain 1000-class state_dict, strictly loaded, evaluated at 224 with crop_pct 0.9."""
    torch.save(small_sd, tmp_path / 'iformer_small.pth')
    import tools.classification.validate as validate
    res = validate.main([str(tiny_folder), '--model', 'iformer_small', '--checkpoint',
                         str(tmp_path / 'iformer_small.pth'), '-j', '0', '-b', '6'])
    n_val = len(list((tiny_folder / 'val').rglob('*.jpg')))
    assert (res['num_classes'], res['img_size'], res['crop_pct'], res['images']) == (1000, 224, 0.9, n_val)
    assert 0 <= res['top1'] <= res['top5'] <= 100 and res['loss'] > 0
    printed = capsys.readouterr().out
    assert 'top-1' in printed and 'top-5' in printed


def test_validate_labels_a_partial_val_split_by_the_checkpoint_classes(tiny_folder, tmp_path):
    """A val split holding only 'toilet' (the generated fallback data: its last class) must be
    scored against the checkpoint's 'toilet' output, not against output 0 as a fresh ImageFolder
    would number it."""
    import shutil

    import timm
    classes = sorted(p.name for p in (tiny_folder / 'train').iterdir())
    class_to_idx = {c: i for i, c in enumerate(classes)}
    only = 'toilet' if 'toilet' in classes else classes[-1]
    assert class_to_idx[only] > 0
    model = timm.create_model('iformer_small', img_size=64, num_classes=len(classes))
    with torch.no_grad():  # a classifier that always answers 'toilet'
        model.head.weight.zero_()
        model.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(class_to_idx[only]), len(classes)) * 10.)
    torch.save(dict(state_dict=model.state_dict(), model='iformer_small', img_size=64,
                    class_to_idx=class_to_idx, epoch=0), tmp_path / 'last.pth')
    shutil.copytree(tiny_folder / 'val' / only, tmp_path / 'partial' / 'val' / only)
    import tools.classification.validate as validate
    res = validate.main([str(tmp_path / 'partial'), '--checkpoint', str(tmp_path / 'last.pth'), '-j', '0'])
    assert res['images'] == len(list((tiny_folder / 'val' / only).glob('*.jpg'))) and res['top1'] == 100.0


def test_crop_pct_follows_the_authors_rule(common_mod):
    from types import SimpleNamespace

    from timm.models import get_pretrained_cfg

    def model(name):  # resolve_crop_pct reads only the pretrained cfg
        return SimpleNamespace(pretrained_cfg=get_pretrained_cfg(name).to_dict())
    assert common_mod.resolve_crop_pct(model('iformer_small_384'), 384, None) == 1.0
    assert common_mod.resolve_crop_pct(model('iformer_small'), 384, None) == 1.0  # built at 384
    assert common_mod.resolve_crop_pct(model('iformer_small'), 224, None) == 0.9
    assert common_mod.resolve_crop_pct(model('iformer_small'), 224, 0.95) == 0.95


def test_validate_refuses_another_variant(tiny_folder, golden_dir, tmp_path):
    torch.save(make_state_dict(golden_dir, 'iformer_base'), tmp_path / 'iformer_base.pth')
    import tools.classification.validate as validate
    with pytest.raises(CheckpointError, match='iFormer-base'):
        validate.main([str(tiny_folder), '--model', 'iformer_small',
                       '--checkpoint', str(tmp_path / 'iformer_base.pth')])


# ---------------------------------------------------------------------------- converters
def _backbone(checkpoint, img_size=224):
    from iformer_mm import IFormer
    model = IFormer(arch='small', img_size=img_size, init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
    model.init_weights()
    return model


@pytest.mark.parametrize('prefix', ['', 'backbone.'])
def test_authors_checkpoint_to_mm_backbone(to_mm, small_sd, tmp_path, prefix):
    torch.save(small_sd, tmp_path / 'iformer_small.pth')
    out = tmp_path / 'bb.pth'
    info = to_mm.main([str(tmp_path / 'iformer_small.pth'), str(out), '--prefix', prefix])
    assert info['arch'] == 'small'
    assert set(info['dropped']) == {'head.weight', 'head.bias', 'norm.weight', 'norm.bias'}
    sd = torch.load(out, weights_only=True)  # safe to load
    assert all(k.startswith(prefix) for k in sd) and len(sd) == len(small_sd) - 4
    model = _backbone(out)
    report = model._pretrained_report
    assert all(k.startswith('norm') for k in report.missing), report.missing  # only the new output norms
    for k, v in model.state_dict().items():
        if not k.startswith('norm'):
            assert torch.equal(v, small_sd[k]), k


def test_ema_weights_are_converted_by_default(to_mm, small_sd, tmp_path):
    raw = {k: v + 1 if v.is_floating_point() else v for k, v in small_sd.items()}
    torch.save({'state_dict': raw, 'state_dict_ema': small_sd, 'epoch': 5}, tmp_path / 'ckpt.pth')
    to_mm.main([str(tmp_path / 'ckpt.pth'), str(tmp_path / 'ema.pth')])
    to_mm.main([str(tmp_path / 'ckpt.pth'), str(tmp_path / 'raw.pth'), '--no-ema'])
    key = 'blocks3.2.attn.low_mixer.qkv.weight'
    assert torch.equal(torch.load(tmp_path / 'ema.pth', weights_only=True)[key], small_sd[key])
    assert torch.equal(torch.load(tmp_path / 'raw.pth', weights_only=True)[key], raw[key])


def test_pickled_checkpoint_needs_explicit_trust(to_mm, small_sd, tmp_path):
    """A timm train.py checkpoint pickles argparse.Namespace: refused unless the user vouches for it."""
    torch.save({'state_dict': small_sd, 'args': argparse.Namespace(lr=1e-3)}, tmp_path / 'timm.pth')
    with pytest.raises(CheckpointError, match='safe loading'):
        to_mm.main([str(tmp_path / 'timm.pth'), str(tmp_path / 'out.pth')])
    to_mm.main([str(tmp_path / 'timm.pth'), str(tmp_path / 'out.pth'), '--trust-pickle'])
    assert len(torch.load(tmp_path / 'out.pth', weights_only=True)) == len(small_sd) - 4
    # the flag widens an allow-list; it never unpickles code
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    torch.save({'state_dict': small_sd, 'args': Evil()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='refused by safe loading'):
        to_mm.main([str(tmp_path / 'evil.pth'), str(tmp_path / 'out2.pth'), '--trust-pickle'])
    assert not marker.exists()


def test_wrong_file_is_refused_by_converter(to_mm, tmp_path):
    torch.save({'conv.weight': torch.zeros(3, 3)}, tmp_path / 'resnet.pth')
    with pytest.raises(CheckpointError, match='not an iFormer'):
        to_mm.main([str(tmp_path / 'resnet.pth'), str(tmp_path / 'out.pth')])


def test_mm_checkpoint_back_to_classifier(to_cls, common_mod, small_sd, tmp_path, caplog):
    """Reverse: a detector's backbone (with mm output norms and other modules) starts a classifier."""
    det = {f'backbone.{k}': v for k, v in small_sd.items() if not k.startswith(('head.', 'norm.'))}
    det.update({f'backbone.norm{i}.weight': torch.ones(c) for i, c in enumerate((96, 192, 320, 384))})
    det['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 96, 1, 1)
    torch.save({'meta': {'epoch': 12}, 'state_dict': det}, tmp_path / 'det.pth')
    info = to_cls.main([str(tmp_path / 'det.pth'), str(tmp_path / 'cls.pth')])
    assert info == dict(tensors=len(small_sd) - 4, dropped=4)
    import timm
    model = timm.create_model('iformer_small', num_classes=6)
    with caplog.at_level(logging.INFO):
        common_mod.load_initial_weights(model, str(tmp_path / 'cls.pth'))
    assert 'Classifier head re-initialised' in caplog.text and 'no final norm' in caplog.text
    assert torch.equal(model.blocks4[2].mlp.fc2.weight, small_sd['blocks4.2.mlp.fc2.weight'])


# ---------------------------------------------------------------------------- AMP
def test_bf16_autocast_training_step():
    """What train.py --amp does on CPU: forward under bf16 autocast, fp32 loss, backward
    (float32 gradients for float32 weights)."""
    import timm
    model = timm.create_model('iformer_small', img_size=64, num_classes=6)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 5])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    loss = torch.nn.functional.cross_entropy(out.float(), y)
    loss.backward()
    assert model.blocks1[0].mlp.fc2.weight.grad.dtype == torch.float32
    assert torch.isfinite(model.patch_embed.proj1.weight.grad).all()
