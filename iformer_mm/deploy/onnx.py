"""ONNX export with ``torch.onnx`` (dynamo exporter) and ONNX Runtime inference.

What is exported, from a config (or a timm model name for classifiers):

* **segmentors** (mmseg ``EncoderDecoder``: Semantic FPN, UperNet, any backbone): the whole
  network, normalised ``images`` ``(N, 3, H, W)`` in, ``logits`` ``(N, K, H, W)`` out, exactly
  mmseg's ``encode_decode`` (backbone, neck, decode head, bilinear resize to the input size).
  ``fold_preprocess=True`` puts the data preprocessor's BGR->RGB flip and mean/std into the
  graph (raw 0..255 pixels in, as the test pipeline loads them); ``argmax=True`` outputs the
  ``labels`` map ``(N, H, W)`` (int64) instead of logits;
* **detectors** (mmdet): the backbone + neck (``extract_feat``), ``feat0..featN`` out; the
  heads (RPN, RoI, NMS) stay in mmdet (docs/deploy.md says why);
* **classifiers** (timm models, ours and timm's own): ``logits`` ``(N, classes)``.

The dynamo exporter (``torch.onnx.export(dynamo=True)``, i.e. ``torch.export``) is used: it
records ATen ops with symbolic shapes, so ``dynamic=True`` graphs follow the input size, and
its graphs are about 2.6x smaller than the TorchScript exporter's (docs/deploy.md). What is used
here exists from torch 2.6 (2.5's first version lacks ``optimize=`` and ``Dim.DYNAMIC``); older
torches get one line saying so. The kernels of :mod:`iformer_mm.ops`
never run while exporting (``ops/dispatch.py``: ``is_graph_capture``), so the graph holds the
reference modules only.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import compat

__all__ = ['DEFAULT_OPSET', 'MIN_EXPORTER_OPSET', 'ExportError', 'ExportResult', 'SegmentorGraph',
           'DetectorFeatures', 'build_export_module', 'export_onnx', 'onnx_session', 'run_onnx',
           'require_deploy_packages', 'exporter_available', 'missing_ops', 'use_onnxruntime',
           'onnx_op_types', 'load_for_export', 'export_from_config', 'metadata',
           'check_against_pytorch', 'evaluate_onnx', 'ort_profile']

logger = logging.getLogger('iformer_mm')

#: Opset written by default: 20 is the first with ``Gelu``; ONNX Runtime >= 1.16 reads it.
DEFAULT_OPSET = 20
#: The lowest opset the dynamo exporter writes directly; lower ones go through onnx's converter.
MIN_EXPORTER_OPSET = 18
#: ``metadata_props`` keys written into every exported file (read back by :func:`use_onnxruntime`).
META_PREFIX = 'iformer_mm.'


class ExportError(RuntimeError):
    """A model, option or environment that cannot export: the message says why and what to do."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: str
    kind: str
    input_names: List[str]
    output_names: List[str]
    opset: int
    dynamic: bool
    num_nodes: int
    op_types: Dict[str, int] = field(default_factory=dict)
    #: the exported PyTorch module, when kept (to compare against)
    module: Optional[nn.Module] = field(default=None, repr=False)


# ----------------------------------------------------------------------------- environment
def require_deploy_packages() -> None:
    """Fail with the install line when onnx / onnxruntime / onnxscript are missing."""
    missing = [m for m in ('onnx', 'onnxruntime', 'onnxscript') if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f'{", ".join(missing)} not installed: ONNX export and ONNX Runtime need the '
                          'deploy extra: pip install -e ".[deploy]" (onnx, onnxruntime, onnxscript)')


def exporter_available() -> Optional[str]:
    """``None`` when this torch has the dynamo ONNX exporter, else the reason (one line)."""
    if not compat.has_onnx_dynamo_exporter():
        return (f'torch {torch.__version__} lacks the torch.onnx.export(dynamo=True) this tool uses (torch >= 2.6: '
                'optimize=, torch.export.Dim.DYNAMIC); upgrade torch (the project is tested with 2.13) to export')
    return None


# ----------------------------------------------------------------------------- graph modules
def _flips_channels(pre: nn.Module) -> bool:
    """Whether a data preprocessor flips BGR<->RGB (mmseg's says ``channel_conversion``,
    mmengine's ``_channel_conversion``)."""
    return bool(getattr(pre, 'channel_conversion', getattr(pre, '_channel_conversion', False)))


class SegmentorGraph(nn.Module):
    """An mmseg ``EncoderDecoder`` as one tensor function: images -> logits (or labels).

    Args:
        segmentor: the mmseg model (eval mode).
        fold_preprocess: take raw pixels (0..255, the loader's channel order) and apply the
            data preprocessor's channel flip and mean/std inside the graph.
        argmax: output the label map ``(N, H, W)`` instead of logits (``sigmoid > threshold``
            for a one-channel head, as mmseg's ``postprocess_result``).
    """

    def __init__(self, segmentor: nn.Module, fold_preprocess: bool = False, argmax: bool = False) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.fold_preprocess, self.argmax = fold_preprocess, argmax
        pre = segmentor.data_preprocessor
        self.flip = _flips_channels(pre)
        if fold_preprocess and not getattr(pre, '_enable_normalize', False):
            raise ExportError('--fold-preprocess: the config\'s data_preprocessor has no mean/std to fold in')
        head = segmentor.decode_head
        self.align_corners = bool(head.align_corners)
        self.threshold = float(getattr(head, 'threshold', 0.3) or 0.3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.fold_preprocess:
            pre = self.segmentor.data_preprocessor
            if self.flip:
                x = x.flip(1)
            x = (x - pre.mean) / pre.std
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(x))
        # mmseg's whole-image inference resizes the logits to the input (pad) size
        logits = F.interpolate(logits, size=x.shape[2:], mode='bilinear', align_corners=self.align_corners)
        if not self.argmax:
            return logits
        if logits.shape[1] == 1:
            return (logits.sigmoid() > self.threshold).squeeze(1).long()
        return logits.argmax(1)


class DetectorFeatures(nn.Module):
    """An mmdet detector's ``extract_feat`` (backbone + neck): images -> the neck's maps."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.detector.extract_feat(images))


class _SizedUpsample(nn.Module):
    """mmseg's ``Upsample(scale_factor=s)`` for an integer ``s``, with the output size computed
    from the input's symbolic shape: mmseg writes ``int(h * s)``, a Python int the exporters
    freeze at the example's size (a dynamic graph then resizes wrongly at other sizes)."""

    def __init__(self, scale: int, mode: str, align_corners: Optional[bool]) -> None:
        super().__init__()
        self.scale, self.mode, self.align_corners = scale, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)


class _AdaptiveAvgPoolMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products whose bins follow the input's symbolic
    size (the same bins: ``[floor(i*H/o), ceil((i+1)*H/o))``). The exporter writes the ATen op
    with bins fixed at the example's size (UperNet's pyramid pooling: wrong, or an ORT index
    error, at other sizes)."""

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)

    @staticmethod
    def _bins(n: Any, o: int, like: torch.Tensor) -> torch.Tensor:
        i = torch.arange(o, device=like.device)
        start = torch.div(i * n, o, rounding_mode='floor')
        end = torch.div((i + 1) * n + o - 1, o, rounding_mode='floor')
        pos = torch.arange(n, device=like.device)
        inside = (pos[None] >= start[:, None]) & (pos[None] < end[:, None])
        return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        oh, ow = (h if self.output_size[0] is None else self.output_size[0],
                  w if self.output_size[1] is None else self.output_size[1])
        return self._bins(h, oh, x) @ x @ self._bins(w, ow, x).transpose(0, 1)


def _swap_for(child: nn.Module, dynamic: bool) -> Optional[nn.Module]:
    """The export-friendly stand-in for ``child``, or ``None`` to keep it."""
    try:
        from mmseg.models.utils import Upsample
    except ImportError:
        Upsample = None  # noqa: N806
    s = getattr(child, 'scale_factor', None)
    if Upsample is not None and type(child) is Upsample and not child.size and isinstance(s, float) \
            and s.is_integer():
        return _SizedUpsample(int(s), child.mode, child.align_corners)
    if dynamic and type(child) is nn.AdaptiveAvgPool2d:
        size = child.output_size if isinstance(child.output_size, (tuple, list)) else (child.output_size,) * 2
        if tuple(size) != (1, 1):  # global pooling exports as ReduceMean, size-free
            return _AdaptiveAvgPoolMatmul(child.output_size)
    return None


@contextlib.contextmanager
def export_friendly(model: nn.Module, dynamic: bool = True) -> Iterator[int]:
    """Within the block, modules the exporter would freeze at the example's size are swapped for
    stand-ins that compute the same numbers from the symbolic size (mmseg ``Upsample`` with an
    integer scale: :class:`_SizedUpsample`; with ``dynamic``, ``nn.AdaptiveAvgPool2d`` to a
    size other than 1: :class:`_AdaptiveAvgPoolMatmul`); restored afterwards. Yields the count."""
    swapped: List[Tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _swap_for(child, dynamic)
            if new is not None:
                setattr(parent, name, new)
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


# ----------------------------------------------------------------------------- building
def model_kind(model: nn.Module) -> str:
    """``'segmentor'``, ``'detector'`` or ``'classifier'`` (anything else exports as a classifier)."""
    if hasattr(model, 'decode_head') and hasattr(model, 'extract_feat'):
        return 'segmentor'
    if hasattr(model, 'extract_feat') and hasattr(model, 'backbone'):
        return 'detector'
    return 'classifier'


def build_export_module(model: nn.Module, fold_preprocess: bool = False, argmax: bool = False
                        ) -> Tuple[nn.Module, str, List[str]]:
    """``(module to export, kind, output names)`` for a built model (eval mode is set).

    Raises:
        ExportError: an option that does not apply to this kind of model, or a segmentor that
            is not an ``EncoderDecoder`` (cascade segmentors are not covered).
    """
    kind = model_kind(model)
    if kind != 'segmentor' and (fold_preprocess or argmax):
        raise ExportError(f'--fold-preprocess / --argmax apply to segmentors; this config builds a {kind}')
    if kind == 'segmentor':
        if isinstance(model.decode_head, nn.ModuleList):
            raise ExportError(f'{type(model).__name__} (a cascade of decode heads) cannot export: only '
                              'single-head EncoderDecoder segmentors (Semantic FPN, UperNet, ...) are covered')
        module, outputs = SegmentorGraph(model, fold_preprocess, argmax), ['labels' if argmax else 'logits']
    elif kind == 'detector':
        if not getattr(model, 'with_neck', True):
            logger.info('the detector has no neck: exporting the backbone\'s maps')
        module = DetectorFeatures(model)
        with torch.no_grad():
            n = len(module.eval()(torch.zeros(1, 3, 64, 64)))
        outputs = [f'feat{i}' for i in range(n)]
    else:
        module, outputs = model, ['logits']
    return module.eval(), kind, outputs


# ----------------------------------------------------------------------------- export
def onnx_op_types(model_or_path: Any) -> Dict[str, int]:
    """Op type -> count over the main graph of an ONNX model (a path or ``ModelProto``)."""
    import onnx
    proto = onnx.load(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    counts: Dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def missing_ops(op_types: Sequence[str], opset: int) -> List[str]:
    """``'Op (opset N)'`` for each standard op not defined at ``opset`` (N: its first opset)."""
    import onnx.defs
    out = []
    for op in sorted(set(op_types)):
        try:
            onnx.defs.get_schema(op, opset, '')
        except onnx.defs.SchemaError:
            try:
                first = onnx.defs.get_schema(op, onnx.defs.onnx_opset_version(), '').since_version
            except onnx.defs.SchemaError:
                first = None
            out.append(f'{op} (opset {first})' if first else op)
    return out


def _changed_ops(op_types: Sequence[str], opset: int) -> List[str]:
    """Ops whose definition changed after ``opset`` (what a down-conversion must rewrite)."""
    import onnx.defs
    out = []
    for op in sorted(set(op_types)):
        since = onnx.defs.get_schema(op, MIN_EXPORTER_OPSET, '').since_version
        if since > opset:
            out.append(f'{op} (changed in opset {since})')
    return out


def _downgrade(proto: Any, opset: int) -> Any:
    """Convert an opset->=18 model to ``opset`` with onnx's converter, or say which ops block it."""
    import onnx.version_converter
    ops = list(onnx_op_types(proto))
    lacking = missing_ops(ops, opset)
    if lacking:
        raise ExportError(f'--opset {opset} lacks {", ".join(lacking)}, which this model needs '
                          f'(the first opset of each in brackets); use --opset {DEFAULT_OPSET}')
    try:
        return onnx.version_converter.convert_version(proto, opset)
    except Exception as e:  # noqa: BLE001 - onnx's converter raises plain RuntimeErrors
        changed = _changed_ops(ops, opset) or ops
        raise ExportError(f'--opset {opset}: the exporter writes opset >= {MIN_EXPORTER_OPSET} and onnx '
                          f'cannot convert {", ".join(changed)} down to opset {opset} '
                          f'({str(e).strip().splitlines()[-1][:120]}); use --opset {MIN_EXPORTER_OPSET} or higher') from None


def _max_opset() -> int:
    """The newest opset both the exporter and the installed ONNX Runtime support."""
    import onnx.defs
    newest = onnx.defs.onnx_opset_version()
    try:
        from onnxscript.onnx_opset import __all__ as opsets  # 'opset18' ... what onnxscript implements
        newest = min(newest, max(int(n[len('opset'):]) for n in opsets if re.fullmatch(r'opset\d+', n)))
    except ImportError:
        pass
    return newest


def _dynamic_shapes(dynamic: bool, n_inputs: int = 1) -> Optional[Tuple[Dict[int, Any], ...]]:
    if not dynamic:
        return None
    d = torch.export.Dim.DYNAMIC
    return tuple({0: d, 2: d, 3: d} for _ in range(n_inputs))


def _explain_export_failure(e: Exception, what: str) -> ExportError:
    """One line for a model the exporter refused: the exporter's own first line, shortened."""
    text = str(e).strip()
    # torch.export names the Python line and the op; keep the first informative line
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(('File ', '^'))]
    head = next((ln for ln in lines if not ln.startswith('Failed to export')), lines[0] if lines else type(e).__name__)
    return ExportError(f'{what} cannot export to ONNX: {type(e).__name__}: {head[:300]}')


def export_onnx(module: nn.Module, out: str, shape: Sequence[int], *, kind: str = 'classifier',
                output_names: Sequence[str] = ('logits',), dynamic: bool = False,
                opset: int = DEFAULT_OPSET, what: str = 'the model',
                metadata: Optional[Dict[str, str]] = None) -> ExportResult:
    """Export ``module`` (one ``images`` input of ``shape``) to ``out`` and check it loads in ORT.

    Args:
        module: from :func:`build_export_module` (or any eval-mode module taking images).
        out: the ``.onnx`` file to write (parent folders are made).
        shape: the example input ``(N, C, H, W)``.
        dynamic: batch, height and width are symbolic in the graph.
        opset: the ONNX opset; below :data:`MIN_EXPORTER_OPSET` the model is converted with onnx's
            converter, and an op that opset lacks is named.
        what: how messages name the model (e.g. the config path).
        metadata: extra ``metadata_props`` to store.

    Raises:
        ExportError: torch without the exporter, an opset that lacks an op or that the installed
            ONNX Runtime does not read, or a model the exporter refuses (its reason in one line).
    """
    require_deploy_packages()
    reason = exporter_available()
    if reason:
        raise ExportError(reason)
    import onnx
    newest = _max_opset()
    if opset > newest:
        raise ExportError(f'--opset {opset}: the installed onnx/onnxscript define opsets up to {newest}; '
                          f'use --opset {DEFAULT_OPSET}')
    if dynamic and shape[0] == 1:
        # with a batch-1 example torch.export keeps parts of the graph at batch 1 (reshapes fail
        # at run time for N > 1), even with Dim.DYNAMIC: trace with two images
        shape = (2,) + tuple(shape[1:])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), export_friendly(module, dynamic), torch.no_grad(), _quiet_exporter():
        warnings.simplefilter('ignore')
        try:
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=max(opset, MIN_EXPORTER_OPSET),
                                        input_names=['images'], output_names=list(output_names),
                                        dynamic_shapes=_dynamic_shapes(dynamic), optimize=True, verbose=False)
        except Exception as e:  # noqa: BLE001 - torch.export / the translator raise many types
            raise _explain_export_failure(e, what) from None
    proto = program.model_proto
    if opset < MIN_EXPORTER_OPSET:
        proto = _downgrade(proto, opset)
    meta = {'kind': kind, 'dynamic': str(bool(dynamic)), 'torch': torch.__version__, **(metadata or {})}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, str(v)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    onnx.save(proto, out)
    onnx.checker.check_model(out)
    onnx_session(out)  # the runtime must accept it (opset, ops) before we call it done
    ops = onnx_op_types(proto)
    return ExportResult(path=out, kind=kind, input_names=['images'], output_names=list(output_names),
                        opset=opset, dynamic=dynamic, num_nodes=sum(ops.values()), op_types=ops)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress lines to stdout and logs version-conversion tracebacks."""
    names = ('torch.onnx', 'onnxscript')
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


# ----------------------------------------------------------------------------- runtime
def onnx_session(path: str, threads: Optional[int] = None, spin: bool = True) -> Any:
    """An ONNX Runtime CPU session with the default graph optimisations (all levels).

    Args:
        threads: intra-op threads (``None``: ONNX Runtime's default, one per core).
        spin: let idle pool threads spin (ORT's default); off for measuring process CPU time,
            which would otherwise count the spinning.

    Raises:
        ExportError: the file is not a model this ONNX Runtime can run (the reason in one line).
    """
    require_deploy_packages()
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=['CPUExecutionProvider'])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f'ONNX Runtime {ort.__version__} cannot load {path}: {first[:300]}') from None


def run_onnx(session: Any, images: torch.Tensor) -> List[torch.Tensor]:
    """Run ``session`` on ``images`` (its one input); outputs as torch tensors."""
    name = session.get_inputs()[0].name
    return [torch.from_numpy(o) for o in session.run(None, {name: images.detach().cpu().numpy()})]


def metadata(session: Any) -> Dict[str, str]:
    """The ``iformer_mm.*`` metadata an exported file carries (kind, options)."""
    props = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}


def _segmentor_file(session: Any) -> Dict[str, str]:
    """The file's metadata, after checking it is a segmentor with logits output."""
    meta = metadata(session)
    if meta.get('kind') != 'segmentor':
        raise ExportError(f'the ONNX file holds a {meta.get("kind", "model of unknown kind")}, not a segmentor '
                          '(export one with tools/deploy/export_onnx.py SEG_CONFIG ...)')
    if meta.get('argmax') == 'True':
        raise ExportError('the ONNX file outputs label maps (--argmax); evaluation needs the logits: '
                          'export again without --argmax')
    return meta


def use_onnxruntime(segmentor: nn.Module, session: Any) -> None:
    """Make an mmseg segmentor run its network in ``session``: its ``encode_decode`` (what whole
    and slide inference call per image / window) feeds ONNX Runtime; the data preprocessor,
    flip, resize to the original size and the evaluator stay mmseg's.

    Raises:
        ExportError: the file is not a segmentor with logits output.
    """
    folded = _segmentor_file(session).get('fold_preprocess') == 'True'
    pre, head = segmentor.data_preprocessor, segmentor.decode_head
    flip = _flips_channels(pre)

    def encode_decode(inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
        x = inputs
        if folded:  # the graph normalises itself: give it the pixels the preprocessor had
            x = x * pre.std + pre.mean
            x = x.flip(1) if flip else x
        logits = run_onnx(session, x)[0].to(inputs.device)
        return head.predict_by_feat(logits, batch_img_metas)  # mmseg's own resize rule

    segmentor.encode_decode = encode_decode


# ----------------------------------------------------------------------------- from a config
def load_for_export(spec: str, checkpoint: Optional[str] = None) -> nn.Module:
    """Build the model of an mm config (:func:`iformer_mm.build.build_from_config`: weights
    stripped, SyncBN as BN) or a timm model name, load ``checkpoint`` strictly with the package's
    loader (:func:`iformer_mm.analysis.features.load_weights`: iFormer checkpoints through
    :mod:`iformer_mm.pretrained`, mmengine run checkpoints through the trusted-runs allow-list);
    eval mode.

    Raises:
        ExportError: an unknown config / model name.
        CheckpointError: the loader's error for a missing, unsafe or non-matching checkpoint.
    """
    from ..analysis.features import load_weights
    from ..build import ConfigError, build_from_config
    if spec.endswith('.py') or '::' in spec or os.sep in spec:
        try:
            model, _ = build_from_config(spec, revert_sync_bn=True, init_weights=True)
        except ConfigError as e:
            raise ExportError(str(e)) from None
    else:
        import timm
        if not timm.is_model(spec):
            close = timm.list_models(f'*{spec}*')[:8]
            raise ExportError(f'{spec!r} is neither a config file nor a timm model name'
                              + (f'; similar timm models: {", ".join(close)}' if close else ''))
        model = timm.create_model(spec, pretrained=False)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def export_from_config(spec: str, out: str, shape: Sequence[int], checkpoint: Optional[str] = None, *,
                       dynamic: bool = False, opset: int = DEFAULT_OPSET, fold_preprocess: bool = False,
                       argmax: bool = False, keep_model: bool = False) -> ExportResult:
    """:func:`load_for_export` + :func:`build_export_module` + :func:`export_onnx` (the tool's work).

    Args:
        spec: an mmdet/mmseg config path or a timm model name.
        shape: ``(H, W)`` or ``(N, C, H, W)`` of the example input.
        keep_model: keep the exported PyTorch module in the result (for
            :func:`check_against_pytorch`).
    """
    require_deploy_packages()
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, 3) + shape
    if len(shape) != 4 or min(shape) < 1:
        raise ExportError(f'--shape takes H W (or N C H W) positive sizes, got {list(shape)}')
    model = load_for_export(spec, checkpoint)
    module, kind, outputs = build_export_module(model, fold_preprocess, argmax)
    meta = dict(source=os.path.basename(spec), checkpoint=os.path.basename(checkpoint or ''),
                fold_preprocess=str(fold_preprocess), argmax=str(argmax))
    res = export_onnx(module, out, shape, kind=kind, output_names=outputs, dynamic=dynamic, opset=opset,
                      what=spec, metadata=meta)
    res.module = module if keep_model else None
    return res


def check_against_pytorch(res: ExportResult, shape: Sequence[int], seed: int = 1,
                          module: Optional[nn.Module] = None) -> Dict[str, float]:
    """Run the exported file and its PyTorch module on one random input of ``shape``.

    Returns:
        Per output: ``max |ORT - PyTorch| / max |PyTorch|`` (fp32 outputs), or the fraction of
        differing labels (``--argmax`` label maps).
    """
    module = module or res.module
    if module is None:
        raise ExportError('no PyTorch module to compare with (export with keep_model=True)')
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = module(x)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    outs = run_onnx(onnx_session(res.path), x)
    errs = {}
    for name, o, r in zip(res.output_names, outs, refs):
        if r.is_floating_point():
            errs[name] = ((o - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
        else:
            errs[name] = (o != r).float().mean().item()
    return errs


# ----------------------------------------------------------------------------- evaluation
def evaluate_onnx(config: str, onnx_file: str, work_dir: Optional[str] = None,
                  cfg_options: Optional[Dict[str, Any]] = None, threads: Optional[int] = None) -> Dict[str, float]:
    """Score an exported segmentor with mmseg's own test loop: the config's ``test_dataloader``
    (same pipeline), data preprocessor, ``test_cfg`` (whole or slide), ``test_evaluator``
    (``IoUMetric``); only the network runs in ONNX Runtime (:func:`use_onnxruntime`).

    Returns:
        The evaluator's metrics (``mIoU``, ``aAcc``, ``mAcc``), as ``runner.test()`` gives them.

    Raises:
        ExportError: a file that is not an exported segmentor with logits, or ORT cannot load.
    """
    from mmengine.config import Config

    from ..engine import prepare_runtime_cfg
    from ..engine.config_check import build_runner, preflight_or_exit
    if not os.path.isfile(onnx_file):
        raise ExportError(f'ONNX file not found: {onnx_file!r} (write it with tools/deploy/export_onnx.py)')
    session = onnx_session(onnx_file, threads)
    _segmentor_file(session)
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'decode_head' not in cfg.get('model', {}):
        raise ExportError(f'{config} is not a segmentor config: onnx_test scores segmentors (mIoU)')
    cfg.work_dir = work_dir or cfg.get('work_dir') or os.path.join(
        'work_dirs', os.path.splitext(os.path.basename(config))[0] + '_onnx')
    cfg.load_from = None  # the weights are in the ONNX file
    prepare_runtime_cfg(cfg)
    preflight_or_exit(cfg, splits=('test',))
    runner = build_runner(cfg)
    use_onnxruntime(runner.model, session)
    return runner.test()


def ort_profile(path: str, shape: Sequence[int], threads: int = 1, runs: int = 3) -> Dict[str, float]:
    """Where ONNX Runtime spends a forward: milliseconds of kernel time per op type (ORT's own
    profiler), averaged over ``runs`` forwards, the first one included.

    Returns:
        ``{op type: ms per forward}``, largest first.
    """
    import json
    import tempfile
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, 'ort')
        session = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=['CPUExecutionProvider'])
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        for _ in range(runs):
            run_onnx(session, x)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    per_op: Dict[str, float] = {}
    for ev in events:
        args = ev.get('args', {})
        if ev.get('cat') == 'Node' and ev.get('name', '').endswith('_kernel_time') and 'op_name' in args:
            per_op[args['op_name']] = per_op.get(args['op_name'], 0.0) + ev['dur'] / 1e3
    return dict(sorted(((k, v / runs) for k, v in per_op.items()), key=lambda kv: -kv[1]))
