"""A progress bar with ETA for mmengine runs, for CPU jobs whose log lines come minutes apart.

mmengine logs every ``interval`` iterations; on a CPU an iteration can take seconds, so the
console stays silent for minutes. :class:`ProgressBarHook` draws one tqdm bar over training
(iterations done, rate, ETA, last loss) and one per validation/test run. Add it to a config::

    custom_hooks = [dict(type='iformer_mm.ProgressBarHook')]
"""
from __future__ import annotations

import sys
from typing import Any, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from ..registry import HOOKS

__all__ = ['ProgressBarHook']


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """tqdm bars over training iterations and every evaluation (main process only).

    Args:
        mininterval: seconds between redraws (a redraw on a non-terminal is one ``\\r`` update).
        stream: where the bars go (default: ``sys.stderr``, as tqdm does).
    """

    priority = 'VERY_LOW'  # after the logger and checkpoint hooks of the same iteration

    def __init__(self, mininterval: float = 1.0, stream: Optional[Any] = None) -> None:
        self.mininterval = mininterval
        self.stream = stream
        self._train = None
        self._eval = None

    def _bar(self, total: int, desc: str, initial: int = 0, leave: bool = True):
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit='it', leave=leave,
                    mininterval=self.mininterval, file=self.stream or sys.stderr, dynamic_ncols=True)

    def before_train(self, runner) -> None:
        if is_main_process():
            self._train = self._bar(runner.max_iters, 'train', initial=runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if self._train is None:
            return
        loss = (outputs or {}).get('loss')
        if loss is not None:
            loss = loss.item() if hasattr(loss, 'item') else float(loss)
            self._train.set_postfix(loss=f'{loss:.3f}', refresh=False)
        self._train.update(1)

    def after_train(self, runner) -> None:
        if self._train is not None:
            self._train.close()
            self._train = None

    def _start_eval(self, runner, loader, desc: str) -> None:
        if is_main_process():
            self._eval = self._bar(len(loader), desc, leave=False)

    def _step_eval(self) -> None:
        if self._eval is not None:
            self._eval.update(1)

    def _end_eval(self) -> None:
        if self._eval is not None:
            self._eval.close()
            self._eval = None

    def before_val_epoch(self, runner) -> None:
        self._start_eval(runner, runner.val_dataloader, 'evaluate')

    def after_val_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._step_eval()

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self._end_eval()

    def before_test_epoch(self, runner) -> None:
        self._start_eval(runner, runner.test_dataloader, 'test')

    def after_test_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._step_eval()

    def after_test_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self._end_eval()
