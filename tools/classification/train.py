#!/usr/bin/env python3
"""Train or fine-tune an iFormer classifier on an ImageFolder (ImageNet-style), timm conventions.

Data layout: ``DATA_DIR/train/<class>/*.jpg`` and ``DATA_DIR/val/<class>/*.jpg``.

Examples::

    # the authors' 300-epoch iFormer-S recipe on 8 processes (global batch 1024)
    torchrun --nproc_per_node 8 tools/classification/train.py /data/imagenet \\
        --config configs/classification/iformer_small_in1k.yaml --output work_dirs/cls
    # 384 fine-tune from a 224 checkpoint (position tables are resized on load)
    torchrun --nproc_per_node 8 tools/classification/train.py /data/imagenet \\
        --config configs/classification/iformer_small_384_ft.yaml \\
        --initial-checkpoint iformer_small.pth --output work_dirs/cls384
    # resume an interrupted run (continues at the epoch after the saved one)
    python tools/classification/train.py /data/imagenet --config RECIPE.yaml \\
        --resume work_dirs/cls/iformer_small/last.pth --output work_dirs/cls

A recipe (``--config``) sets the defaults; any option given on the command line wins.
Checkpoints (``last.pth``, ``best.pth``) hold plain tensors and numbers only, so
``torch.load(path, weights_only=True)`` reads them; ``state_dict`` is the model,
``state_dict_ema`` the EMA (when enabled), which :mod:`iformer_mm.pretrained` prefers.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from datetime import timedelta
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from torch import nn

from iformer_mm.classification import common as C
from iformer_mm.cli import main_entry
from iformer_mm.engine.device import teardown_distributed
from iformer_mm.pretrained import load_checkpoint_file, load_state_dict_into

_logger = logging.getLogger('train')
_SCHED_KEYS = ('sched', 'epochs', 'warmup_epochs', 'cooldown_epochs', 'min_lr', 'warmup_lr', 'lr',
               'lr_base', 'lr_base_size', 'sched_on_epochs', 'batch_size', 'max_updates_per_epoch')


# ---------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='iFormer ImageNet-style training (timm components)',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('data_dir', nargs='?', default=None, help='ImageFolder root with train/ and val/')
    p.add_argument('-c', '--config', default='', help='YAML recipe; its keys are option names (dest form)')
    p.add_argument('--train-split', default='train')
    p.add_argument('--val-split', default='val', help="'' to skip validation")

    g = p.add_argument_group('model')
    g.add_argument('--model', default='iformer_small', help='timm name: iformer_{small,base,large}[_384]')
    g.add_argument('--num-classes', type=int, default=None,
                   help='classifier outputs (default: number of class folders in the train split)')
    g.add_argument('--img-size', type=int, default=None,
                   help="train/eval resolution and position-table size (default: the model's, 224 or 384)")
    g.add_argument('--initial-checkpoint', default='',
                   help="start from these weights (authors' .pth, ours, a converted backbone)")
    g.add_argument('--no-initial-ema', action='store_true',
                   help='with --initial-checkpoint: take the raw weights even if EMA weights exist')
    g.add_argument('--resume', default='', help='continue a run from its last.pth')
    g.add_argument('--no-resume-opt', action='store_true', help='resume weights only (fresh optimizer)')
    g.add_argument('--drop', type=float, default=0.0, help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, default=0.1, help='stochastic depth rate')
    g.add_argument('--grad-checkpointing', action='store_true')

    g = p.add_argument_group('batch, optimizer, schedule')
    g.add_argument('-b', '--batch-size', type=int, default=128, help='per process')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None)
    g.add_argument('--opt', default='adamw')
    g.add_argument('--opt-eps', type=float, default=1e-8)
    g.add_argument('--opt-betas', type=float, nargs='+', default=None)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=0.05)
    g.add_argument('--layer-decay', type=float, default=None, help='layer-wise lr decay (fine-tuning)')
    g.add_argument('--clip-grad', type=float, default=None, help='gradient clipping value (off: None)')
    g.add_argument('--clip-mode', default='norm', choices=['norm', 'value', 'agc'])
    g.add_argument('--lr', type=float, default=None, help='absolute lr; default: lr_base * global batch / lr_base_size')
    g.add_argument('--lr-base', type=float, default=1e-3)
    g.add_argument('--lr-base-size', type=int, default=1024)
    g.add_argument('--sched', default='cosine')
    g.add_argument('--sched-on-epochs', action='store_true', help='step the schedule per epoch, not per update')
    g.add_argument('--epochs', type=int, default=300, help='epochs before cool-down')
    g.add_argument('--warmup-epochs', type=int, default=5)
    g.add_argument('--cooldown-epochs', type=int, default=0,
                   help='epochs at min_lr after --epochs (timm >= 1.0 default 0; the authors\' recipes set 10)')
    g.add_argument('--warmup-lr', type=float, default=1e-6)
    g.add_argument('--min-lr', type=float, default=1e-5)

    g = p.add_argument_group('augmentation and regularisation')
    g.add_argument('--no-aug', action='store_true', help='resize + centre crop only (no train augmentation)')
    g.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0])
    g.add_argument('--ratio', type=float, nargs=2, default=[3. / 4., 4. / 3.])
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--aa', default='rand-m9-mstd0.5-inc1', help="RandAugment policy; 'none' to disable")
    g.add_argument('--train-interpolation', default='bicubic')
    g.add_argument('--reprob', type=float, default=0.25, help='random erasing probability')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--aug-repeats', type=int, default=0, help='repeated augmentation (distributed runs)')
    g.add_argument('--mixup', type=float, default=0.8, help='mixup alpha (0 off)')
    g.add_argument('--cutmix', type=float, default=1.0, help='cutmix alpha (0 off)')
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch')
    g.add_argument('--mixup-off-epoch', type=int, default=0, help='turn mixup off from this epoch (0 never)')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true')

    g = p.add_argument_group('run')
    g.add_argument('--output', default='work_dirs/classification', help='output root')
    g.add_argument('--experiment', default='', help='sub-folder name (default: the model name)')
    g.add_argument('--device', default=None, help="'cuda' when available, else 'cpu'")
    g.add_argument('--amp', action='store_true', help='mixed precision (bf16 autocast on CPU)')
    g.add_argument('--amp-dtype', default=None, choices=['float16', 'bfloat16'],
                   help='default: float16 on CUDA, bfloat16 elsewhere')
    g.add_argument('-j', '--workers', type=int, default=4, help='data loader processes per rank')
    g.add_argument('--pin-mem', action='store_true')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--log-interval', type=int, default=50, help='updates between progress lines')
    g.add_argument('--eval-metric', default='top1', choices=['top1', 'top5', 'loss'])
    g.add_argument('--max-updates-per-epoch', type=int, default=0,
                   help='cut each epoch short (smoke tests and throughput measurement)')
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse with the recipe as defaults: YAML < command line."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    known, _ = pre.parse_known_args(argv)
    if known.config:
        with open(known.config) as f:
            recipe = yaml.safe_load(f) or {}
        dests = {a.dest for a in parser._actions}
        unknown = sorted(set(recipe) - dests)
        if unknown:
            parser.error(f'{known.config}: unknown keys {unknown}; recipe keys are option names with '
                         f"underscores, e.g. 'drop_path' for --drop-path")
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error('DATA_DIR is required (the ImageFolder root with train/ and val/)')
    return args


# ---------------------------------------------------------------------------- helpers
def _format_eta(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


def _save(state: Dict[str, Any], path: str) -> None:
    """Write atomically so an interrupted save never leaves a truncated last.pth."""
    tmp = path + '.tmp'
    torch.save(state, tmp)
    os.replace(tmp, path)


class Averager:
    def __init__(self) -> None:
        self.sum, self.count, self.val = 0.0, 0, 0.0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


# ---------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)

    from timm.data import Mixup, create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.models import create_model
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, NativeScaler, dispatch_clip_grad, random_seed
    from timm.utils.distributed import init_distributed_device_so

    device_name = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    dist_info = init_distributed_device_so(device_name)
    distributed, rank, world = dist_info['distributed'], dist_info['global_rank'], dist_info['world_size']
    device = torch.device(dist_info['device'])
    exp_dir = os.path.join(args.output, args.experiment or args.model)
    if rank == 0:
        os.makedirs(exp_dir, exist_ok=True)
    C.setup_logging(os.path.join(exp_dir, 'train.log') if rank == 0 else None, rank)
    _logger.info(f'Process {rank}/{world} on {device} (distributed={distributed}, '
                 f'threads={torch.get_num_threads()}); output {exp_dir}')
    random_seed(args.seed, rank)

    # ---------------- data (class count first: it sizes the classifier)
    train_set = create_dataset('', root=args.data_dir, split=args.train_split, is_training=True,
                               batch_size=args.batch_size)
    classes = getattr(train_set.reader, 'class_to_idx', {})
    num_classes = args.num_classes or len(classes)
    if not num_classes:
        raise SystemExit(f'no class folders found in {args.data_dir}/{args.train_split}; '
                         'expected DATA_DIR/train/<class>/<image>')
    C.check_dataset_classes(train_set, num_classes, f'{args.data_dir}/{args.train_split}')

    # ---------------- model
    model_kwargs: Dict[str, Any] = dict(num_classes=num_classes, drop_rate=args.drop,
                                        drop_path_rate=args.drop_path)
    if args.img_size:
        model_kwargs['img_size'] = args.img_size
    model = create_model(args.model, **model_kwargs)
    img_size = model.img_size[0]
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    _logger.info(f'Model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
                 f'{num_classes} classes, img_size {img_size}, drop_path {args.drop_path}')
    if args.initial_checkpoint and not args.resume:
        C.load_initial_weights(model, args.initial_checkpoint, use_ema=not args.no_initial_ema, log=_logger)
    model.to(device)

    global_batch = args.batch_size * world
    lr = args.lr if args.lr is not None else args.lr_base * global_batch / args.lr_base_size
    _logger.info(f'lr {lr:.3g} (global batch {global_batch}'
                 + (')' if args.lr is not None else f' = {args.lr_base:g} x {global_batch}/{args.lr_base_size})'))
    if args.min_lr > lr:
        _logger.warning(f'--min-lr {args.min_lr:g} is above the lr {lr:.3g}: the cosine schedule would '
                        'rise instead of decay; lower --min-lr or set --lr')
    opt_kwargs: Dict[str, Any] = dict(eps=args.opt_eps)
    if args.opt_betas:
        opt_kwargs['betas'] = tuple(args.opt_betas)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, layer_decay=args.layer_decay, **opt_kwargs)

    amp_dtype = getattr(torch, args.amp_dtype or ('float16' if device.type == 'cuda' else 'bfloat16'))
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp else nullcontext
    # A loss scaler is only needed for float16 (bf16 has float32's range).
    loss_scaler = NativeScaler(device=device.type) if args.amp and amp_dtype == torch.float16 else None
    if args.amp:
        _logger.info(f'AMP on: autocast {amp_dtype} on {device.type}'
                     + (', loss scaling' if loss_scaler else ''))

    # ---------------- resume
    start_epoch, best_metric, best_epoch, resume_state = 0, None, None, None
    if args.resume:
        resume_state = load_checkpoint_file(args.resume)
        if not isinstance(resume_state, dict) or 'state_dict' not in resume_state or 'epoch' not in resume_state:
            raise SystemExit(f'{args.resume} is not a train.py checkpoint (no state_dict/epoch); '
                             'to start from plain weights use --initial-checkpoint')
        load_state_dict_into(model, resume_state, strict=True, use_ema=False)
        if not args.no_resume_opt:
            optimizer.load_state_dict(resume_state['optimizer'])
            if loss_scaler is not None and NativeScaler.state_dict_key in resume_state:
                loss_scaler.load_state_dict(resume_state[NativeScaler.state_dict_key])
        start_epoch = int(resume_state['epoch']) + 1
        best_metric, best_epoch = resume_state.get('best_metric'), resume_state.get('best_epoch')
        _logger.info(f'Resumed from {args.resume}: finished epoch {resume_state["epoch"]}, '
                     f'continuing at epoch {start_epoch}')

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup, device=device)
        if resume_state is not None and 'state_dict_ema' in resume_state:
            load_state_dict_into(model_ema.module, resume_state['state_dict_ema'], strict=True)

    ddp_model: nn.Module = model
    if distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)

    # ---------------- loaders
    # eval settings (mean/std, interpolation) from the model's pretrained cfg; train interpolation is ours
    data_cfg = resolve_data_config(dict(input_size=(3, img_size, img_size)), model=model)
    aug_repeats = args.aug_repeats
    if aug_repeats and not distributed:
        _logger.warning(f'--aug-repeats {aug_repeats} needs a distributed run (torchrun); disabled here')
        aug_repeats = 0
    mixup_active = args.mixup > 0 or args.cutmix > 0
    if mixup_active and args.batch_size % 2:
        raise SystemExit(f'mixup/cutmix need an even batch size per process, got -b {args.batch_size}')
    if len(train_set) < args.batch_size * world:
        raise SystemExit(f'the train split has {len(train_set)} images, fewer than one global batch '
                         f'({args.batch_size} x {world}); lower -b')
    train_loader = create_loader(
        train_set, input_size=data_cfg['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, color_jitter=args.color_jitter,
        auto_augment=None if args.aa in (None, '', 'none') else args.aa, num_aug_repeats=aug_repeats,
        interpolation=args.train_interpolation, mean=data_cfg['mean'], std=data_cfg['std'],
        num_workers=args.workers, distributed=distributed, pin_memory=args.pin_mem, device=device,
        use_prefetcher=False)
    if len(train_loader) == 0:
        raise SystemExit(
            f'the train loader is empty ({len(train_set)} images, batch {args.batch_size} x {world}'
            + (f', --aug-repeats {aug_repeats}: timm\'s RepeatAugSampler uses whole multiples of 256 '
               'images per epoch; use --aug-repeats 0 for small data' if aug_repeats else '') + ')')
    val_loader = None
    if args.val_split:
        # label val images with the train split's map (a val split may lack some classes)
        val_set = create_dataset('', root=args.data_dir, split=args.val_split, is_training=False,
                                 class_map=classes or '')
        C.check_dataset_classes(val_set, num_classes, f'{args.data_dir}/{args.val_split}')
        crop_pct = C.resolve_crop_pct(model, img_size, None)
        val_loader = create_loader(
            val_set, input_size=data_cfg['input_size'], batch_size=args.validation_batch_size or args.batch_size,
            is_training=False, interpolation=data_cfg['interpolation'], mean=data_cfg['mean'],
            std=data_cfg['std'], num_workers=args.workers, distributed=distributed, crop_pct=crop_pct,
            pin_memory=args.pin_mem, device=device, use_prefetcher=False)

    mixup_fn = None
    if mixup_active:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                         switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=num_classes)
        train_loss_fn: nn.Module = SoftTargetCrossEntropy()  # smoothing is inside the mixed targets
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()

    # ---------------- schedule
    updates_per_epoch = len(train_loader)
    if args.max_updates_per_epoch:
        updates_per_epoch = min(updates_per_epoch, args.max_updates_per_epoch)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, cooldown_epochs=args.cooldown_epochs,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        step_on_epochs=args.sched_on_epochs, updates_per_epoch=updates_per_epoch)
    if resume_state is not None and not args.no_resume_opt and 'scheduler' in resume_state:
        # The schedule is a function of its arguments and the update count: restore the saved
        # state only when those arguments are unchanged, so a resume with e.g. a longer --epochs
        # follows the new schedule from the current update on.
        old_args = resume_state.get('args', {})
        changed = {k: (old_args.get(k), getattr(args, k)) for k in _SCHED_KEYS
                   if k in old_args and old_args.get(k) != C.plain(getattr(args, k))}
        if changed:
            _logger.info(f'Schedule arguments changed since the checkpoint ({changed}): the lr follows '
                         'the new schedule from the resumed update on')
        else:
            lr_scheduler.load_state_dict(resume_state['scheduler'])
    if start_epoch > 0:
        if args.sched_on_epochs:
            lr_scheduler.step(start_epoch)
        else:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
    if start_epoch >= num_epochs:
        _logger.info(f'Nothing to do: the checkpoint finished epoch {start_epoch - 1} of {num_epochs} '
                     '(raise --epochs to train longer)')
    _logger.info(f'Training {num_epochs} epochs ({args.epochs} + {num_epochs - args.epochs} cool-down), '
                 f'{updates_per_epoch} updates/epoch, {len(train_set)} train images, '
                 f'{len(val_loader.dataset) if val_loader else 0} val images')

    # ---------------- loop
    history: List[Dict[str, Any]] = []
    run_start, updates_done = time.perf_counter(), 0
    total_updates = (num_epochs - start_epoch) * updates_per_epoch
    for epoch in range(start_epoch, num_epochs):
        if hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        ddp_model.train()
        loss_avg, batch_time = Averager(), Averager()
        seen = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, samples (this rank)
        epoch_start = last = time.perf_counter()
        for i, (x, y) in enumerate(train_loader):
            if i >= updates_per_epoch:
                break
            x, y = x.to(device), y.to(device)
            if mixup_fn is not None:
                x, y = mixup_fn(x, y)
            with autocast():
                out = ddp_model(x)
                loss = train_loss_fn(out.float(), y)
            if not math.isfinite(loss.item()):
                raise SystemExit(f'loss is {loss.item()} at epoch {epoch} step {i}; lower --lr or use --clip-grad')
            optimizer.zero_grad(set_to_none=True)
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=model.parameters())
            else:
                loss.backward()
                if args.clip_grad is not None:
                    dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
                optimizer.step()
            num_updates = epoch * updates_per_epoch + i + 1
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            lr_scheduler.step_update(num_updates=num_updates)
            now = time.perf_counter()
            batch_time.update(now - last)
            last = now
            updates_done += 1
            loss_avg.update(loss.item(), x.shape[0])
            seen += torch.tensor([loss.item() * x.shape[0], x.shape[0]], dtype=torch.float64, device=device)
            if (i + 1) % args.log_interval == 0 or i + 1 == updates_per_epoch:
                per_update = (now - run_start) / updates_done
                _logger.info(
                    f'Train: {epoch} [{i + 1:>4d}/{updates_per_epoch} ({100 * (i + 1) / updates_per_epoch:3.0f}%)]  '
                    f'loss {loss_avg.val:.4f} ({loss_avg.avg:.4f})  lr {optimizer.param_groups[0]["lr"]:.3e}  '
                    f'{global_batch / batch_time.avg:.1f} img/s ({global_batch / batch_time.val:.1f} now)  '
                    f'ETA epoch {_format_eta(per_update * (updates_per_epoch - i - 1))} '
                    f'total {_format_eta(per_update * (total_updates - updates_done))}')
        if distributed:
            torch.distributed.all_reduce(seen)
        train_time = time.perf_counter() - epoch_start
        record: Dict[str, Any] = dict(epoch=epoch, train_loss=seen[0].item() / max(seen[1].item(), 1),
                                      train_samples=int(seen[1].item()), world_size=world,
                                      train_img_per_s=seen[1].item() / train_time,
                                      lr=optimizer.param_groups[0]['lr'])

        if val_loader is not None:
            metrics = C.evaluate(model, val_loader, device, autocast, distributed=distributed,
                                 progress=rank == 0)
            record.update({f'val_{k}': v for k, v in metrics.items() if k != 'topk'})
            if model_ema is not None:
                ema_metrics = C.evaluate(model_ema.module, val_loader, device, autocast,
                                         distributed=distributed, progress=rank == 0)
                record.update({f'ema_val_{k}': v for k, v in ema_metrics.items() if k != 'topk'})
            metric = metrics[args.eval_metric]
        else:
            metric = -record['train_loss']
        better = best_metric is None or (metric < best_metric if args.eval_metric == 'loss' else metric > best_metric)
        if better:
            best_metric, best_epoch = metric, epoch
        if args.sched_on_epochs:
            lr_scheduler.step(epoch + 1, metric)

        msg = (f'Epoch {epoch}/{num_epochs - 1} done in {train_time:.1f}s: train loss {record["train_loss"]:.4f}, '
               f'{record["train_img_per_s"]:.1f} img/s')
        if val_loader is not None:
            msg += (f'; val top-1 {record["val_top1"]:.2f} top-5 {record["val_top5"]:.2f} '
                    f'loss {record["val_loss"]:.4f}')
            if model_ema is not None:
                msg += f' (EMA top-1 {record["ema_val_top1"]:.2f})'
        if val_loader is not None:
            msg += f'; best {args.eval_metric} {best_metric:.4f} @ epoch {best_epoch}'
        else:  # no val split: best = lowest train loss
            msg += f'; best train loss {-best_metric:.4f} @ epoch {best_epoch}'
        _logger.info(msg)
        history.append(record)

        if rank == 0:
            state: Dict[str, Any] = dict(
                epoch=epoch, model=args.model, num_classes=num_classes, img_size=img_size, world_size=world,
                num_updates=(epoch + 1) * updates_per_epoch,
                state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=C.plain(lr_scheduler.state_dict()), metric=float(metric),
                best_metric=float(best_metric), best_epoch=int(best_epoch),
                class_to_idx=C.plain(classes), args=C.plain(vars(args)))
            if model_ema is not None:
                state['state_dict_ema'] = model_ema.module.state_dict()
            if loss_scaler is not None:
                state[NativeScaler.state_dict_key] = loss_scaler.state_dict()
            _save(state, os.path.join(exp_dir, 'last.pth'))
            if better:
                _save(state, os.path.join(exp_dir, 'best.pth'))
            with open(os.path.join(exp_dir, 'log.jsonl'), 'a') as f:
                f.write(json.dumps(record) + '\n')
            _logger.info(f'Saved {exp_dir}/last.pth' + (' and best.pth' if better else ''))

    if distributed:
        torch.distributed.barrier()
        teardown_distributed()  # then main_entry ends the process (iformer_mm/engine/device.py)
    return dict(history=history, best_metric=best_metric, best_epoch=best_epoch, output=exp_dir)


if __name__ == '__main__':
    main_entry(main)
