"""The golden-case helpers the tests use: :mod:`iformer_mm.analysis.golden` (shared with the GPU check)."""
from iformer_mm.analysis.golden import (TINY_ARCH, case_input, load_cases, make_state_dict, rel_err,  # noqa: F401
                                        stage_errors)
