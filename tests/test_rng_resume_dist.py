"""RNGStateHook across processes: every rank resumes from its own generator state."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip('mmengine')

from iformer_mm.engine.resilience import RNG_STATE_KEY, RNGStateHook  # noqa: E402
from _subprocess import free_port


class _Logger:
    def __init__(self) -> None:
        self.warnings = []

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


class _Runner:
    def __init__(self) -> None:
        self.logger = _Logger()



def _rank_main(rank: int, world: int, port: int, folder: str) -> None:
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        # diff_rank_seed-style: every rank has its own stream.
        torch.manual_seed(100 + rank)
        torch.rand(7)
        hook = RNGStateHook()
        hook.after_train_iter(_Runner(), 0)  # every rank, as mmengine runs it
        if rank == 0:  # Runner.save_checkpoint (and the hook before it) is master-only
            ckpt = {}
            hook.before_save_checkpoint(_Runner(), ckpt)
            torch.save(ckpt, os.path.join(folder, 'ckpt.pth'))
        expected = torch.rand(4)  # what an uninterrupted run draws next
        dist.barrier()
        torch.manual_seed(12345)  # a fresh process after the kill: different state
        loaded = torch.load(os.path.join(folder, 'ckpt.pth'), weights_only=True)
        runner, hook = _Runner(), RNGStateHook()
        hook.after_load_checkpoint(runner, loaded)
        hook.before_train_iter(runner, 0)
        got = torch.rand(4)
        torch.save(dict(expected=expected, got=got, warnings=runner.logger.warnings),
                   os.path.join(folder, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


def test_every_rank_resumes_its_own_rng_state(tmp_path):
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2)]
    for r in res:
        assert torch.equal(r['got'], r['expected'])  # bit-identical continuation per rank
        assert r['warnings'] == []
    assert not torch.equal(res[0]['expected'], res[1]['expected'])  # the ranks really differ
    ckpt = torch.load(tmp_path / 'ckpt.pth', weights_only=True)
    assert len(ckpt[RNG_STATE_KEY]['ranks']) == 2

    # Resuming that 2-process checkpoint in one process: rank 0's state, and a warning.
    runner, hook = _Runner(), RNGStateHook()
    torch.manual_seed(1)
    hook.after_load_checkpoint(runner, ckpt)
    hook.before_train_iter(runner, 0)
    assert torch.equal(torch.rand(4), res[0]['expected'])
    assert len(runner.logger.warnings) == 1 and '2 process(es)' in runner.logger.warnings[0]


def test_single_process_checkpoint_has_no_per_rank_list():
    ckpt = {}
    torch.manual_seed(3)
    RNGStateHook().before_save_checkpoint(_Runner(), ckpt)
    assert set(ckpt[RNG_STATE_KEY]) == {'torch'}
    expected = torch.rand(3)
    runner, hook = _Runner(), RNGStateHook()
    torch.manual_seed(4)
    hook.after_load_checkpoint(runner, ckpt)
    hook.before_train_iter(runner, 0)
    assert torch.equal(torch.rand(3), expected) and runner.logger.warnings == []
