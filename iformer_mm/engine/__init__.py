"""OpenMMLab runtime helpers shared by ``tools/train.py`` and ``tools/test.py``.

They make the stock mmengine ``Runner`` work on the machines this project is tested on
(CPU only, torch 2.13, mmengine 0.10.7) without touching the configs:

* :mod:`.device` — SyncBN -> BN when CUDA is unavailable, gloo process groups on CPU
  (mmengine's ``torch.cuda.set_device``, DDP ``device_ids``), a clean
  ``destroy_process_group`` at exit, dataloader settings that torch would reject.
* :mod:`.trusted_runs` — the explicit trust decision for loading checkpoints that our own
  runs saved (resume / ``load_from`` / testing / mmdet's and mmseg's inference APIs): the
  loader ``import iformer_mm`` gives mmengine for local files, tensors plus an allow-list on
  every torch; and an early check of the backbone's pretrained file.
"""
from .trusted_runs import (TRUSTED_RUN_CHECKPOINT_GLOBALS, check_pretrained_files, load_from_local_safely,
                           run_trusted, trusted_run_checkpoints)
from .device import (convert_sync_bn, end_process, init_distributed, prepare_runtime_cfg,
                     teardown_distributed)

__all__ = [
    'TRUSTED_RUN_CHECKPOINT_GLOBALS', 'check_pretrained_files', 'convert_sync_bn', 'end_process',
    'init_distributed', 'load_from_local_safely', 'prepare_runtime_cfg', 'run_trusted', 'teardown_distributed',
    'trusted_run_checkpoints',
]
