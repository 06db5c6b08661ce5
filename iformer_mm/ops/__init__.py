"""Fast kernels, each beside the reference modules it must equal (see :mod:`.dispatch`).

* :func:`.inception_mixer.inception_mixer_cl` — ``InceptionMixer`` channels-last, no concat,
  recomputing hand-written backward of its local part;
* :func:`.mlp.fused_mlp` — the block MLP streamed in cache-sized row chunks.

Models choose them once (``impl=`` at construction) and ask :func:`.dispatch.kernel_allowed`
on every call; the model file itself (:mod:`iformer_mm.models.iformer`) is the reference.
"""
from .dispatch import IMPLS, MEASURED_WINS, check_impl, kernel_allowed
from .inception_mixer import inception_mixer_cl
from .mlp import CHUNK_ROWS, fused_mlp

__all__ = ['CHUNK_ROWS', 'IMPLS', 'MEASURED_WINS', 'check_impl', 'fused_mlp',
           'inception_mixer_cl', 'kernel_allowed']
