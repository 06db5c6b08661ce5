"""The one checkpoint loader: every accepted layout, position-table resizing, safe loading."""
import pytest
import torch

import iformer_mm  # noqa: F401
from iformer_mm import CheckpointError, InceptionTransformer, load_pretrained
from iformer_mm.pretrained import extract_state_dict, infer_arch, load_checkpoint_file
from iformer_mm.models.iformer import ARCH_SETTINGS, resize_pos_embed

from _golden import TINY_ARCH, make_state_dict


@pytest.fixture(scope='module')
def small_sd(golden_dir):
    return make_state_dict(golden_dir, 'iformer_small')


def _timm(name, path, **kw):
    import timm
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)


def test_timm_training_checkpoint_prefers_ema(small_sd, tmp_path):
    """timm train.py checkpoints: 'state_dict' + 'state_dict_ema', DDP 'module.' prefixes."""
    noisy = {f'module.{k}': v + 1.0 if v.is_floating_point() else v for k, v in small_sd.items()}
    ckpt = {'epoch': 3, 'arch': 'iformer_small', 'state_dict': noisy,
            'state_dict_ema': {f'module.{k}': v for k, v in small_sd.items()}}
    torch.save(ckpt, tmp_path / 'train.pth')
    model = _timm('iformer_small', tmp_path / 'train.pth')
    assert torch.equal(model.blocks3[0].attn.low_mixer.qkv.weight, small_sd['blocks3.0.attn.low_mixer.qkv.weight'])
    sd, notes = extract_state_dict(ckpt, use_ema=False)
    assert notes == ["took 'state_dict'", "stripped 'module.'"]
    assert torch.equal(sd['head.bias'], small_sd['head.bias'] + 1.0)


def test_224_checkpoint_into_384_model_and_back(golden_dir, small_sd, tmp_path):
    torch.save(small_sd, tmp_path / 's224.pth')
    m384 = _timm('iformer_small_384', tmp_path / 's224.pth')
    assert m384.pos_embed1.shape == (1, 96, 96, 96)
    assert torch.allclose(m384.pos_embed2, resize_pos_embed(small_sd['pos_embed2'], (48, 48)))
    torch.save(make_state_dict(golden_dir, 'iformer_small_384'), tmp_path / 's384.pth')
    m224 = _timm('iformer_small', tmp_path / 's384.pth')
    assert m224.pos_embed4.shape == (1, 7, 7, 384)


def test_new_num_classes_reinitialises_head(small_sd, tmp_path):
    torch.save(small_sd, tmp_path / 's.pth')
    model = _timm('iformer_small', tmp_path / 's.pth', num_classes=7)
    assert model.head.weight.shape == (7, 384)
    assert torch.equal(model.norm.weight, small_sd['norm.weight'])


def test_core_load_report_is_exact(golden_dir):
    sd = make_state_dict(golden_dir, 'tiny')
    model = InceptionTransformer(TINY_ARCH, img_size=64, num_classes=10)
    report = load_pretrained(model, sd)
    assert len(report.loaded) == len(sd) and not report.missing and not report.unexpected
    assert 'Loaded 134 tensors' in report.summary()
    headless = InceptionTransformer(TINY_ARCH, img_size=64, num_classes=3)
    with pytest.raises(CheckpointError, match=r'head.weight has shape \[10, 128\] in the checkpoint but \[3, 128\]'):
        load_pretrained(headless, sd)
    report = load_pretrained(headless, sd, reinit_head=True)
    assert sorted(report.dropped) == ['head.bias', 'head.weight'] and 'classifier re-initialised' in report.notes[0]


def test_infer_arch_names_variants(golden_dir, small_sd):
    assert infer_arch(small_sd, ARCH_SETTINGS)['name'] == 'small'
    assert infer_arch(make_state_dict(golden_dir, 'iformer_large'), ARCH_SETTINGS)['name'] == 'large'
    assert infer_arch({'conv.weight': torch.zeros(1)}) is None


def test_corrupt_and_truncated_files_are_named(small_sd, tmp_path):
    path = tmp_path / 'good.pth'
    torch.save(small_sd, path)
    data = path.read_bytes()
    (tmp_path / 'trunc.pth').write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_checkpoint_file(tmp_path / 'trunc.pth')
    (tmp_path / 'junk.pth').write_bytes(b'this is not a checkpoint')
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_checkpoint_file(tmp_path / 'junk.pth')


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    """A pickle whose loading would create a file: refused by weights_only, the side effect never happens."""
    import os
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    torch.save({'state_dict': {'pos_embed1': torch.zeros(1)}, 'x': Evil()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='refused by safe loading'):
        load_checkpoint_file(tmp_path / 'evil.pth')
    model = InceptionTransformer(TINY_ARCH, img_size=64, num_classes=10)
    with pytest.raises(CheckpointError):
        load_pretrained(model, tmp_path / 'evil.pth')
    assert not marker.exists()
