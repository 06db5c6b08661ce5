"""How a distributed tool's process ends (``iformer_mm.cli.main_entry``).

A gloo worker thread that still needs the GIL when a run ends used to hang the rank (the
group's destructor, run by DDP's reducer with the GIL held, joins that worker) or abort it
with ``terminate called without an active exception`` (SIGABRT in interpreter finalization):
torchrun then reported a finished run as failed. The probe below puts a worker in exactly
that state, deterministically, and ends the way tools/train.py, tools/test.py and
tools/classification/train.py end.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _subprocess import env_with_repo, free_port
from iformer_mm.cli import _exit_status

PROBE = '''
import atexit, gc, os, sys, threading, time
import torch, torch.distributed as dist
from iformer_mm.cli import main_entry
from iformer_mm.engine.device import teardown_distributed

out, mode = sys.argv[1], sys.argv[2]
rank = int(os.environ['RANK'])


def main(argv):
    dist.init_process_group('gloo')
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # holds the group
        if rank == 1:
            time.sleep(0.5)  # rank 0's broadcast is still pending when it adds the callback
        work = dist.broadcast(torch.zeros(8), 0, async_op=True)
        # the callback runs on rank 0's gloo worker: asleep there, it needs the GIL again
        # after the run has ended
        work.get_future().then(lambda f: time.sleep(1.0))
        del work
    finally:
        teardown_distributed()
    if mode == 'free_ddp':
        del model
        gc.collect()  # the reducer goes, with the GIL held
    else:
        global kept
        kept = model  # the reducer lives until the process ends
    global unclosed
    unclosed = open(os.path.join(out, f'unclosed{rank}.txt'), 'w')
    unclosed.write('buffered, never closed')
    atexit.register(print, f'rank {rank}: atexit handler ran')
    threading.Thread(target=lambda: (time.sleep(0.3),
                                     open(os.path.join(out, f'thread{rank}.txt'), 'w').close())).start()
    if mode == 'fail':
        raise SystemExit('error: planted failure')


main_entry(main)
'''



def _torchrun_probe(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / 'probe.py'
    script.write_text(PROBE)
    env = env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(free_port()), str(script), str(tmp_path), mode]
    # its own session, so that a hung rank (the failure this guards against) is killed too
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f'a rank hung at the end of the run:\n{(out + err)[-3000:]}')
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    res.log = out + err
    return res


@pytest.mark.dist
@pytest.mark.parametrize('mode', ['free_ddp', 'ddp_to_exit'])
def test_finished_ranks_exit_0_with_a_gloo_worker_still_busy(tmp_path, mode):
    """Both ends a run can meet — DDP's reducer freed after the group was destroyed (was: the
    rank hangs) or alive until the process ends (was: SIGABRT in finalization) — each rank
    exits 0, having done what Python's exit does: atexit handlers run, a file left open
    flushed, a non-daemon thread finished."""
    res = _torchrun_probe(tmp_path, mode)
    assert res.returncode == 0, res.log[-3000:]
    assert 'terminate called' not in res.log
    for rank in (0, 1):
        assert f'rank {rank}: atexit handler ran' in res.log
        assert (tmp_path / f'unclosed{rank}.txt').read_text() == 'buffered, never closed'
        assert (tmp_path / f'thread{rank}.txt').is_file()


@pytest.mark.dist
def test_a_failing_rank_still_exits_with_its_error(tmp_path):
    """A tool's ``SystemExit('error: ...')`` after the group was destroyed: the message on
    stderr and a non-zero exit, as with ``sys.exit``."""
    res = _torchrun_probe(tmp_path, 'fail')
    assert res.returncode != 0
    assert 'error: planted failure' in res.stderr
    assert 'terminate called' not in res.log


def test_exit_status_follows_sys_exit(capsys):
    assert _exit_status(None) == 0
    assert _exit_status(3) == 3
    assert _exit_status('error: bad config') == 1
    assert capsys.readouterr().err == 'error: bad config\n'


def test_main_entry_without_a_process_group_is_sys_exit(tmp_path):
    """A run that never made a process group ends through ``sys.exit`` (finalization kept):
    the status of ``SystemExit`` and the traceback of an unexpected error, as before."""
    script = tmp_path / 'tool.py'
    script.write_text(
        'import sys\n'
        'from iformer_mm.cli import main_entry\n'
        'def main(argv):\n'
        '    if sys.argv[1] == "raise":\n'
        '        raise ValueError("a bug")\n'
        '    sys.exit(int(sys.argv[1]))\n'
        'main_entry(main)\n')
    env = env_with_repo()
    run = lambda arg: subprocess.run([sys.executable, str(script), arg], capture_output=True,  # noqa: E731
                                     text=True, timeout=120, env=env)
    assert run('0').returncode == 0
    assert run('4').returncode == 4
    res = run('raise')
    assert res.returncode == 1
    assert 'Traceback' in res.stderr and 'ValueError: a bug' in res.stderr
