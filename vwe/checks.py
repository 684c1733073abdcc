"""The argument checks every module shares: ints that are not bools, and batches of images.

Each check names the argument, what it must be, what it got and, where there is one, what to do.
It imports nothing from vwe, so that the lowest module can use it.
"""

from __future__ import annotations

import numbers

import torch

IMAGE_DTYPES = ("float", "uint8", "any")


def is_int(x: object) -> bool:
    """An int (or a NumPy integer) that is not a bool: True would pass as 1, and 2.0 is no count."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x: object) -> bool:
    """A real number (int, float or a NumPy scalar of either) that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_images(x: object, dtype: str = "float", shape: tuple[int | str, ...] = ("B", 3, 32, 32),
                 name: str = "x", fix: str | None = None) -> None:
    """Refuse anything but a tensor of `dtype` images of `shape`; TypeError for the type, ValueError
    for the shape.

    dtype: "float" (any floating dtype, pixels in [0, 1]), "uint8" (pixels 0..255) or "any".
    shape: an int where the size is fixed, a letter where any size will do: ("B", 3, 32, 32).
    name: the argument as the message names it ("x", "images", "a training batch").
    fix: what to do about a wrong dtype; by default the usual conversion.
    Only dtype and shape are checked, and the message is built only on failure: a range check
    would cost a host sync every step, and formatting the batch size would make torch.compile
    specialise on it.
    """
    if dtype not in IMAGE_DTYPES:
        raise ValueError(f"unknown image dtype {dtype!r}; choose one of {IMAGE_DTYPES}")
    if not isinstance(x, torch.Tensor):
        hint = "torch.from_numpy(x) makes it one" if type(x).__name__ == "ndarray" else "pass a tensor"
        raise TypeError(f"{_wanted(name, dtype, shape)}, got {type(x).__name__}, not a torch.Tensor: {hint}")
    if dtype == "float" and not x.is_floating_point():
        hint = fix or ("convert with vwe.data.to_float" if x.dtype == torch.uint8 else None)
        raise TypeError(_refusal(x, name, dtype, shape, hint))
    if dtype == "uint8" and x.dtype != torch.uint8:
        raise TypeError(_refusal(x, name, dtype, shape, fix or "pass the uint8 images a Dataset holds"))
    if x.ndim != len(shape) or any(isinstance(s, int) and n != s
                                   for s, n in zip(shape, x.shape, strict=True)):
        raise ValueError(_refusal(x, name, dtype, shape, _shape_hint(x, shape)))


def _wanted(name: str, dtype: str, shape: tuple[int | str, ...]) -> str:
    """'x must be float images in [0, 1] of shape (B, 3, 32, 32)'."""
    kind = {"float": "float images in [0, 1]", "uint8": "uint8 images", "any": "images"}[dtype]
    return f"{name} must be {kind} of shape ({', '.join(map(str, shape))})"


def _refusal(x: torch.Tensor, name: str, dtype: str, shape: tuple[int | str, ...], hint: str | None) -> str:
    got = f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"
    return f"{_wanted(name, dtype, shape)}, got {got}" + (f": {hint}" if hint else "")


def _shape_hint(x: torch.Tensor, shape: tuple[int | str, ...]) -> str | None:
    """The usual slips: channels last, or one image without its batch dimension."""
    channels = shape[1] if len(shape) == 4 else None
    if x.ndim == 4 and isinstance(channels, int) and x.shape[1] != channels and x.shape[-1] == channels:
        return "channels last? use x.permute(0, 3, 1, 2)"
    if x.ndim == len(shape) - 1:
        return "one image? use x.unsqueeze(0)"
    return None
