"""Runner-side helpers of ``tools/train.py``, ``tools/test.py`` and ``tools/demo.py``.

They make the stock mmengine ``Runner`` work on the machines this project is tested on
(CPU only, torch 2.13, mmengine 0.10.7) without touching the configs, and check what would
otherwise fail late:

* :mod:`.stack_check` — the installed torch/mmcv/mmdet/mmseg/timm stack, with the fix
  (``python -m iformer_mm.engine.stack_check``);
* :mod:`.config_check` — a config before the Runner builds anything (registry names,
  dataset paths, class counts);
* :mod:`.device` — SyncBN -> BN when CUDA is unavailable, gloo process groups on CPU, a clean
  end of a distributed process, dataloader settings that torch would reject;
* :mod:`.trusted_runs` — the explicit trust decision for loading checkpoints that our own
  runs saved (resume / ``load_from`` / testing) while keeping ``weights_only=True``, and an
  early check of the backbone's pretrained file;
* :mod:`.amp` — ``--amp`` on CPU (bf16 backbone and neck);
* :mod:`.resilience`, :mod:`.progress` — atomic checkpoints and RNG resume; progress bars;
* :mod:`.demo` — the demo's config, evaluation hook and picture.
"""
from .trusted_runs import (TRUSTED_RUN_CHECKPOINT_GLOBALS, check_pretrained_files, run_trusted,
                          trusted_run_checkpoints)
from .device import (convert_sync_bn, end_process, init_distributed, prepare_runtime_cfg,
                     teardown_distributed)

__all__ = [
    'TRUSTED_RUN_CHECKPOINT_GLOBALS', 'check_pretrained_files', 'convert_sync_bn', 'end_process',
    'init_distributed', 'prepare_runtime_cfg', 'run_trusted', 'teardown_distributed',
    'trusted_run_checkpoints',
]
