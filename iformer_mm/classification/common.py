"""What ``tools/classification/train.py`` and ``validate.py`` share: logging, weights, data checks,
top-k evaluation. In the package (not beside the scripts) so the tools and the tests import it
normally."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..models import timm_models  # noqa: F401  (registers the timm models iformer_*)
from ..pretrained import (CheckpointError, extract_state_dict, load_checkpoint_file,
                                   load_pretrained)

_logger = logging.getLogger('train')


def setup_logging(log_file: Optional[str] = None, rank: int = 0) -> None:
    """Log to stdout (rank 0 only, others warn and up) and optionally to ``log_file``."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s' if rank == 0
                            else f'[rank {rank}] %(asctime)s %(levelname)s %(message)s', '%H:%M:%S')
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if log_file and rank == 0:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)


def checkpoint_num_classes(sd: Dict[str, torch.Tensor]) -> Optional[int]:
    """Classes of the classifier in a state_dict, ``None`` if it has none."""
    head = sd.get('head.weight')
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def read_weights(path: str, use_ema: bool = True) -> Tuple[Dict[str, torch.Tensor], List[str], Any]:
    """Read a checkpoint with the package loader: ``(state_dict, notes, raw object)``."""
    obj = load_checkpoint_file(path)
    sd, notes = extract_state_dict(obj, use_ema=use_ema)
    return sd, notes, obj


def load_initial_weights(model: nn.Module, path: str, use_ema: bool = True,
                         log: logging.Logger = _logger) -> None:
    """Start ``model`` from a checkpoint (fine-tuning): the authors' .pth, ours, or a converted backbone.

    Position tables are resized by the loader when the resolution differs (224 -> 384). A
    classifier of another size (or none) is not loaded: the head keeps its fresh init, and a
    log line says so. Every other weight must be found (strict).
    """
    sd, notes, _ = read_weights(path, use_ema=use_ema)
    allowed: List[str] = []
    ckpt_classes = checkpoint_num_classes(sd)
    model_classes = getattr(model, 'num_classes', None)
    if ckpt_classes != model_classes:
        sd = {k: v for k, v in sd.items() if not k.startswith('head.')}
        allowed.append(r'^head\.')
        log.info(f'Classifier head re-initialised: {path} has '
                 f'{ckpt_classes if ckpt_classes is not None else "no"} classes, the model has '
                 f'{model_classes} (--num-classes); only the head starts from scratch.')
    if 'norm.weight' not in sd and 'norm.weight' in model.state_dict():
        allowed.append(r'^norm\.')
        log.info(f'{path} has no final norm (a backbone-only checkpoint): norm starts from its init.')
    report = load_pretrained(model, sd, strict=True, use_ema=use_ema, log=log, allowed_missing=allowed)
    log.info(f'Initial weights from {path} ({"; ".join(notes) or "plain state_dict"}): '
             f'{len(report.loaded)} tensors loaded, {len(report.resized)} position tables resized.')


def resolve_crop_pct(model: nn.Module, img_size: int, crop_pct: Optional[float]) -> float:
    """Evaluation crop: the model's pretrained cfg at its own size, else the authors' rule.

    The authors evaluate with crop_pct 0.9 at 224 and 1.0 at 384; a model built at another
    resolution than its pretrained cfg follows that rule (1.0 from 384 up).
    """
    if crop_pct is not None:
        return crop_pct
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('input_size', (0, 0, 0))[-1] == img_size and cfg.get('crop_pct'):
        return float(cfg['crop_pct'])
    return 1.0 if img_size >= 384 else 0.9


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> List[torch.Tensor]:
    """Number of correct predictions (not %) for each k in ``topk``."""
    maxk = max(topk)
    pred = output.topk(maxk, dim=1).indices
    correct = pred.eq(target[:, None])
    return [correct[:, :k].any(dim=1).sum().float() for k in topk]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, autocast: Any,
             log_interval: int = 0, log: logging.Logger = _logger,
             distributed: bool = False, progress: bool = False) -> Dict[str, float]:
    """Top-1, top-5 (%) and cross-entropy over ``loader``; sums are all-reduced when distributed.

    ``progress`` draws a tqdm bar with ETA (on stderr; pass it on the main process only).
    """
    from tqdm import tqdm
    model.eval()
    num_classes = model.num_classes
    topk = (1, min(5, num_classes))
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, top1, top5, n
    criterion = nn.CrossEntropyLoss(reduction='sum')
    start = time.perf_counter()
    bar = tqdm(loader, desc='evaluate', unit='batch', leave=False, mininterval=1.0, disable=not progress)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x)
        out = out.float()
        top1, top5 = accuracy(out, y, topk)
        sums += torch.stack([criterion(out, y).double(), top1.double(), top5.double(),
                             torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
        if log_interval and (i + 1) % log_interval == 0:
            n = sums[3].item()
            log.info(f'Test: [{i + 1:>4d}/{len(loader)}]  top-1 {100 * sums[1].item() / n:.2f}  '
                     f'top-5 {100 * sums[2].item() / n:.2f}  {n / (time.perf_counter() - start):.1f} img/s')
    elapsed = time.perf_counter() - start
    if distributed:
        torch.distributed.all_reduce(sums)
    loss_sum, c1, c5, n = sums.tolist()
    if n == 0:
        raise RuntimeError('the validation loader yielded no images; check the val split folder')
    return dict(top1=100 * c1 / n, top5=100 * c5 / n, loss=loss_sum / n, images=int(n),
                img_per_s=n / elapsed, topk=topk[1])


def check_dataset_classes(dataset: Any, num_classes: int, where: str) -> None:
    """Fail early, with the fix, when the folder has more classes than the classifier."""
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None)
    if class_to_idx and len(class_to_idx) > num_classes:
        raise SystemExit(
            f'{where} has {len(class_to_idx)} class folders but the model has {num_classes} outputs; '
            f'pass --num-classes {len(class_to_idx)}')


def plain(value: Any) -> Any:
    """Arguments as plain Python (lists, not tuples or Namespaces) so checkpoints load weights_only."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def env_rank() -> int:
    return int(os.environ.get('RANK', 0))


__all__ = ['CheckpointError', 'accuracy', 'check_dataset_classes', 'checkpoint_num_classes',
           'env_rank', 'evaluate', 'load_initial_weights', 'plain', 'read_weights',
           'resolve_crop_pct', 'setup_logging']
