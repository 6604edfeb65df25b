"""What a deployed model takes as input (`InputContract`), recorded in its file and applied to
the images a user gives it: the dataset's own scaling and normalisation, and a one-line
`InputError` for anything else.

A dataset's contract (`dataset_contract`, `for_dataset`) takes the dataset's *native* images —
``uint8`` 0..255 for MNIST, Fashion-MNIST, CIFAR and ImageNet (ImageNet resized and centre-cropped
as `jaxquant.data.eval_transform` does), scikit-learn's raw ``digits`` values 0..16 (integers or
floats) — or floats already scaled to [0, 1] (what ``ArrayDataset.test_images`` holds for digits);
the model normalises with the dataset's mean and std itself. Shapes: a batch ``(N, H, W, C)``, a
batch without the channel axis ``(N, H, W)`` when ``C == 1``, or one image ``(H, W, C)`` (or
``(H, W)``), which becomes a batch of one.

**The rule for floats.** A float array carries no record of its scale, so the contract decides
from the batch's range (one minimum and one maximum, on the device for a JAX array: two scalars
come back, not the images):

- for ``uint8`` datasets, a float batch must already be in [0, 1] (up to ``EPS``); a float batch
  with values above that is refused, not guessed: 0..255 stored as floats is ambiguous (raw pixels,
  or something normalised?). Pass the ``uint8`` images, or divide by 255.
- for digits, whose raw values are small numbers of any dtype, a float batch whose maximum is above
  ``1 + EPS`` is raw 0..16 and divided by 16; otherwise it is taken as already in [0, 1]. (A raw
  batch whose every value is 0 or 1 would be read as scaled; real digit batches reach 16.)
- negative values, NaN, values above the raw maximum: refused.

Under ``jax.jit`` (traced input) the range cannot be read: the shape and dtype checks still run,
the value checks are skipped, and the digits rule is applied in the graph (``jnp.where``).

A contract with no raw maximum (``raw_max=None``) takes inputs *as given*: the shape and dtype
kind of the images a model was calibrated on (`jaxquant.ptq.quantize` records them), no scaling.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.data.sources import NORMALIZATION
from jaxquant.errors import CheckpointError, InputError

EPS = 1e-3
"""Tolerance of the [0, 1] and 0..raw_max checks on float images."""

# Native (H, W, C) of each dataset's images, and their raw dtype and maximum ("number": integers
# or floats). ImageNet's side is the run's ``image_size`` (224 unless set).
NATIVE_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
}
RAW = {"digits": ("number", 16.0)}  # every other dataset: ("uint8", 255.0)


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


@dataclasses.dataclass(frozen=True)
class InputContract:
    """The input a model takes: ``image_shape`` ``(H, W, C)`` (inputs as given: any per-example
    shape; None: not recorded, any 4-D batch), the native images' ``raw_dtype`` (``"uint8"``;
    ``"number"``: integers or floats; or, with ``raw_max=None``, the dtype of the images given,
    ``"any"`` when unknown) and ``raw_max``
    (native values are 0..raw_max and divided by it; None: taken as given), then ``mean`` and
    ``std`` (in [0, 1] units; None: no normalisation). ``name`` and ``note`` only word messages.

    `prepare` turns what a user passes into what the network takes, or raises `InputError`."""

    image_shape: tuple[int, ...] | None
    raw_dtype: str = "uint8"
    raw_max: float | None = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    name: str = ""
    note: str = ""

    # ------------------------------------------------------------------------------------------
    # Construction and the file form.

    @classmethod
    def for_dataset(cls, dataset) -> "InputContract":
        """The contract of a `jaxquant.data` dataset (its name, image shape, mean and std)."""
        return dataset_contract(dataset.name, dataset.image_shape, dataset.mean, dataset.std)

    @classmethod
    def of_inputs(cls, images, preprocess: bool, name: str = "PTQ") -> "InputContract":
        """Inputs *as given*: the per-example shape and dtype of ``images`` (a batch), e.g. the
        calibration images of `jaxquant.ptq.quantize` (``preprocess``: whether the user's
        preprocess turns them into model inputs)."""
        dtype = getattr(images, "dtype", None)
        dtype = np.asarray(images).dtype if dtype is None else dtype
        shape = tuple(int(d) for d in np.shape(images))
        if len(shape) < 2 or not _numeric(dtype):
            raise InputError(
                f"{name} model calibration images: got shape {_shape_text(shape)} {dtype}; "
                "expected a batch (N, ...) of integer or float images"
            )
        given = "raw images for your preprocess" if preprocess else "model inputs"
        return cls(shape[1:], str(dtype), None, name=name, note=f" ({given}, as calibrated)")

    def to_json(self) -> dict:
        """A JSON-serialisable dict (`from_json` reads it back)."""
        out = dataclasses.asdict(self)
        for key in ("image_shape", "mean", "std"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_json(cls, data: "dict | str") -> "InputContract":
        """The contract of a `to_json` dict (or its JSON text)."""
        try:
            data = json.loads(data) if isinstance(data, str) else dict(data)
            fields = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in data.items() if k in fields}
            for key in ("image_shape", "mean", "std"):
                if kwargs.get(key) is not None:
                    kwargs[key] = tuple(kwargs[key])
            if kwargs.get("image_shape") is not None:
                kwargs["image_shape"] = tuple(int(d) for d in kwargs["image_shape"])
            if kwargs.get("raw_max") is not None:
                kwargs["raw_max"] = float(kwargs["raw_max"])
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"malformed input contract {data!r} ({e})") from e

    # ------------------------------------------------------------------------------------------
    # Words.

    def _shapes(self) -> str:
        if self.image_shape is None:
            return "(N, H, W, C)"
        shape = self.image_shape
        text = "(N, " + _shape_text(shape)[1:]
        if len(shape) == 3 and shape[-1] == 1:
            text += " or (N, " + _shape_text(shape[:-1])[1:]
        return text

    def describe(self) -> str:
        """One line for a user: the shapes, dtypes and values this model takes."""
        if self.raw_max is None:
            dtype = "" if self.raw_dtype == "any" else f" {self.raw_dtype}"
            return f"inputs {self._shapes()}{dtype}{self.note}"
        if self.raw_dtype == "number":
            raw = f"raw {self.name} values 0..{self.raw_max:g} (float or int)"
        else:
            stores = f" as {self.name} stores them" if self.name else ""
            raw = f"uint8 0..{self.raw_max:g}{stores}"
        return f"images {self._shapes()}: {raw}{self.note}, or floats already in [0, 1]"

    def __str__(self) -> str:
        text = self.describe()
        if self.mean is not None:
            text += (
                f"; normalised inside with mean {_floats(self.mean)} and std {_floats(self.std)}"
            )
        return text

    def _error(self, got: str, why: str = "") -> InputError:
        what = f"{self.name} model input" if self.name else "model input"
        return InputError(f"{what}: got {got}{why}; expected {self.describe()}")

    # ------------------------------------------------------------------------------------------
    # Applying it.

    def prepare(self, images, normalize: bool = True):
        """``images`` as the network takes them: checked, batched to ``(N, H, W, C)``, scaled to
        [0, 1] and (``normalize``) normalised with the mean and std, float32. With
        ``normalize=False``, the dataset's own form instead (``uint8`` kept as it is, other raw
        values scaled to float32 in [0, 1]: what `make_preprocess` takes). NumPy input stays on
        the host until the last step; JAX input stays on its device. Raises `InputError`."""
        x = self._array(images)
        x = self._batch(x)
        x = self._scale(x)
        return self.normalize(x) if normalize else x

    def normalize(self, x) -> jax.Array:
        """Scaled images (the output of ``prepare(..., normalize=False)``) to network inputs."""
        x = jnp.asarray(x)
        if self.raw_max is None:
            return x
        x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        if self.mean is None:
            return x
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

    def _array(self, images):
        if isinstance(images, (np.ndarray, jax.Array)):
            x = images
        else:
            try:
                x = np.asarray(images)
            except (TypeError, ValueError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise self._error(f"a {type(images).__name__} that is not an array ({reason})")
        if not _numeric(x.dtype):
            raise self._error(f"shape {_shape_text(x.shape)} {x.dtype}", " (not numbers)")
        return x

    def _batch(self, x):
        shape, want = tuple(x.shape), self.image_shape
        one_channel = want is not None and len(want) == 3 and want[-1] == 1
        if want is None:
            if len(shape) == 4 or self.raw_max is None:  # not recorded: any batch
                return x
        elif shape[1:] == want:
            return x
        elif shape == want:
            return x[None]
        elif one_channel and shape[1:] == want[:-1]:
            return x[..., None]
        elif one_channel and shape == want[:-1]:
            return x[None, ..., None]
        why = ""
        if want is not None and len(shape) == len(want) + 1 and shape[1:-1] == want[:-1]:
            why = f" ({shape[-1]} channels, the model takes {want[-1]})"
        raise self._error(f"shape {_shape_text(shape)} {x.dtype}", why)

    def _scale(self, x):
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        xp = jnp if isinstance(x, jax.Array) else np
        if self.raw_max is None:  # as given: the recorded dtype kind; integers cast to it
            if self.raw_dtype == "any":
                return x
            want = np.dtype(self.raw_dtype)
            if floating != bool(jnp.issubdtype(want, jnp.floating)):
                raise self._error(f"{x.dtype} inputs", f" where the model was calibrated on {want}")
            if floating or x.dtype == want:
                return x
            rng = _range(x)
            info = np.iinfo(want)
            if rng is not None and (rng[0] < info.min or rng[1] > info.max):
                raise self._error(f"{x.dtype} values {rng[0]:g}..{rng[1]:g}", f" (outside {want})")
            if xp is jnp and want.itemsize == 8 and not jax.config.jax_enable_x64:
                return x  # (JAX has no 64-bit integers here; the values fit)
            return x.astype(want)  # e.g. int64 0..255 -> uint8, as a preprocess may test for

        rng = _range(x)
        lo, hi = rng if rng is not None else (None, None)
        if lo is not None and (np.isnan(lo) or np.isnan(hi)):
            raise self._error(f"{x.dtype} values with NaN")
        raw_max = self.raw_max
        if not floating:
            if lo is not None and (lo < 0 or hi > raw_max):
                raise self._error(f"{x.dtype} values {lo:g}..{hi:g}", f" (outside 0..{raw_max:g})")
            if self.raw_dtype == "uint8":
                return x.astype(xp.uint8)
            return (x / raw_max).astype(xp.float32)
        if lo is None:  # traced (or empty): no value checks
            if self.raw_dtype == "number" and x.size:
                x = jnp.where(jnp.max(x) > 1 + EPS, x / raw_max, x)
            return x.astype(xp.float32)
        if lo < -EPS:
            why = " (negative: normalised already?)"
            raise self._error(f"{x.dtype} values {lo:g}..{hi:g}", why)
        if hi <= 1 + EPS:
            return x.astype(xp.float32)
        if self.raw_dtype == "number" and hi <= raw_max + EPS:
            return (x / raw_max).astype(xp.float32)
        if self.raw_dtype == "number":
            why = f" (above the raw maximum {raw_max:g})"
        else:
            why = (
                f" (floats above 1 are ambiguous: pass uint8 0..{raw_max:g}, "
                f"or floats divided by {raw_max:g})"
            )
        raise self._error(f"{x.dtype} values {lo:g}..{hi:g}", why)


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _numeric(dtype) -> bool:
    """Integers and reals (bfloat16 included); not bool, complex, strings or objects."""
    try:
        return bool(
            jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        ) and not jnp.issubdtype(dtype, jnp.bool_)
    except TypeError:
        return False


def _range(x) -> tuple[float, float] | None:
    """``(min, max)`` of ``x`` as Python floats (None when traced or empty); for a JAX array
    computed on its device, two scalars transferred."""
    if isinstance(x, jax.core.Tracer) or x.size == 0:
        return None
    if isinstance(x, jax.Array):
        lo, hi = np.asarray(jnp.stack([jnp.min(x), jnp.max(x)]).astype(jnp.float32))
    else:
        lo, hi = np.min(x), np.max(x)
    return float(lo) + 0.0, float(hi) + 0.0  # (+ 0.0: -0 reads as 0)


def dataset_contract(
    name: str | None,
    image_shape=None,
    mean=None,
    std=None,
    image_size: int = 224,
) -> InputContract:
    """The contract of dataset ``name``'s images: its native shape (``image_shape`` if given;
    ImageNet's side is ``image_size``), raw dtype and range, and its mean and std
    (`NORMALIZATION`, unless given). A name jaxquant does not know takes ``uint8`` 0..255 or
    floats in [0, 1] of ``image_shape`` (None: any 4-D batch)."""
    if image_shape is None:
        image_shape = NATIVE_SHAPES.get(name)
        if name in NORMALIZATION and image_shape is None:  # streamed (ImageNet)
            image_shape = (int(image_size), int(image_size), 3)
    if mean is None and name in NORMALIZATION:
        mean, std = NORMALIZATION[name]
    raw_dtype, raw_max = RAW.get(name, ("uint8", 255.0))
    note = ""
    if name is not None and name not in NATIVE_SHAPES and name in NORMALIZATION:
        side = image_shape[0]
        note = f" (resized and centre-cropped to {side} as jaxquant.data.eval_transform does)"
    return InputContract(
        tuple(int(d) for d in image_shape) if image_shape is not None else None,
        raw_dtype,
        raw_max,
        tuple(map(float, mean)) if mean is not None else None,
        tuple(map(float, std)) if std is not None else None,
        name or "",
        note,
    )
