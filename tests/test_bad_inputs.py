"""Bad input across the public API: a clear error (or warning) naming the problem, and nothing
of the user's changed.

Every case states the exception (or warning) it expects and a pattern its message must
match, and after every case the models it touched (parameters, buffers, train/eval flags,
``requires_grad``, ``.grad``, hooks), the global module hooks and every tensor it passed
(values bit for bit, ``requires_grad``, ``.grad``) are compared with a snapshot taken before
the call. Cases that expect a warning also check that it points at the caller's line.

Tiny models (a two-channel conv net on 8x8 images) keep the whole file to seconds; GAD is
fitted once per module with one support model and one epoch.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import pytest
import torch
import torch.nn.modules.module as torch_module
from captum.attr import NoiseTunnel, Saliency
from captum.metrics import sensitivity_max
from torch import nn

from captum_gradflow import (
    AlignmentRegularizer,
    Brightness,
    Extent,
    Feature,
    FeatureAlignment,
    GADWrapper,
    GradientFlowAlignment,
    LogAspectRatio,
    NoiseFeature,
    SmallCNN,
    ZennitAttribution,
    alignment_penalty,
    attribution_regions,
    compare_region_sensitivity,
    digits_pair,
    quantus_explain,
    region_complexity,
    region_sensitivity,
    synthetic_lesions,
    train_classifier,
)

try:  # conftest has made torchvision (hence zennit) importable where its C extension is not
    from zennit.attribution import Gradient as ZennitGradient
except ImportError:  # pragma: no cover - zennit is a test dependency
    ZennitGradient = None

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks")
INTEGER = "integer"
RANGE = "out of (range|bounds)"
LENGTH = r"per example|for 4 (examples|inputs)|\(4\)"


# ------------------------------------------------------------------------ tiny models
class TinyNet(nn.Module):
    """Conv(1 -> 2) + ELU + 2x2 average pooling + linear to ``k`` logits on 8x8 images."""

    def __init__(self, bn: bool = False, k: int = 2, channels: int = 2) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1)]
        if bn:
            layers += [nn.BatchNorm2d(channels), nn.Dropout(0.2)]
        self.body = nn.Sequential(*layers, nn.ELU(), nn.AvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(channels * 16, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _fit_gad(bn: bool) -> GADWrapper:
    torch.manual_seed(1)
    net = TinyNet(bn=bn).eval()
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 2
    return GADWrapper(Saliency(net), n_support=1, epochs=1, batch_size=8, progress=False).fit((x, y))


@pytest.fixture(scope="module")
def gads():
    return {"plain": _fit_gad(False), "bn": _fit_gad(True)}


# ------------------------------------------------------------------------ snapshots
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8).clone()


def _tensor_record(t: torch.Tensor) -> tuple:
    value = None if t.device.type == "meta" else _bits(t)
    return t, t.dtype, tuple(t.shape), t.requires_grad, t.grad if t.is_leaf else None, value


def _tensor_diff(name: str, record: tuple) -> List[str]:
    t, dtype, shape, flag, grad, value = record
    out = []
    if (t.dtype, tuple(t.shape)) != (dtype, shape):
        out.append(f"{name}: dtype/shape changed")
    elif value is not None and not torch.equal(_bits(t), value):
        out.append(f"{name}: values changed")
    if t.requires_grad != flag:
        out.append(f"{name}: requires_grad {flag} -> {t.requires_grad}")
    if t.is_leaf and t.grad is not grad:
        out.append(f"{name}: .grad changed")
    return out


def _model_record(model: nn.Module) -> tuple:
    named = list(model.named_parameters()) + list(model.named_buffers())
    return model, [(n, _tensor_record(t)) for n, t in named], _modes(model), _hooks(model)


def _modes(model: nn.Module) -> list:
    return [(n, m.training) for n, m in model.named_modules()]


def _hooks(model: nn.Module) -> list:
    return [(n, d, [(k, id(v)) for k, v in getattr(m, d).items()])
            for n, m in model.named_modules() for d in HOOK_DICTS]


def _model_diff(label: str, record: tuple) -> List[str]:
    model, tensors, modes, hooks = record
    out = [d for n, r in tensors for d in _tensor_diff(f"{label}.{n}", r)]
    now = {n: t for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    out += [f"{label}.{n}: replaced" for n, r in tensors if now.get(n) is not r[0]]
    if _modes(model) != modes:
        out.append(f"{label}: train/eval flags changed")
    if _hooks(model) != hooks:
        out.append(f"{label}: hooks changed")
    return out


def _global_hooks() -> list:
    return [(n, list(getattr(torch_module, n).items())) for n in sorted(vars(torch_module))
            if n.startswith("_global_") and isinstance(getattr(torch_module, n), dict)]


class Ctx:
    """Builds a case's models and tensors, recording each one before the call sees it."""

    def __init__(self, gads: dict, tmp_path) -> None:
        self.gads, self.tmp = gads, tmp_path
        self.models: List[tuple] = []
        self.tensors: List[tuple] = []

    def track(self, obj: Any) -> Any:
        if isinstance(obj, nn.Module):
            self.models.append(_model_record(obj))
        elif isinstance(obj, torch.Tensor):
            self.tensors.append(_tensor_record(obj))
        return obj

    def net(self, bn: bool = False, train: bool = False, k: int = 2, hook: Optional[Callable] = None) -> TinyNet:
        torch.manual_seed(0)
        net = TinyNet(bn=bn, k=k).train(train)
        if hook is not None:
            net.head.register_forward_hook(hook)
        return self.track(net)

    def x(self, n: int = 4, shape: Sequence[int] = (1, 8, 8), dtype=torch.float32, fill: Optional[float] = None,
          device: str = "cpu", inference: bool = False, grad: bool = False) -> torch.Tensor:
        g = torch.Generator().manual_seed(n)
        t = torch.rand(n, *shape, generator=g)
        if fill is not None and n:
            t.view(n, -1)[:, 0] = fill
        t = t.to(dtype).to(device)
        if inference:
            with torch.inference_mode():
                t = t.clone()
        return self.track(t.requires_grad_(grad))

    def t(self, values: Any, dtype=None) -> torch.Tensor:
        return self.track(torch.tensor(values, dtype=dtype))

    def gad(self, kind: str = "plain", train: bool = False) -> GADWrapper:
        gad = self.gads[kind]
        gad.model.train(train)
        for m in [gad.model] + gad.support_models:
            self.track(m)
        return gad

    def fa(self, **kw) -> FeatureAlignment:
        return FeatureAlignment(self.net(**kw), [Brightness(), Extent()])

    def flow(self, **kw) -> GradientFlowAlignment:
        return GradientFlowAlignment(self.net(**kw), [Brightness()])

    def diff(self) -> List[str]:
        out = [d for i, r in enumerate(self.models) for d in _model_diff(f"model{i}", r)]
        return out + [d for i, r in enumerate(self.tensors) for d in _tensor_diff(f"tensor{i}", r)]


# ------------------------------------------------------------------------ expectations
def _require(condition: Any, message: str) -> None:
    """Fail with ``message`` alone (a bare ``assert`` would append the rewritten expression)."""
    if not condition:
        raise AssertionError(message)


@dataclass
class Raises:
    error: Any
    match: str

    def check(self, result: Any, exc: Optional[BaseException], caught: list) -> None:
        names = self.error.__name__ if isinstance(self.error, type) else "/".join(e.__name__ for e in self.error)
        _require(exc is not None, f"no error (expected {names} matching {self.match!r})")
        _require(isinstance(exc, self.error), f"{type(exc).__name__}: {exc} (expected {names})")
        _require(re.search(self.match, str(exc)), f"message {str(exc)!r} does not match {self.match!r}")


@dataclass
class Warns:
    category: type
    match: str
    result: Optional[Callable[[Any], bool]] = None

    def check(self, result: Any, exc: Optional[BaseException], caught: list) -> None:
        _require(exc is None, f"raised {type(exc).__name__}: {exc} (expected a {self.category.__name__})")
        hits = [w for w in caught if issubclass(w.category, self.category) and re.search(self.match, str(w.message))]
        _require(hits, f"no {self.category.__name__} matching {self.match!r}; got {[str(w.message)[:80] for w in caught]}")
        _require(any(w.filename == __file__ for w in hits), f"warning points at {hits[0].filename}, not the caller")
        _require(self.result is None or self.result(result), "unexpected result")


@dataclass
class Ok:
    result: Optional[Callable[[Any], bool]] = None

    def check(self, result: Any, exc: Optional[BaseException], caught: list) -> None:
        _require(exc is None, f"raised {type(exc).__name__}: {exc}")
        _require(self.result is None or self.result(result), f"unexpected result {result!r}"[:300])


@dataclass
class AnyOf:
    options: Sequence[Any] = field(default_factory=list)

    def check(self, result: Any, exc: Optional[BaseException], caught: list) -> None:
        messages = []
        for option in self.options:
            try:
                return option.check(result, exc, caught)
            except AssertionError as err:
                messages.append(str(err))
        raise AssertionError(" | ".join(messages))


TRAIN_WARNING = Warns(UserWarning, "BatchNorm2d")
INFERENCE = Raises(RuntimeError, "inference_mode")


def _inference(fn: Callable[[], Any]) -> Any:
    with torch.inference_mode():
        return fn()


def _no_grad(fn: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return fn()


CASES: List[tuple] = []


def case(name: str, run: Callable[[Ctx], Any], expect: Any) -> None:
    CASES.append(pytest.param(run, expect, id=name))


# ------------------------------------------------------------------------ gradient callers
# Each builds its object (and model) first, then returns ``call(x, target)``.
def _fa(c, **kw):
    fa = c.fa(**kw)
    return lambda x, t: fa.attribute(x, target=t)


def _joint(c, **kw):
    fa = c.fa(**kw)
    return lambda x, t: fa.joint(x, target=t)


def _noise(c, **kw):
    fa = c.fa(**kw)
    return lambda x, t: fa.compare_to_noise(x, target=t, n_noise=2)


def _flow(c, **kw):
    flow = c.flow(**kw)
    return lambda x, t: flow.attribute(x, target=t, max_steps=3)


def _gad(c, bn=False, train=False):
    gad = c.gad("bn" if bn else "plain", train=train)
    return lambda x, t: gad.attribute(x, target=t)


def _zennit(c, **kw):
    lrp = ZennitAttribution(ZennitGradient(c.net(**kw)))
    return lambda x, t: lrp.attribute(x, target=t)


def _rs(c, **kw):
    net = c.net(**kw)

    def call(x, t):
        regions = torch.zeros(x.shape[0], 8, 8, dtype=torch.bool, device=x.device)
        regions[:, 2:5, 2:5] = True
        return region_sensitivity(net, x, regions, target=t)
    return call


def _crs(c, **kw):
    net = c.net(**kw)
    base = c.x(4, (1, 8, 8))
    gad = c.track(base * (base > 0.5))
    return lambda x, t: compare_region_sensitivity(net, x, gad, base, target=t, region_kwargs={"q": 0.5})


def _penalty(c, **kw):
    net = c.net(**kw)

    def call(x, t):
        xg = x.detach().requires_grad_()  # the training step's own batch
        return alignment_penalty(net(xg), xg, t, Brightness())
    return call


def _quantus(c, **kw):
    net = c.net(**kw)
    return lambda x, t: quantus_explain(net, x, t)


GRADIENT = {"fa": _fa, "joint": _joint, "noise": _noise, "flow": _flow, "gad": _gad}
if ZennitGradient is not None:
    GRADIENT["zennit"] = _zennit

BAD_X = {
    "empty": (dict(n=0), Raises(ValueError, "empty")),
    "uint8": (dict(dtype=torch.uint8), Raises(TypeError, "uint8")),
    "bool": (dict(dtype=torch.bool), Raises(TypeError, "bool")),
    "float64": (dict(dtype=torch.float64), Raises(TypeError, "float64")),
    "float16": (dict(dtype=torch.float16), Raises(TypeError, "float16")),
    "meta": (dict(device="meta"), Raises(ValueError, "meta")),
    "inference-tensor": (dict(inference=True), INFERENCE),
    "nan": (dict(fill=math.nan), Raises(ValueError, "NaN")),
    "inf": (dict(fill=math.inf), Raises(ValueError, "Inf")),
}
for api, prep in GRADIENT.items():
    for bad, (kw, expect) in BAD_X.items():
        case(f"{api}-x-{bad}", lambda c, prep=prep, kw=kw: prep(c)(c.x(**kw), 0), expect)
for bad in ("empty", "uint8", "float64", "meta"):
    case(f"rs-x-{bad}", lambda c, kw=BAD_X[bad][0]: _rs(c)(c.x(**kw), 0), BAD_X[bad][1])
case("rs-x-nan", lambda c: _rs(c)(c.x(fill=math.nan), 0),
     AnyOf([Raises(ValueError, "NaN"), Warns(RuntimeWarning, "NaN")]))
for bad in ("empty", "meta", "nan", "inf"):
    expect = BAD_X[bad][1]
    if bad in ("nan", "inf"):  # an error, or NaN maps with a warning saying so
        expect = AnyOf([expect, Warns(RuntimeWarning, "NaN")])
    case(f"quantus-x-{bad}", lambda c, kw=BAD_X[bad][0]: _quantus(c)(c.x(**kw), [0] * kw.get("n", 4)), expect)

# ------------------------------------------------------------------------ targets
TARGETED = dict(GRADIENT, rs=_rs, crs=_crs, penalty=_penalty, quantus=_quantus)
FLOAT_TARGET = Raises(TypeError, INTEGER)
for api, prep in TARGETED.items():
    loose = api in ("quantus", "zennit")  # Captum's own gather reports the range (RuntimeError)
    case(f"{api}-target-float-tensor", lambda c, prep=prep: prep(c)(c.x(), c.t([0.7, 1.3, 0.2, 1.0])),
         Raises((TypeError, ValueError), INTEGER) if api == "quantus" else FLOAT_TARGET)
    case(f"{api}-target-out-of-range", lambda c, prep=prep: prep(c)(c.x(), c.t([0, 1, 5, 0])),
         Raises((IndexError, RuntimeError) if loose else IndexError, RANGE))
    case(f"{api}-target-wrong-length", lambda c, prep=prep: prep(c)(c.x(), c.t([0, 1, 0])),
         Raises(ValueError, LENGTH))
    if api != "quantus":
        case(f"{api}-target-float-scalar", lambda c, prep=prep: prep(c)(c.x(), 1.0), FLOAT_TARGET)
        case(f"{api}-target-tuple", lambda c, prep=prep: prep(c)(c.x(), (0, 1)),
             Raises(ValueError, "does not (index|name)|tuple"))

# ------------------------------------------------------------------------ modes
MODEL_CALLS = dict(GRADIENT, rs=_rs, crs=_crs, quantus=_quantus)
for api, prep in MODEL_CALLS.items():
    case(f"{api}-train-mode-batchnorm",
         lambda c, prep=prep: prep(c, bn=True, train=True)(c.x(), [0, 1, 0, 1]), TRAIN_WARNING)
    case(f"{api}-no-grad", lambda c, prep=prep: (lambda f, x: _no_grad(lambda: f(x, [0, 1, 0, 1])))(prep(c), c.x()),
         Ok())
    if api not in ("rs", "crs"):  # forward-only metrics may run in inference mode
        case(f"{api}-inference-mode", lambda c, prep=prep: (lambda f, x: _inference(lambda: f(x, 0)))(prep(c), c.x()),
             INFERENCE)

# ------------------------------------------------------------------------ masks
MASK = Raises(ValueError, "mask")
case("fa-mask-wrong-shape", lambda c: _fa_mask(c, c.x(1, (1, 4, 4))), MASK)
case("fa-mask-per-example-mismatch", lambda c: _fa_mask(c, c.x(3)), MASK)
case("fa-mask-negative", lambda c: _fa_mask(c, -c.x(1)), Raises(ValueError, "non-negative"))
case("fa-mask-nan", lambda c: _fa_mask(c, c.x(1, fill=math.nan)), Raises(ValueError, "finite"))
case("fa-mask-on-flat-input",
     lambda c: FeatureAlignment(c.track(nn.Linear(64, 2)), Brightness()).attribute(
         c.x(4, (64,)), target=0, mask=c.x(4)),
     Raises(ValueError, r"\(N, C, H, W\)"))
case("flow-mask-wrong-shape", lambda c: c.flow().attribute(c.x(), target=0, mask=c.x(1, (1, 4, 4))), MASK)
case("penalty-mask-wrong-shape", lambda c: _penalty_mask(c, c.x(2)), MASK)
case("rs-regions-wrong-shape",
     lambda c: region_sensitivity(c.net(), c.x(), c.track(torch.ones(4, 4, 4, dtype=torch.bool)), target=0),
     Raises(ValueError, "shape"))
case("rs-regions-per-example-mismatch",
     lambda c: region_sensitivity(c.net(), c.x(), c.track(torch.ones(3, 8, 8, dtype=torch.bool)), target=0),
     Raises(ValueError, "shape"))
# Captum's wrappers expand the inputs but not keyword arguments: a per-example mask must
# work there or be refused with a message saying what to do.
PER_EXAMPLE_MASK = AnyOf([Ok(), Raises(ValueError, "additional_forward_args")])
case("noisetunnel-per-example-mask",
     lambda c: NoiseTunnel(c.fa()).attribute(c.x(), nt_samples=2, target=0, mask=c.x(4)), PER_EXAMPLE_MASK)
case("sensitivity-max-per-example-mask",
     lambda c: (lambda fa: sensitivity_max(fa.attribute, c.x(), target=0, mask=c.x(4), n_perturb_samples=2))(c.fa()),
     PER_EXAMPLE_MASK)


def _fa_mask(c, mask):
    return c.fa().attribute(c.x(), target=0, mask=mask)


def _penalty_mask(c, mask):
    net, x = c.net(), c.x()
    xg = x.detach().requires_grad_()
    return alignment_penalty(net(xg), xg, [0, 1, 0, 1], Brightness(), mask=mask)


# ------------------------------------------------------------------------ regularizer
case("penalty-out-not-tensor", lambda c: alignment_penalty(None, c.x(grad=True), [0] * 4, Brightness()),
     Raises(TypeError, "out"))
case("penalty-inputs-without-grad", lambda c: alignment_penalty(c.net()(c.x()), c.x(), [0] * 4, Brightness()),
     Raises(ValueError, "require"))
case("penalty-empty", lambda c: _penalty(c)(c.x(0), c.t([], dtype=torch.long)), Raises(ValueError, "empty"))
case("regularizer-negative-weight", lambda c: AlignmentRegularizer(Brightness(), weights=-1.0),
     Raises(ValueError, "weight"))
case("regularizer-subset-without-model", lambda c: AlignmentRegularizer(Brightness(), fraction=0.5),
     Raises(ValueError, "forward_func"))
case("regularizer-subset-float-target",
     lambda c: AlignmentRegularizer(Brightness(), fraction=0.5, forward_func=c.net())(None, c.x(), c.t([0.5] * 4)),
     FLOAT_TARGET)
case("regularizer-subset-inference-mode",
     lambda c: (lambda reg, x: _inference(lambda: reg(None, x, [0] * 4)))(
         AlignmentRegularizer(Brightness(), fraction=0.5, forward_func=c.net()), c.x()),
     INFERENCE)
case("regularizer-subset-empty",
     lambda c: AlignmentRegularizer(Brightness(), fraction=0.5, forward_func=c.net())(None, c.x(0), []),
     Raises(ValueError, "empty"))

# ------------------------------------------------------------------------ FeatureAlignment options
case("fa-3d-input", lambda c: c.fa().attribute(c.x(4, (8, 8)), target=0),
     Raises((ValueError, RuntimeError), r"\(N, C, H, W\)|channels|dimension"))
case("noise-n-noise-0", lambda c: c.fa().compare_to_noise(c.x(), target=0, n_noise=0), Raises(ValueError, "n_noise"))
case("flow-max-steps-0", lambda c: c.flow().attribute(c.x(), target=0, max_steps=0), Raises(ValueError, "max_steps"))
case("flow-integrator", lambda c: c.flow().attribute(c.x(), target=0, integrator="rk4"),
     Raises(ValueError, "integrator"))

# ------------------------------------------------------------------------ GAD
def _new_gad(c, hook=None):
    return GADWrapper(Saliency(c.net(hook=hook)), n_support=1, epochs=1, batch_size=8, progress=False)


def _gad_hooks(c):
    calls = []
    gad = _new_gad(c, hook=lambda *a: calls.append(1))
    gad.fit((c.x(16), c.t([0, 1] * 8)))
    copied = sum(len(m._forward_hooks) for s in gad.support_models for m in s.modules())
    calls.clear()
    gad.attribute(c.x(), target=0)
    return copied, len(calls)


case("gad-fit-empty", lambda c: _new_gad(c).fit((c.x(0), c.t([], dtype=torch.long))), Raises(ValueError, "empty"))
case("gad-fit-float-labels", lambda c: _new_gad(c).fit((c.x(), c.t([0.0, 1.0, 0.0, 1.0]))),
     Raises(TypeError, INTEGER))
case("gad-fit-labels-out-of-range", lambda c: _new_gad(c).fit((c.x(), c.t([0, 1, 5, 0]))), Raises(IndexError, RANGE))
case("gad-fit-length-mismatch", lambda c: _new_gad(c).fit((c.x(), c.t([0, 1, 0]))), Raises(ValueError, "4.*3"))
case("gad-fit-uint8", lambda c: _new_gad(c).fit((c.x(dtype=torch.uint8), c.t([0, 1, 0, 1]))),
     Raises(TypeError, "uint8"))
case("gad-fit-nan", lambda c: _new_gad(c).fit((c.x(fill=math.nan), c.t([0, 1, 0, 1]))), Raises(ValueError, "NaN"))
case("gad-fit-inference-mode",
     lambda c: (lambda g, x, y: _inference(lambda: g.fit((x, y))))(_new_gad(c), c.x(), c.t([0, 1, 0, 1])), INFERENCE)
case("gad-user-hooks-not-copied", _gad_hooks, Ok(lambda r: r == (0, 1)))
case("gad-attribute-unfitted", lambda c: _new_gad(c).attribute(c.x(), target=0), Raises(ValueError, "not fitted"))
case("gad-attribute-3d-input", lambda c: c.gad().attribute(c.x(4, (8, 8)), target=0),
     Raises((ValueError, RuntimeError), "channels|shape|dimension"))
case("gad-attribute-q-0", lambda c: c.gad().attribute(c.x(), target=0, q=0.0), Raises(ValueError, "q"))


# ------------------------------------------------------------------------ files
def _saved(c) -> Any:
    path = c.tmp / "gad.pt"
    c.gad().save(path)
    return path


def _corrupt(c):
    gad = c.gad()
    path = _saved(c)
    data = bytearray(path.read_bytes())
    weights = gad.support_models[0].head.weight.detach().numpy().tobytes()
    at = bytes(data).find(weights)
    assert at > 0, "support weights not found in the save file"
    for i in range(at + 8, at + 12):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return GADWrapper.load(path, Saliency(gad.model), progress=False)


def _write(c, name: str, content: bytes):
    path = c.tmp / name
    path.write_bytes(content)
    return path


def _truncated(c):
    path = _saved(c)
    path.write_bytes(path.read_bytes()[:200])
    return GADWrapper.load(path, Saliency(c.gad().model), progress=False)


def _wrong_payload(c):
    path = c.tmp / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return GADWrapper.load(path, Saliency(c.gad().model), progress=False)


case("gad-load-corrupted", _corrupt, Raises(ValueError, "checksum|corrupt"))
case("gad-load-truncated", _truncated, Raises(ValueError, "could not read|corrupt"))
case("gad-load-text-file", lambda c: GADWrapper.load(_write(c, "t.pt", b"hello"), Saliency(c.gad().model)),
     Raises(ValueError, "could not read|not a GADWrapper"))
case("gad-load-other-payload", _wrong_payload, Raises(ValueError, "not a GADWrapper save file"))
case("gad-load-missing", lambda c: GADWrapper.load(c.tmp / "missing.pt", Saliency(c.gad().model)),
     Raises(FileNotFoundError, "missing.pt"))
case("gad-load-other-architecture",
     lambda c: GADWrapper.load(_saved(c), Saliency(c.track(TinyNet(channels=3)))),
     Raises(ValueError, "does not match"))
case("gad-save-unfitted", lambda c: _new_gad(c).save(c.tmp / "x.pt"), Raises(ValueError, "not fitted"))

# ------------------------------------------------------------------------ region metrics
case("regions-q-0", lambda c: attribution_regions(c.x(), q=0.0), Raises(ValueError, "q must"))
case("regions-nan-map", lambda c: attribution_regions(c.x(fill=math.nan)), Raises(ValueError, "NaN"))
case("regions-1d-map", lambda c: attribution_regions(c.x(4, ())), Raises(ValueError, "shape"))
case("regions-negative-threshold", lambda c: attribution_regions(c.x(), threshold=-1.0),
     Raises(ValueError, "threshold"))
case("complexity-shape-mismatch", lambda c: region_complexity(c.x(4), c.x(3)), Raises(ValueError, "shape"))
case("complexity-connectivity-3", lambda c: region_complexity(c.x(), c.x(), connectivity=3),
     Raises(ValueError, "connectivity"))
case("rs-unknown-score", lambda c: region_sensitivity(c.net(), c.x(), c.x() > 0.5, target=0, score="logit"),
     Raises(ValueError, "score"))
case("crs-unknown-alternative",
     lambda c: compare_region_sensitivity(c.net(), c.x(), c.x(), c.x(), target=0, alternative="bigger"),
     Raises(ValueError, "alternative"))
case("quantus-model-not-module", lambda c: quantus_explain(lambda x: x, c.x().numpy(), [0] * 4),
     Raises(TypeError, "nn.Module"))

# ------------------------------------------------------------------------ training
TRAIN_OK = dict(epochs=1, batch_size=4, progress=False)
case("train-float-labels", lambda c: train_classifier(c.net(), c.x(), c.t([0.0, 1.0, 1.0, 0.0]), **TRAIN_OK),
     Raises(TypeError, INTEGER))
case("train-labels-out-of-range", lambda c: train_classifier(c.net(), c.x(), c.t([0, 1, 2, 0]), **TRAIN_OK),
     Raises(IndexError, RANGE))
case("train-negative-labels", lambda c: train_classifier(c.net(), c.x(), c.t([0, -1, 1, 0]), **TRAIN_OK),
     Raises(IndexError, RANGE))
case("train-one-hot-labels", lambda c: train_classifier(c.net(), c.x(), c.t([[0, 1]] * 4), **TRAIN_OK),
     Raises(ValueError, "shape"))
case("train-empty", lambda c: train_classifier(c.net(), c.x(0), c.t([], dtype=torch.long), **TRAIN_OK),
     Raises(ValueError, "empty"))
case("train-no-parameters", lambda c: train_classifier(c.track(nn.Flatten()), c.x(), c.t([0, 1] * 2), **TRAIN_OK),
     Raises(ValueError, "no parameters"))
case("train-length-mismatch", lambda c: train_classifier(c.net(), c.x(), c.t([0, 1, 0]), **TRAIN_OK),
     Raises(ValueError, "4 examples but y has 3"))
case("train-nan-x", lambda c: train_classifier(c.net(), c.x(fill=math.nan), c.t([0, 1] * 2), **TRAIN_OK),
     Raises(ValueError, "NaN"))
case("train-uint8-x", lambda c: train_classifier(c.net(), c.x(dtype=torch.uint8), c.t([0, 1] * 2), **TRAIN_OK),
     Raises(TypeError, "uint8"))
case("train-batch-size-0",
     lambda c: train_classifier(c.net(), c.x(), c.t([0, 1] * 2), epochs=1, batch_size=0, progress=False),
     Raises(ValueError, "batch_size"))
case("train-one-output-model",
     lambda c: train_classifier(c.net(k=1), c.x(), c.t([0, 1] * 2), **TRAIN_OK), Raises(ValueError, "logits"))
case("train-inference-mode",
     lambda c: (lambda n, x, y: _inference(lambda: train_classifier(n, x, y, **TRAIN_OK)))(
         c.net(), c.x(), c.t([0, 1] * 2)), INFERENCE)

# ------------------------------------------------------------------------ models, features, data
case("smallcnn-num-classes-0", lambda c: SmallCNN(num_classes=0), Raises(ValueError, "num_classes"))
case("smallcnn-in-channels-0", lambda c: SmallCNN(in_channels=0), Raises(ValueError, "in_channels"))
case("smallcnn-two-channels", lambda c: SmallCNN(channels=(2, 3)), Raises(ValueError, "channels"))
case("brightness-mask-wrong-shape", lambda c: Brightness(mask=c.x(1, (1, 4, 4)))(c.x()), MASK)
case("brightness-mask-empty", lambda c: Brightness()(c.x(), c.track(torch.zeros(1, 1, 8, 8))),
     Raises(ValueError, "empty"))
case("brightness-uint8", lambda c: Brightness()(c.x(dtype=torch.uint8)), Raises(TypeError, "uint8"))
case("extent-zero-image-without-mask", lambda c: Extent()(c.track(torch.zeros(2, 1, 8, 8))),
     AnyOf([Warns(RuntimeWarning, "NaN|undefined"), Raises(ValueError, "zero|empty")]))
case("log-aspect-ratio-flat-input", lambda c: LogAspectRatio()(c.x(4, (64,))), Raises(ValueError, r"\(N, C, H, W\)"))
case("noise-feature-negative-sigma", lambda c: NoiseFeature(0, smooth_sigma=-1.0)(c.x()),
     Raises(ValueError, "smooth_sigma"))
case("noise-feature-float-seed", lambda c: NoiseFeature(0.5)(c.x()), Raises((TypeError, ValueError), "seed"))
case("from-callable-not-callable", lambda c: Feature.from_callable(3, "three"), Raises(TypeError, "callable"))
case("from-callable-scalar-output", lambda c: Feature.from_callable(lambda x: x.sum(), "total")(c.x()),
     Raises(ValueError, "one value per example"))
case("from-callable-not-differentiable",
     lambda c: Feature.from_callable(lambda x: (x > 0.5).flatten(1).sum(1).float(), "count").gradient(c.x()),
     Raises(ValueError, "not differentiable"))
case("lesions-n-1", lambda c: synthetic_lesions(1), Raises(ValueError, "n must"))
case("lesions-size-8", lambda c: synthetic_lesions(8, size=8), Raises(ValueError, "size"))
case("lesions-unknown-rule", lambda c: synthetic_lesions(8, size=16, rule="colour"), Raises(ValueError, "rule"))
case("lesions-positive-fraction-1", lambda c: synthetic_lesions(8, size=16, positive_fraction=1.0),
     Raises(ValueError, "positive_fraction"))
case("digits-same-class", lambda c: digits_pair((3, 3)), Raises(ValueError, "distinct"))
case("digits-class-12", lambda c: digits_pair((3, 12)), Raises(ValueError, "0..9"))
case("digits-size-0", lambda c: digits_pair((3, 8), size=0), Raises(ValueError, "size"))
case("digits-test-fraction", lambda c: digits_pair((3, 8), test_fraction=1.5), Raises(ValueError, "test_(fraction|size)"))


# ------------------------------------------------------------------------ the test
@pytest.mark.parametrize("run, expect", CASES)
def test_bad_input(run, expect, gads, tmp_path):
    ctx = Ctx(gads, tmp_path)
    hooks_before = _global_hooks()
    result, exc = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = run(ctx)
        except Exception as err:  # the expectation says which
            exc = err
    problems = []
    try:
        expect.check(result, exc, caught)
    except AssertionError as err:
        problems.append(str(err))
    problems += ctx.diff()
    if _global_hooks() != hooks_before:
        problems.append("global module hooks changed")
    _require(not problems, "; ".join(problems))


def test_enough_cases():
    assert len(CASES) >= 60
