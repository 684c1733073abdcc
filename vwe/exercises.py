"""Exercises that check themselves: the method's key pieces, written by the student in the notebooks and
each checked against the package's own.

Every notebook asks for a few functions (`EXERCISES`, 1.1 `patchify` to 8.2 `class_agreement`). The
cell under an exercise hands the student's function to its checker,

    patchify = ex.patchify.check(patchify)

which runs it beside the package's answer on seeded random inputs and on the edge cases that matter
(one image, another dtype, a border patch, a constant feature, a tie), prints one verdict and returns
the function the notebook goes on with: the student's when it is right, the package's otherwise. A
verdict is "right", "not done yet" (the stub's NotImplementedError) or what is wrong in the student's
terms: the classic mistake by name when the answer equals one of the exercise's known wrong answers
("rows and columns are swapped"), then the first difference ("patch 1 of image 0 should hold rows 0-7,
columns 8-15 of the image; yours holds rows 8-15, columns 0-7"), or a wrong type, shape or dtype, or
the student's exception, in words. A check never raises, and leaves the global random state as it was.

`hint()` gives a hint, `solution()` the course notebook's solution (the one place it is written,
`vwe.student`), `summary("01")` the state of a notebook's exercises.
"""

from __future__ import annotations

import copy
import math
import statistics
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vwe import evaluate, models, patches, results, words
from vwe.data import project_dir
from vwe.plots import target_kind

DONE, NOT_DONE, WRONG, UNCHECKED = "done", "not done yet", "not right yet", "not checked yet"


def rtol(dtype: torch.dtype, sums: int = 1) -> float:
    """How far a right answer may lie from the reference, relative to the reference's largest magnitude.

    Two right answers may add the same numbers in another order. A sum of n terms is then off by at
    most n u times its terms' largest magnitude (u, the unit roundoff, is eps / 2); no sum in these
    checks has more than 2^13 terms, so one sum gives 2^12 eps: 9e-13 in float64, 5e-4 in float32.
    `sums` in a row (a model's layers, an optimiser step after a backward pass) carry each other's
    errors on, to first order `sums` times as far. Every mistake a checker names moves a result by far
    more: a factor, a swap, a missing term.
    """
    return sums * 2.0**12 * torch.finfo(dtype).eps


# ----------------------------------------------------------------------------- words for the messages


def _a(x: object) -> str:
    """What a returned object is, in words: "None", "a float (0.25)", "a list of 2"."""
    if x is None:
        return "None"
    if isinstance(x, bool):
        return f"a bool ({x})"
    if isinstance(x, (int, float)):
        return f"a Python {type(x).__name__} ({x:.6g})"
    if isinstance(x, (list, tuple, dict)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def _num(x: float | torch.Tensor) -> str:
    return f"{float(x.detach() if isinstance(x, torch.Tensor) else x):.6g}"


def _form(got: object, expected: torch.Tensor, what: str) -> str | None:
    """What is wrong with `got`'s type, shape or dtype against the reference's, in words; None if nothing."""
    if not isinstance(got, torch.Tensor):
        return f"{what}: {_a(got)}, expected a tensor of shape {tuple(expected.shape)}"
    if got.shape != expected.shape:
        same = " (the right number of values in the wrong shape)" if got.numel() == expected.numel() else ""
        single = ": a single number, a 0-d tensor" if expected.dim() == 0 else ""
        return f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}{single}{same}"
    if got.dtype != expected.dtype:
        kind = ("integers (indices, labels): dtype=torch.long" if expected.dtype == torch.long
                else f"the input's dtype, {expected.dtype}")
        return f"{what}: {got.dtype}, expected {expected.dtype}: {kind}"
    return None


def _like(got: object, expected: torch.Tensor) -> bool:
    """A tensor of the reference's shape and dtype: what a mistake spotted by its values must be first."""
    return isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype


def _differs(got: torch.Tensor, expected: torch.Tensor, tol: float | None = None) -> torch.Tensor:
    """Where `got` is not `expected` (same shape): exactly for integers, within `tol` (default `rtol` of
    the dtype) times the reference's largest magnitude for floats. A nan or an inf never matches a finite
    number."""
    got, expected = got.detach(), expected.detach()
    if not expected.is_floating_point():
        return got != expected
    tol = rtol(expected.dtype) if tol is None else tol
    finite = expected[expected.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return ~torch.isclose(got, expected, rtol=0.0, atol=tol * scale)


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    """The index of the first True of a non-empty boolean mask."""
    return tuple(int(i) for i in mask.nonzero()[0])


def _as_number(x: object) -> float | None:
    """A Python number or a tensor of one number as a float; None for anything else."""
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x.detach())
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return None


def _same_number(got: float, expected: float, tol: float) -> bool:
    return math.isclose(got, expected, rel_tol=tol, abs_tol=0.0) or got == expected  # inf == inf


def _slot(j: int) -> str:
    """Context slot j in words: "above left" ... "below right" (`patches.OFFSETS`)."""
    dr, dc = patches.OFFSETS[j]
    return ({-1: "above", 0: "", 1: "below"}[dr] + {-1: " left", 0: "", 1: " right"}[dc]).strip()


def _block(k: int) -> str:
    """Where patch k sits in the image: "rows 0-7, columns 8-15"."""
    r, c = divmod(k, patches.GRID)
    p = patches.PATCH
    return f"rows {p * r}-{p * r + p - 1}, columns {p * c}-{p * c + p - 1}"


def _find(patch: torch.Tensor, stack: torch.Tensor, name: Callable[[int], str]) -> str | None:
    """Which of `stack`'s (n, C, P, P) patches `patch` (C, P, P) is, maybe transposed, named by `name`."""
    for m in range(len(stack)):
        if torch.equal(patch, stack[m]):
            return name(m)
        if torch.equal(patch, stack[m].transpose(-1, -2)):
            return f"{name(m)}, transposed"
    return None


def _position(k: int) -> str:
    return f"position {k} (grid row {k // patches.GRID}, column {k % patches.GRID}, {target_kind(k)})"


# ----------------------------------------------------------------------------- the exercise


@dataclass
class Case:
    """One input of a check: what it is, in words, and the arguments of the student's function."""

    name: str
    args: tuple


@dataclass
class Mistake:
    """A classic wrong answer and what a checker says of it. `wrong` (the student's signature) computes
    what the mistake returns; or `spot(got, expected)` recognises it where it has many forms; or it makes
    the student's code raise an error whose message holds `raised`."""

    says: str
    wrong: Callable | None = None
    spot: Callable[[Any, Any], bool] | None = None
    raised: str | None = None


def _fresh(arg: object) -> object:
    """A copy of a tensor argument, so that a function that writes into its input changes no later case."""
    if isinstance(arg, torch.Tensor):
        return arg.detach().clone().requires_grad_(arg.requires_grad)
    return copy.copy(arg) if isinstance(arg, (list, dict)) else arg


def _call(fn: Callable, case: Case) -> Any:
    return fn(*(_fresh(a) for a in case.args))


def _where(error: BaseException, fn: Callable) -> str:
    """The line of the student's function an exception came from: ", at `x.view(B, 16)`"."""
    code = getattr(fn, "__code__", None)
    mine = [f for f in traceback.extract_tb(error.__traceback__) if code and f.filename == code.co_filename]
    return f", at `{mine[-1].line.strip()}`" if mine and mine[-1].line else ""


class Exercise:
    """One exercise: the function it asks for, the package's answer, the cases it is checked on, how a
    difference is put in words, the classic mistakes it names, a hint; and its state in this kernel."""

    def __init__(self, number: str, name: str, asks: str, reference: Callable, uses: str,
                 cases: Callable[[], list[Case]], diff: Callable[[Any, Any, Case], str | None],
                 mistakes: tuple[Mistake, ...], hint: str, run: Callable[[Callable, Case], Any] = _call):
        self.number, self.name, self.asks = number, name, asks  # "1.1", "patchify", in one line
        self.reference, self.uses = reference, uses  # the package's answer, and where it lives in words
        self.cases, self.diff, self.mistakes = cases, diff, mistakes
        self.hint_text, self.run = hint, run
        self.status = UNCHECKED

    @property
    def notebook(self) -> str:
        """The notebook's number: "01" for exercise 1.1."""
        return f"{int(self.number.split('.')[0]):02d}"

    @property
    def title(self) -> str:
        return f"Exercise {self.number} `{self.name}`"

    def check(self, fn: Callable) -> Callable:
        """Check the student's `fn`, print the verdict, and return what the notebook goes on with: `fn`
        when it is right, else the package's function."""
        if fn is self.reference:  # the check cell run twice: it would pass the package's own function
            print(f"… {self.title}: this is the package's function, which the last check handed back; run "
                  f"the cell that defines yours first, then this one.")
            return fn
        self.status, message = self.verdict(fn)
        print(message)
        return fn if self.status == DONE else self.reference

    def verdict(self, fn: Callable) -> tuple[str, str]:
        """(status, message) for the student's `fn`. The global random state is left as it was: the
        cases are seeded, and a notebook's later cells draw what they drew before."""
        with torch.random.fork_rng(devices=[]):
            return self._verdict(fn)

    def _verdict(self, fn: Callable) -> tuple[str, str]:
        cases = self.cases()
        go_on = f"The notebook goes on with {self.uses}."
        if not callable(fn):
            return WRONG, f"✗ {self.title}: that is {_a(fn)}, not a function. {go_on}"
        for case in cases:
            expected = self.run(self.reference, case)
            try:
                got = self.run(fn, case)
            except NotImplementedError:
                return NOT_DONE, (f"… {self.title}: not done yet. {go_on} ex.{self.name}.hint() gives a "
                                  f"hint, ex.{self.name}.solution() the answer.")
            except Exception as e:  # the student's code: any error, reported in words
                text = (str(e).strip().splitlines() or [""])[0][:300]
                named = [m.says for m in self.mistakes if m.raised is not None and m.raised in str(e)]
                return WRONG, "\n  ".join([f"✗ {self.title} raised {type(e).__name__} on {case.name}: {text}"
                                           f"{_where(e, fn)}.", *named[:1],
                                           f"{go_on} ex.{self.name}.hint() gives a hint."])
            problem = self.diff(expected, got, case)
            if problem is not None:
                lines = [f"✗ {self.title} is not right yet, on {case.name}:",
                         self.name_mistake(got, expected, case), problem,
                         f"{go_on} ex.{self.name}.hint() gives a hint."]
                return WRONG, "\n  ".join(line for line in lines if line)
        names = ", ".join(c.name for c in cases)
        return DONE, f"✓ {self.title}: right on {names}. The notebook goes on with yours."

    def name_mistake(self, got: Any, expected: Any, case: Case) -> str | None:
        """The first known mistake that `got` is, in words; None when it is none of them."""
        for mistake in self.mistakes:
            if mistake.spot is not None and mistake.spot(got, expected):
                return mistake.says
            if mistake.wrong is None:
                continue
            try:
                wrong = self.run(mistake.wrong, case)
            except Exception:  # a mistake that cannot meet this case is not this answer
                continue
            if self.diff(wrong, got, case) is None:
                return mistake.says
        return None

    def hint(self) -> None:
        print(f"Hint for {self.title} ({self.asks}): {self.hint_text}")

    def solution(self) -> None:
        """Print the solution, as the course notebook (notebooks/NN_name.ipynb) holds it."""
        found = sorted((project_dir() / "notebooks").glob(f"{self.notebook}_*.ipynb"))
        if not found:
            print(f"The solution of {self.title} is in the course notebook notebooks/{self.notebook}_*.ipynb "
                  "of the repository, which is not here.")
            return
        # here, not at the top: vwe.student reads notebooks with nbformat, whose import (jsonschema's)
        # would cost every notebook kernel that imports the exercises seconds of its start
        from vwe import student

        print(f"{self.title}, as {found[0].relative_to(project_dir())} solves it:\n")
        print(student.solutions(found[0])[self.name])


# ----------------------------------------------------------------------------- inputs


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(g: torch.Generator, n: int, dtype: torch.dtype = torch.uint8, channels: int = 3) -> torch.Tensor:
    """(n, C, 32, 32) random images: uint8 in 0..255, or floats in [0, 1). Every 8x8 square is different."""
    shape = (n, channels, patches.GRID * patches.PATCH, patches.GRID * patches.PATCH)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.rand(shape, generator=g, dtype=dtype)


def _count(n: int, what: str) -> str:
    """"one image", "3 images"."""
    return f"one {what}" if n == 1 else f"{n} {what}s"


def _images_of_each_kind() -> list[tuple[str, torch.Tensor]]:
    g = _generator(101)
    return [("4 uint8 images", _images(g, 4)), ("one image", _images(g, 1)),
            ("3 float32 images", _images(g, 3, torch.float32)),
            ("2 one-channel float64 images", _images(g, 2, torch.float64, channels=1))]


def _image_cases() -> list[Case]:
    return [Case(f"{name} {tuple(x.shape)}", (x,)) for name, x in _images_of_each_kind()]


def _patch_cases() -> list[Case]:
    return [Case(f"the patches of {name} {tuple(p.shape)}", (p,))
            for name, p in ((name, patches.patchify(x)) for name, x in _images_of_each_kind())]


# ----------------------------------------------------------------------------- 01: patchify, unpatchify


def _grid_order_transposed(p: torch.Tensor) -> torch.Tensor:
    """(B, 16, ...) patches renumbered column by column: position k gets patch (k % 4) * 4 + k // 4."""
    g = patches.GRID
    return p[:, [(k % g) * g + k // g for k in range(g * g)]]


def _patchify_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your patches")
    if problem is not None:
        return problem
    bad = _differs(got, expected)
    if not bad.any():
        return None
    b, k = _first(bad.flatten(2).any(2))
    image = case.args[0][b]
    holds = _find(got[b, k], patches.patchify(image[None])[0], _block) or "pixels of no 8x8 square of it"
    return f"patch {k} of image {b} should hold {_block(k)} of the image; yours holds {holds}"


def _unpatchify_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your images")
    if problem is not None:
        return problem
    bad = patches.patchify(_differs(got, expected))  # (B, 16, C, 8, 8): which squares differ
    if not bad.any():
        return None
    b, k = _first(bad.flatten(2).any(2))
    square = patches.patchify(got[b:b + 1])[0, k]
    holds = _find(square, case.args[0][b], lambda m: f"patch {m}") or "pixels of no single patch"
    return f"{_block(k)} of image {b} should be patch {k}; yours holds {holds}"


def _channels_last(p: torch.Tensor) -> torch.Tensor:
    """Patches whose (C, 8, 8) numbers were laid out as (8, 8, C)."""
    return p.movedim(2, -1).reshape(p.shape)


patchify = Exercise(
    "1.1", "patchify", "cut (B, C, 32, 32) images into (B, 16, C, 8, 8) patches, row by row",
    patches.patchify, "vwe.patches.patchify", _image_cases, _patchify_diff,
    (Mistake("rows and columns are swapped: your patches are numbered column by column; patch k must sit at "
             "grid row k // 4, column k % 4 (row by row)",
             lambda x: _grid_order_transposed(patches.patchify(x))),
     Mistake("each patch is transposed: inside a patch keep the pixel rows (y) before the columns (x)",
             lambda x: patches.patchify(x).transpose(-1, -2)),
     Mistake("the whole image was transposed: rows and columns are swapped in the grid and inside each patch",
             lambda x: patches.patchify(x.transpose(-1, -2))),
     Mistake("a reshape alone cuts the image's memory into runs of pixels, not into 8x8 squares: split H "
             "and W into (4, 8) each, move the two grid axes in front of the channels with permute, then "
             "merge them",
             lambda x: x.reshape(len(x), 16, x.shape[1], 8, 8)),
     Mistake("the channels ended up last inside each patch: a patch is (C, 8, 8), so permute to "
             "(B, row, col, C, y, x) before the last reshape",
             lambda x: _channels_last(patches.patchify(x)))),
    "x.reshape(B, C, 4, 8, 4, 8) splits each side into (grid position, pixel): its axes are (B, C, row, y, "
    "col, x). Permute them to (B, row, col, C, y, x), then reshape to (B, 16, C, 8, 8). Read B and C from "
    "x.shape: the checks use one-channel images too.")

unpatchify = Exercise(
    "1.2", "unpatchify", "put (B, 16, C, 8, 8) patches back together into (B, C, 32, 32) images",
    patches.unpatchify, "vwe.patches.unpatchify", _patch_cases, _unpatchify_diff,
    (Mistake("rows and columns are swapped: patch k goes to grid row k // 4, column k % 4; yours went column "
             "by column", lambda p: patches.unpatchify(_grid_order_transposed(p))),
     Mistake("each patch went in transposed: inside a patch keep the pixel rows (y) before the columns (x)",
             lambda p: patches.unpatchify(p.transpose(-1, -2))),
     Mistake("the image came out transposed: before the last reshape the axes must be (B, C, row, y, col, x)",
             lambda p: patches.unpatchify(p).transpose(-1, -2)),
     Mistake("a reshape alone lays each patch's 192 numbers out as runs of pixels, not as an 8x8 square: "
             "view the patches as (B, 4, 4, C, 8, 8), permute to (B, C, row, y, col, x), then reshape",
             lambda p: p.reshape(len(p), p.shape[2], 32, 32))),
    "Undo patchify's steps in reverse order: p.reshape(B, 4, 4, C, 8, 8) has axes (B, row, col, C, y, x); "
    "permute them to (B, C, row, y, col, x), then reshape to (B, C, 32, 32).")


# ----------------------------------------------------------------------------- 02: the table, the gather


def _grid_table(place: Callable[[int, int], int],
                target: Callable[[int], tuple[int, int]] = lambda k: divmod(k, patches.GRID)) -> torch.Tensor:
    """(16, 8) int64: entry [k, j] is place(row, column) of slot j's neighbour of the target at
    target(k), for any row and column, inside the grid or not."""
    return torch.tensor([[place(r + dr, c + dc) for dr, dc in patches.OFFSETS]
                         for r, c in (target(k) for k in range(patches.N_PATCHES))])


def _inside(r: int, c: int, low: int = 0, high: int = patches.GRID) -> bool:
    return low <= r < high and low <= c < high


def _table_case() -> list[Case]:
    return [Case("the 4x4 grid", ())]


def _entry(m: int) -> str:
    if m == -1:
        return "-1 (outside the grid)"
    return f"patch {m}" if 0 <= m < patches.N_PATCHES else f"{m} (no patch: they are 0..15)"


def _table_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your table")
    if problem is not None:
        return problem
    if torch.equal(got, expected):
        return None
    k, j = _first(got != expected)
    return (f"target {k} ({target_kind(k)}), slot {j} ({_slot(j)}): expected {_entry(int(expected[k, j]))}, "
            f"yours says {_entry(int(got[k, j]))}")


def _outside_filled(got: Any, expected: torch.Tensor) -> bool:
    """Right wherever the neighbour exists, one other number wherever it does not."""
    outside = expected == -1
    return (_like(got, expected) and torch.equal(got[~outside], expected[~outside])
            and len(got[outside].unique()) == 1 and bool((got[outside] != -1).all()))


def _outside_kept(got: Any, expected: torch.Tensor) -> bool:
    """Right wherever the neighbour exists, several numbers where -1 belongs: neighbours beyond the border
    numbered as if they were inside."""
    outside = expected == -1
    return (_like(got, expected) and torch.equal(got[~outside], expected[~outside])
            and len(got[outside].unique()) > 1)


def _slots_shuffled(got: Any, expected: torch.Tensor) -> bool:
    """Every target's right neighbours, in other slots."""
    return _like(got, expected) and torch.equal(got.sort(dim=1).values, expected.sort(dim=1).values)


def _with_target(slots: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3x3 block around each target read row by row, centre included, cut to 8 slots: `target` put
    in slot 4 of the slot axis `dim`, the last slot dropped."""
    half = len(patches.OFFSETS) // 2
    return torch.cat([slots.narrow(dim, 0, half), target, slots.narrow(dim, half, half - 1)], dim=dim)


neighbour_table = Exercise(
    "2.1", "neighbour_table",
    "the (16, 8) table of each target's neighbours in context order, -1 outside the grid",
    patches.neighbour_table, "vwe.patches.neighbour_table", _table_case, _table_diff,
    (Mistake("slots outside the grid must say -1 (the zero patch), not a patch number", spot=_outside_filled),
     Mistake("off by one at the border: row 0 and column 0 are inside the grid (rows and columns run 0..3: "
             "0 <= r < 4)", lambda: _grid_table(lambda r, c: 4 * r + c if _inside(r, c, low=1) else -1)),
     *(Mistake("rows and columns are swapped: target k sits at grid row k // 4, column k % 4, the patch at "
               "(row, column) is number 4 * row + column, and OFFSETS[j] is (drow, dcol)",
               lambda number=number, target=target: _grid_table(
                   lambda r, c: number(r, c) if _inside(r, c) else -1, target))
       for number, target in ((lambda r, c: 4 * c + r, lambda k: (k % 4, k // 4)),  # the whole grid
                              (lambda r, c: 4 * c + r, lambda k: divmod(k, 4)),  # the neighbours' numbers
                              (lambda r, c: 4 * r + c, lambda k: (k % 4, k // 4)))),  # the targets' places
     # (swapping the offsets' (drow, dcol) makes the first: the whole grid transposed)
     Mistake("slot 4 holds the target itself: a context is the 8 neighbours, without the centre",
             lambda: _with_target(patches.neighbour_table(), torch.arange(16)[:, None], dim=1)),
     Mistake("each target has the right neighbours in the wrong slots: slot j holds the neighbour at "
             "OFFSETS[j] (above left, above, above right, left, right, below left, below, below right)",
             spot=_slots_shuffled),
     Mistake("neighbours outside the grid were kept, numbered as if inside: check 0 <= r < 4 and 0 <= c < 4 "
             "before numbering", spot=_outside_kept)),
    "Loop over the 16 targets (row, col = divmod(k, 4)) and the 8 OFFSETS (dr, dc): the neighbour sits at "
    "(row + dr, col + dc), inside the grid when both lie in 0..3, and its number is 4 * row + column. "
    "Start from torch.full((16, 8), -1, dtype=torch.long).")


def _gather_cases() -> list[Case]:
    g = _generator(202)
    kinds = (("2 float32 images", 2, torch.float32), ("one image", 1, torch.float32),
             ("3 uint8 images", 3, torch.uint8), ("2 float64 images", 2, torch.float64))
    return [Case(f"the patches of {name} {tuple(p.shape)}", (p,))
            for name, p in ((name, patches.patchify(_images(g, n, dtype))) for name, n, dtype in kinds)]


def _what_patch(patch: torch.Tensor, batch: torch.Tensor, b: int) -> str:
    """What a context slot holds, in words: a zero patch, ones, or which patch of which image."""
    if not patch.any():
        return "a zero patch"
    if bool((patch == 1).all()):
        return "a patch of ones"
    for other in [b] + [i for i in range(len(batch)) if i != b]:
        where = "" if other == b else f" of image {other}"
        found = _find(patch, batch[other], lambda m, where=where: f"patch {m}{where}")
        if found:
            return found
    return "a patch that is none of the image's"


def _gather_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your contexts")
    if problem is not None:
        return problem
    bad = _differs(got, expected)
    if not bad.any():
        return None
    b, k, j = _first(bad.flatten(3).any(3))
    batch = case.args[0]
    return (f"target {k} ({target_kind(k)}) of image {b}, slot {j} ({_slot(j)}) should be "
            f"{_what_patch(expected[b, k, j], batch, b)}; yours is {_what_patch(got[b, k, j], batch, b)}")


def _gather_by(table: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A gather that takes slot j of target k from patch table[k, j] of the same image, whatever it is."""
    return lambda p: p[:, table]


gather_context = Exercise(
    "2.2", "gather_context",
    "every target's 8 context patches, (B, 16, C, 8, 8) -> (B, 16, 8, C, 8, 8), zero patches outside",
    patches.gather_context, "vwe.patches.gather_context", _gather_cases, _gather_diff,
    (Mistake("the border holds ones instead of zeros: a neighbour outside the grid is an all-zero patch",
             lambda p: patches.gather_neighbours(p, torch.ones_like(p[0, 0]))),
     Mistake("neighbours outside the grid wrap around to the far side of the image (as torch.roll does); "
             "they must be zero patches",
             _gather_by(_grid_table(lambda r, c: (r % 4) * 4 + c % 4))),
     Mistake("the border repeats the nearest edge patch; outside the grid a neighbour is a zero patch",
             _gather_by(_grid_table(lambda r, c: min(max(r, 0), 3) * 4 + min(max(c, 0), 3)))),
     Mistake("the slots run backwards: slot 0 is the neighbour above left, slot 7 the one below right "
             "(OFFSETS)", lambda p: patches.gather_context(p).flip(2)),
     Mistake("slot 4 holds the target itself: a context is the 8 neighbours, without the centre",
             lambda p: _with_target(patches.gather_context(p), p[:, :, None], dim=2))),
    "Append one zero patch to every image as patch 16 (torch.cat with torch.zeros_like(p[:, :1]) on dim 1), "
    "point every -1 of the neighbour table at it (torch.where(table < 0, 16, table)), and index the patch "
    "axis once: p[:, index] is (B, 16, 8, C, 8, 8).")


# ----------------------------------------------------------------------------- 03: shared encoding, decoding


def _encode_shared(tower: nn.Module, p: torch.Tensor) -> torch.Tensor:
    """The context encoding from one tower call on the B*16 patches and the zero patch, gathered:
    (B, 16, C, 8, 8) -> (B, 16, 8 * D), as `ContextAutoencoder` (encoding="shared") computes it."""
    feats = tower(torch.cat([p.flatten(0, 1), p.new_zeros(1, *p.shape[2:])]))  # (B*16 + 1, D)
    return patches.gather_neighbours(feats[:-1].view(len(p), patches.N_PATCHES, -1), feats[-1]).flatten(2)


def _tower() -> nn.Module:
    """A small seeded tower in float64 and eval mode (the literal and shared encodings agree there)."""
    torch.manual_seed(303)
    return models.Conv4().double().eval()


def _encoding_cases() -> list[Case]:
    g, tower = _generator(303), _tower()
    return [Case(f"the patches of {_count(n, 'float64 image')} and an eval-mode Conv4",
                 (tower, patches.patchify(_images(g, n, torch.float64)))) for n in (2, 1, 3)]


@torch.no_grad()
def _run_counting(fn: Callable, case: Case) -> tuple[Any, tuple[int, ...]]:
    """fn(tower, patches) and the batch size of each tower call it made, on a copy of the tower (a
    function that switches it to train mode changes no later run)."""
    tower, p = copy.deepcopy(case.args[0]), case.args[1]
    sizes: list[int] = []
    hook = tower.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    try:
        return fn(tower, p.clone()), tuple(sizes)
    finally:
        hook.remove()


def _encoding_diff(expected: tuple, got: tuple, case: Case) -> str | None:
    (z_expected, calls_expected), (z, calls) = expected, got
    problem = _form(z, z_expected, "your encoding")
    if problem is not None:
        return problem
    bad = _differs(z, z_expected, rtol(z.dtype, sums=8))  # 4 layers' convolutions and normalisations
    if bad.any():
        b, k, n = _first(bad)
        j, d = divmod(n, z.shape[-1] // patches.N_NEIGHBOURS)
        return (f"target {k} of image {b}, number {n} (slot {j} ({_slot(j)}), feature {d}) should be "
                f"{_num(z_expected[b, k, n])}; yours is {_num(z[b, k, n])}")
    if calls == calls_expected:
        return None
    b = len(case.args[1])
    if sum(calls) == b * patches.N_PATCHES * patches.N_NEIGHBOURS:
        return (f"the numbers are right, but the tower ran on every context patch ({sum(calls)} patches, the "
                "literal encoding): run it once on the patches and the zero patch, then gather the features")
    return (f"the numbers are right, but the tower ran {len(calls)} time(s) on {list(calls)} patches: run "
            f"it once, on the {b * 16} patches and the zero patch together ({calls_expected[0]}), so that "
            "BatchNorm in train mode normalises them as one batch")


shared_encoding = Exercise(
    "3.1", "shared_encoding",
    "the context encoding (B, 16, 8 * 64) from one tower call on the 16 patches and the zero patch",
    _encode_shared, "the package's shared encoding (vwe.models.ContextAutoencoder)", _encoding_cases,
    _encoding_diff,
    (Mistake("the border slots hold zeros; they must hold the tower's output on the zero patch, which is not "
             "zero (the tower normalises its input first)",
             lambda t, p: patches.gather_neighbours(t(p.flatten(0, 1)).view(len(p), 16, -1),
                                                    torch.zeros(64, dtype=p.dtype)).flatten(2)),
     Mistake("your numbers run feature by feature; they must run slot by slot: slot 0's 64 features, then "
             "slot 1's, ... (flatten the (B, 16, 8, 64) gather's last two axes as they are)",
             lambda t, p: _encode_shared(t, p).unflatten(2, (8, -1)).transpose(2, 3).flatten(2)),
     Mistake("you averaged the 8 context features, as CBOW averages its bag of words; here they are "
             "concatenated in slot order (8 * 64 numbers)",
             lambda t, p: _encode_shared(t, p).unflatten(2, (8, -1)).mean(2)),
     Mistake("every slot holds the target's own features: a context is its 8 neighbours, gathered with "
             "gather_neighbours", lambda t, p: t(p.flatten(0, 1)).view(len(p), 16, -1).repeat(1, 1, 8))),
    "feats = tower(torch.cat([p.flatten(0, 1), zero])) with zero = p.new_zeros(1, 3, 8, 8): one call on B*16 "
    "+ 1 patches. The last row is the zero patch's feature; gather_neighbours(feats[:-1].view(B, 16, -1), "
    "feats[-1]) puts each target's 8 neighbours' features in slot order, (B, 16, 8, 64): flatten the last "
    "two axes.",
    run=_run_counting)


def _decode(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Every patch embedding decoded: (B, 16, E) -> (B, 16, 3, 8, 8), as `Autoencoder.decode`."""
    b, n, e = z.shape
    return decoder(z.reshape(b * n, e)).view(b, n, 3, patches.PATCH, patches.PATCH)


def _decode_cases() -> list[Case]:
    g = _generator(304)
    torch.manual_seed(304)
    decoder = models.Decoder(16).double().eval()
    return [Case(f"the embeddings of {_count(n, 'image')}, float64 ({n}, 16, 16)",
                 (decoder, torch.randn(n, 16, 16, generator=g, dtype=torch.float64))) for n in (2, 1, 3)]


@torch.no_grad()
def _run_no_grad(fn: Callable, case: Case) -> Any:
    return _call(fn, case)


def _decode_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    b, n = expected.shape[:2]
    if isinstance(got, torch.Tensor) and got.shape == (b * n, *expected.shape[2:]):
        return (f"your output has the decoder's shape {tuple(got.shape)}: view it as (B, 16, 3, 8, 8) = "
                f"{tuple(expected.shape)}")
    problem = _form(got, expected, "your output")
    if problem is not None:
        return problem
    bad = _differs(got, expected, rtol(got.dtype, sums=8)).flatten(2).any(2)  # (B, 16)
    if not bad.any():
        return None
    i, k = _first(bad)
    source = _decoded_from(got[i, k], expected)
    if source is None:
        return f"out[{i}, {k}] is no patch the decoder makes of any z[b, k]: its pixels are rearranged"
    return f"out[{i}, {k}] must be the decoder's output for z[{i}, {k}]; yours is that of z{list(source)}"


def _decoded_from(patch: torch.Tensor, expected: torch.Tensor) -> tuple[int, int] | None:
    """Which z[b, k] the decoder made `patch` (3, 8, 8) of, by the reference's outputs (B, 16, 3, 8, 8)."""
    for b, k in ((b, k) for b in range(expected.shape[0]) for k in range(expected.shape[1])):
        if not _differs(patch, expected[b, k], rtol(patch.dtype, sums=8)).any():
            return b, k
    return None


def _mixed_up(got: Any, expected: torch.Tensor) -> bool:
    """Every patch one the decoder makes, some in another image's or patch's place."""
    return _like(got, expected) and all(_decoded_from(p, expected) is not None for p in got.flatten(0, 1))


def _as_channels_last(p: torch.Tensor) -> torch.Tensor:
    """(B, 16, 3, 8, 8) patches viewed as (B, 16, 8, 8, 3) and permuted back to channels first."""
    return p.reshape(*p.shape[:2], *p.shape[3:], p.shape[2]).permute(0, 1, 4, 2, 3)


decode = Exercise(
    "3.2", "decode", "decode every patch embedding: (B, 16, E) -> (B, 16, 3, 8, 8)",
    _decode, "the package's decode (vwe.models.Autoencoder.decode)", _decode_cases, _decode_diff,
    (Mistake("images and patches are mixed up: flatten z to (B * 16, E) in its own order, image by image "
             "(z.reshape(B * 16, E)), and view the decoder's rows back in the same order, (B, 16, 3, 8, 8)",
             spot=_mixed_up),
     Mistake("the pixels are scrambled: the decoder's output is (B * 16, 3, 8, 8), channels first already; "
             "view it as (B, 16, 3, 8, 8) without moving axes",
             lambda d, z: _as_channels_last(_decode(d, z)))),
    "The decoder takes one embedding per row: z.reshape(B * 16, E) -> decoder -> (B * 16, 3, 8, 8), then "
    ".view(B, 16, 3, 8, 8).",
    run=_run_no_grad)


# ----------------------------------------------------------------------------- 04: the loss, one step


def _loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The MSE over all 16 targets of every image: (B, 16, C, 8, 8), (B, C, 32, 32) -> 0-d."""
    return F.mse_loss(recon, patches.patchify(images))


def _loss_cases() -> list[Case]:
    g = _generator(401)

    def case(name: str, n: int, dtype: torch.dtype) -> Case:
        recon = torch.rand(n, 16, 3, 8, 8, generator=g, dtype=dtype).requires_grad_(True)
        return Case(name, (recon, _images(g, n, dtype)))

    return [case("4 float64 images and their reconstructions", 4, torch.float64),
            case("one image", 1, torch.float64), case("2 float32 images", 2, torch.float32)]


def _loss_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    if isinstance(got, (int, float)):
        return (f"your loss is {_a(got)}: return the tensor itself, without .item(), so that the training "
                "step can call backward() on it")
    problem = _form(got, expected, "your loss")
    if problem is not None:
        return problem
    if not got.requires_grad:
        return "your loss carries no gradient: compute it from recon without .detach() or torch.no_grad()"
    if not _differs(got, expected).any():
        return None
    times = float(got.detach() / expected.detach())
    return f"the loss should be {_num(expected)}; yours is {_num(got)}, {times:.4g} times the right one"


def _interior(t: torch.Tensor) -> torch.Tensor:
    """The interior targets of (B, 16, ...) patches."""
    return t[:, [k for k in range(patches.N_PATCHES) if target_kind(k) == "interior"]]


reconstruction_loss = Exercise(
    "4.1", "reconstruction_loss", "the mean squared error over all 16 targets of every image",
    _loss, "the package's loss (vwe.models.Autoencoder.forward_loss)", _loss_cases, _loss_diff,
    (Mistake("a sum, not a mean: the MSE averages over every number (B * 16 * 3 * 8 * 8)",
             lambda r, x: F.mse_loss(r, patches.patchify(x), reduction="sum")),
     Mistake("you summed over the 16 targets: average over them too",
             lambda r, x: 16 * _loss(r, x)),
     Mistake("you summed each image's errors: average over every number",
             lambda r, x: _loss(r, x) * x[0].numel()),
     Mistake("your targets were cut with a plain reshape, which makes no 8x8 squares: cut them with patchify",
             lambda r, x: F.mse_loss(r, x.reshape(r.shape))),
     Mistake("that is the absolute error: the loss squares the differences",
             lambda r, x: F.l1_loss(r, patches.patchify(x))),
     Mistake("a square root too many: the mean squared error has none",
             lambda r, x: _loss(r, x).sqrt()),
     Mistake("only the 4 interior targets: the loss covers all 16, the border targets too",
             lambda r, x: F.mse_loss(_interior(r), _interior(patches.patchify(x))))),
    "Cut the images into their targets with patchify(images), the same (B, 16, 3, 8, 8) as recon, and "
    "average the squared differences over every number: ((recon - targets) ** 2).mean(), or F.mse_loss.")


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    """One step on a float batch (B, 3, 32, 32): gradients zeroed, the loss, backward, the update; the
    loss the gradients came from, as `vwe.engine.Step` does it."""
    optimizer.zero_grad()
    loss = model.forward_loss(x)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _step_cases() -> list[Case]:
    g = _generator(402)
    torch.manual_seed(402)
    model = models.build_model("context", "conv4").train()  # small: a Conv4 tower
    return [Case("2 steps on 2 images each", (model, [_images(g, 2, torch.float32) for _ in range(2)])),
            Case("2 steps on one image each", (model, [_images(g, 1, torch.float32) for _ in range(2)]))]


def _run_steps(fn: Callable, case: Case) -> tuple[list[tuple[Any, torch.Tensor]], bool]:
    """A fresh copy of the case's model trained with `fn`; (each step's (loss, how far the weights moved),
    whether the model is left in train mode). Plain SGD: an update proportional to the gradient, so that a
    right answer's rounding stays as small (Adam's first update is about lr times the gradient's sign,
    which rounding can flip where a gradient is near 0). Its lr is large because an untrained decoder's
    gradients are small: one step moves the loss by a few percent, far more than rounding."""
    model, batches = case.args
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=100.0)
    steps = []
    for x in batches:
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        loss = fn(model, optimizer, x.clone())
        steps.append((loss, torch.cat([p.detach().flatten() for p in model.parameters()]) - before))
    return steps, model.training


def _parameter_at(model: nn.Module, index: int) -> str:
    """The name of the parameter holding number `index` of the flattened weights."""
    for name, p in model.named_parameters():
        if index < p.numel():
            return name
        index -= p.numel()
    return "?"


def _step_diff(expected: tuple, got: tuple, case: Case) -> str | None:
    (steps_expected, training_expected), (steps, training) = expected, got
    pairs = zip(steps_expected, steps, strict=True)
    for i, ((loss_expected, moved_expected), (loss, moved)) in enumerate(pairs, 1):
        if loss is None:
            return f"step {i} returned None: return the loss (loss.detach())"
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            return f"step {i} returned {_a(loss)}: return the loss as a 0-d tensor (loss.detach())"
        if _differs(loss, loss_expected, rtol(torch.float32)):  # the same forward pass: one sum's rounding
            return f"the loss of step {i} should be {_num(loss_expected)}; yours is {_num(loss)}"
        bad = _differs(moved, moved_expected, rtol(torch.float32, sums=8))  # through the model and back
        if bad.any():
            n = _first(bad)[0]
            return (f"step {i} moved the weights differently, first in {_parameter_at(case.args[0], n)}: by "
                    f"{_num(moved[n])} where the step moves it by {_num(moved_expected[n])}")
    if training != training_expected:
        return "your step left the model in eval mode: training steps run in train mode"
    return None


def _accumulating_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    loss = model.forward_loss(x)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _loss_after_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    _train_step(model, optimizer, x)
    return model.forward_loss(x).detach()


def _eval_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    return _train_step(model.eval(), optimizer, x)


def _moved(observed: tuple) -> list[bool]:
    """Whether each step moved any weight."""
    return [bool(moved.any()) for _, moved in observed[0]]


train_step = Exercise(
    "4.2", "train_step", "one training step: zero the gradients, the loss, backward, the update",
    _train_step, "the package's step (vwe.engine.Step)", _step_cases, _step_diff,
    (Mistake("the gradients add up from step to step: call optimizer.zero_grad() before loss.backward()",
             _accumulating_step),
     Mistake("the weights never moved: call optimizer.step() after loss.backward() (and zero the gradients "
             "before backward, not between the two)",
             spot=lambda got, expected: _moved(got) == [False, False]),
     Mistake("optimizer.step() ran before loss.backward(): each update used the previous step's gradients",
             spot=lambda got, expected: _moved(got) == [False, True]),
     Mistake("optimizer.step() ran between the loss and loss.backward(): the update changed the weights the "
             "loss was computed from; call backward() first", raised="modified by an inplace operation"),
     Mistake("you returned the loss of the updated model: return the loss the gradients came from",
             _loss_after_step),
     Mistake("the model ran in eval mode: training steps run in train mode (BatchNorm normalises with the "
             "batch's own statistics); do not call model.eval() in the step", _eval_step)),
    "Four lines: optimizer.zero_grad(); loss = model.forward_loss(x) (or reconstruction_loss(model(x), x)); "
    "loss.backward(); optimizer.step(); then return loss.detach().",
    run=_run_steps)


# ----------------------------------------------------------------------------- 05: the probe, a gap


def _feature_cases() -> list[Case]:
    g = _generator(501)

    def features(n: int, shift: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        scales = torch.tensor([1.0, 3.0, 20.0, 1.5, 7.0, 2.0], dtype=dtype)  # sd >= 1 (see `standardize`)
        means = torch.tensor([0.0, -5.0, 4.0, 100.0, 1.0, -2.0], dtype=dtype)
        return torch.randn(n, 6, generator=g, dtype=dtype) * scales + means + shift

    train, test = features(40, 0.0), features(12, 2.0)
    constant = train.clone(), test.clone()
    for x in constant:
        x[:, 2] = 3.0  # a feature that never varies, as a context embedding's zero-patch slots do not
    return [Case("40 training and 12 test rows of 6 features", (train, test)),
            Case("a constant feature (column 2)", constant),
            Case("one test row", (train, test[:1])),
            Case("float32 features", (features(40, 0.0, torch.float32), features(12, 2.0, torch.float32)))]


# A right answer may put the eps of a constant feature elsewhere ((x - m) / (s + eps) against (x - m) /
# sqrt(s^2 + eps)): with every varying feature's sd >= 1 (the cases' scales) that moves a value by at
# most eps = 1e-6 relative, hence 1e-5.
STANDARDIZE_RTOL = 1e-5


def _pair_diff(expected: tuple, got: Any, what: tuple[str, str], tol: float) -> str | None:
    """The first difference of two (N, D) tensors returned as a pair, named by `what`."""
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        return f"your function returned {_a(got)}, expected a pair ({what[0]}, {what[1]})"
    for name, e, x in zip(what, expected, got, strict=True):
        problem = _form(x, e, f"your {name}")
        if problem is not None:
            return problem
        bad = _differs(x, e, tol)
        if bad.any():
            i, j = _first(bad)
            return f"{name}, row {i}, feature {j}: expected {_num(e[i, j])}, yours is {_num(x[i, j])}"
    return None


def _test_statistics(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return evaluate.standardize(train, train)[0], evaluate.standardize(test, test)[0]


def _population_sd(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(train, dim=0, correction=0)
    return (train - mean) / (var + 1e-6).sqrt(), (test - mean) / (var + 1e-6).sqrt()


def _non_finite(got: Any, expected: tuple) -> bool:
    return (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(x, torch.Tensor) for x in got)
            and any(bool((~x.isfinite()).any()) for x in got))


standardize = Exercise(
    "5.1", "standardize",
    "standardise training and test features with the training features' mean and standard deviation",
    evaluate.standardize, "vwe.evaluate.standardize", _feature_cases,
    lambda e, g, c: _pair_diff(e, g, ("training features", "test features"), STANDARDIZE_RTOL),
    (Mistake("you standardised the test features with the test set's own statistics: use the training "
             "features' mean and standard deviation for both (the test set must not inform the probe)",
             _test_statistics),
     Mistake("your statistics include the test features: compute them on the training features only",
             lambda train, test: tuple(evaluate.standardize(torch.cat([train, test]), x)[1]
                                       for x in (train, test))),
     Mistake("a constant feature gives nan or inf (0 / 0): add a small eps (1e-6) to the variance before the "
             "square root", spot=_non_finite),
     Mistake("you divided by the population standard deviation (divide by n); the probe uses the sample one "
             "(n - 1), torch.var_mean's and torch.std's default", _population_sd),
     Mistake("you standardised each row (image); standardise each column (feature), over the training rows "
             "(dim=0)", lambda train, test: (evaluate.standardize(train.T, train.T)[0].T,
                                             evaluate.standardize(test.T, test.T)[0].T)),
     Mistake("you subtracted the mean but did not divide by the standard deviation",
             lambda train, test: (train - train.mean(0), test - train.mean(0)))),
    "var, mean = torch.var_mean(train, dim=0) gives one mean and variance per feature, from the training "
    "rows only; apply the same (x - mean) / sqrt(var + 1e-6) to both sets (the 1e-6 keeps a constant "
    "feature finite).")


def _probe_epoch(layer: nn.Linear, optimizer: torch.optim.Optimizer, feats: torch.Tensor,
                 labels: torch.Tensor, batch_size: int) -> float:
    """One epoch of the linear probe over the rows in their order, batch by batch; the mean loss per row.
    (N, dim), (N,) -> float. `linear_probe` runs it on the rows in a new shuffled order every epoch."""
    total = 0.0
    for i in range(0, len(feats), batch_size):
        x, y = feats[i:i + batch_size], labels[i:i + batch_size]
        loss = F.cross_entropy(layer(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)  # a short last batch counts for its rows only
    return total / len(feats)


# The mistakes, made of the right epoch: one epoch per batch is the same steps in the same order, and
# tells each batch's mean loss; an optimizer that keeps its gradients is an epoch without zero_grad.


def _batch_losses(layer: nn.Linear, optimizer: torch.optim.Optimizer, feats: torch.Tensor,
                  labels: torch.Tensor, batch_size: int) -> list[float]:
    return [_probe_epoch(layer, optimizer, feats[i:i + batch_size], labels[i:i + batch_size], batch_size)
            for i in range(0, len(feats), batch_size)]


class _KeepsGradients:
    """An optimizer whose zero_grad does nothing."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def zero_grad(self) -> None:
        pass

    def step(self) -> None:
        self.optimizer.step()


def _without_last_batch(layer: nn.Linear, optimizer: torch.optim.Optimizer, feats: torch.Tensor,
                        labels: torch.Tensor, batch_size: int) -> float:
    """The full batches only; their losses still divided by every row, as a student's total / len(feats)."""
    n = len(feats) - len(feats) % batch_size
    return _probe_epoch(layer, optimizer, feats[:n], labels[:n], batch_size) * n / len(feats)


def _epoch_cases() -> list[Case]:
    g = _generator(502)
    torch.manual_seed(502)
    layer = nn.Linear(6, 5).double()
    feats = torch.randn(50, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (50,), generator=g)
    return [Case("50 rows in batches of 16 (a short last batch of 2)", (layer, feats, labels, 16)),
            Case("48 rows in batches of 16", (layer, feats[:48], labels[:48], 16)),
            Case("one row", (layer, feats[:1], labels[:1], 16))]


def _run_epoch(fn: Callable, case: Case) -> tuple[Any, torch.Tensor]:
    """(what fn returns, how far it moved the layer's weights), on a fresh copy trained by plain SGD."""
    layer, feats, labels, batch_size = case.args
    layer = copy.deepcopy(layer)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    before = torch.cat([p.detach().flatten() for p in layer.parameters()])
    loss = fn(layer, optimizer, feats.clone(), labels.clone(), batch_size)
    return loss, torch.cat([p.detach().flatten() for p in layer.parameters()]) - before


def _epoch_diff(expected: tuple, got: tuple, case: Case) -> str | None:
    (loss_expected, moved_expected), (loss, moved) = expected, got
    tol = rtol(torch.float64, sums=4)  # losses, gradients, updates, summed over batches
    value = _as_number(loss)
    if value is None:
        return f"your epoch returned {_a(loss)}: return the mean training loss per row, a number"
    bad = _differs(moved, moved_expected, tol)
    if bad.any():
        n = _first(bad)[0]
        return (f"after the epoch, the layer's {_parameter_at(case.args[0], n)} moved by {_num(moved[n])} "
                f"where the probe's epoch moves it by {_num(moved_expected[n])}")
    if not _same_number(value, loss_expected, tol):
        return f"the mean loss per row should be {_num(loss_expected)}; yours is {_num(value)}"
    return None


probe_epoch = Exercise(
    "5.2", "probe_epoch", "one epoch of the linear probe over the rows in order; the mean loss per row",
    _probe_epoch, "the package's probe epoch (the loop of vwe.evaluate.linear_probe)", _epoch_cases,
    _epoch_diff,
    (Mistake("you averaged the batches' mean losses: weigh each by its number of rows (the short last batch "
             "counts less), which gives the mean loss per row",
             lambda *args: statistics.fmean(_batch_losses(*args))),
     Mistake("the gradients add up from batch to batch: call optimizer.zero_grad() before loss.backward()",
             lambda layer, optimizer, *data: _probe_epoch(layer, _KeepsGradients(optimizer), *data)),
     Mistake("the last, short batch was skipped: an epoch visits every row once", _without_last_batch),
     Mistake("cross_entropy takes logits (it applies log-softmax itself); yours applied softmax first",
             lambda layer, *rest: _probe_epoch(nn.Sequential(layer, nn.Softmax(dim=1)), *rest)),
     Mistake("you returned the sum of the batches' losses; return the mean loss per row",
             lambda *args: sum(_batch_losses(*args)))),
    "For each i in range(0, len(feats), batch_size): slice x and y, loss = F.cross_entropy(layer(x), y), "
    "optimizer.zero_grad(), loss.backward(), optimizer.step(), and add loss.item() * len(x) to a total; "
    "return total / len(feats).",
    run=_run_epoch)


def _summary(accs: list[float]) -> dict:
    """A probe summary as `vwe.results` reads it, from one accuracy per seed (`vwe.evaluate.LinearEval`'s
    mean and sample standard deviation, 0 for one seed)."""
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return {"mean": statistics.fmean(accs), "std": std, "accs": list(accs)}


def _welch_gap(lower: list[float], higher: list[float]) -> tuple[float, float]:
    """(the gap in points, the gap in standard errors of the difference), by `vwe.results.gap`."""
    return results.gap(_summary(lower), _summary(higher))


def _gap_cases() -> list[Case]:
    return [Case("3 seeds each", ([15.1, 15.9, 15.4], [16.2, 16.9, 16.3])),
            Case("5 seeds against 3", ([12.0, 12.6, 11.8, 12.3, 12.9], [13.1, 14.0, 13.3])),
            Case("a higher row that is behind", ([20.5, 21.0, 20.7], [19.9, 20.2, 20.6])),
            Case("probes that do not vary over their seeds", ([10.0, 10.0, 10.0], [12.0, 12.0, 12.0]))]


def _gap_diff(expected: tuple, got: Any, case: Case) -> str | None:
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        return f"your function returned {_a(got)}, expected a pair (points, standard errors)"
    names = ("the gap in points", "the gap in standard errors")
    for name, e, x in zip(names, expected, got, strict=True):
        value = _as_number(x)
        if value is None:
            return f"{name} is {_a(x)}, expected a number"
        if not _same_number(value, e, rtol(torch.float32)):  # torch's default float32 will do
            return f"{name} should be {_num(e)}; yours is {_num(value)}"
    return None


def _gap_with(se: Callable[[list[float], list[float]], float]) -> Callable:
    """The gap with another standard error."""
    def gap(lower, higher):
        diff = statistics.fmean(higher) - statistics.fmean(lower)
        return diff, diff / se(lower, higher)
    return gap


def _se_itself(lower: list[float], higher: list[float]) -> tuple[float, float]:
    points, in_se = _welch_gap(lower, higher)
    return points, points / in_se


welch_gap = Exercise(
    "5.3", "welch_gap",
    "a gap between two probes' accuracies, in points and in Welch's standard errors of the difference",
    _welch_gap, "vwe.results.gap", _gap_cases, _gap_diff,
    (Mistake("you used the population variance (divide by n); Welch's standard error uses each sample's "
             "variance (divide by n - 1): statistics.stdev or torch.std",
             _gap_with(lambda a, b: math.sqrt(statistics.pvariance(a) / len(a)
                                              + statistics.pvariance(b) / len(b)))),
     Mistake("you added the variances without dividing each by its number of seeds: the standard error of a "
             "mean of n seeds is its sd / sqrt(n)",
             _gap_with(lambda a, b: math.sqrt(statistics.variance(a) + statistics.variance(b)))),
     Mistake("you added the two standard errors; add their squares and take the root: "
             "sqrt(s1^2 / n1 + s2^2 / n2)",
             _gap_with(lambda a, b: statistics.stdev(a) / math.sqrt(len(a))
                                    + statistics.stdev(b) / math.sqrt(len(b)))),
     Mistake("the gap runs the wrong way: it is higher minus lower",
             lambda a, b: tuple(-v for v in _welch_gap(a, b))),
     Mistake("the second number is the standard error itself; the gap in standard errors is the gap "
             "divided by it",
             _se_itself)),
    "points = mean(higher) - mean(lower); se = sqrt(var(lower) / n_lower + var(higher) / n_higher) with the "
    "sample variances (statistics.variance); return points and points / se. When se is 0 the gap is "
    "infinitely many standard errors: math.copysign(math.inf, points).")


# ----------------------------------------------------------------------------- 06: errors by place


def _error_per_position(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The squared error of every grid position, averaged over images and pixels: (B, 16, C, 8, 8),
    (B, C, 32, 32) -> (16,). Their mean is the MSE of `Autoencoder.forward_loss`."""
    return ((recon - patches.patchify(images)) ** 2).mean(dim=(0, 2, 3, 4))


def _position_cases() -> list[Case]:
    g = _generator(601)
    return [Case(f"{name} and their reconstructions",
                 (torch.rand(n, 16, 3, 8, 8, generator=g, dtype=dtype), _images(g, n, dtype)))
            for name, n, dtype in (("4 float64 images", 4, torch.float64), ("one image", 1, torch.float64),
                                   ("3 float32 images", 3, torch.float32))]


def _position_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your errors")
    if problem is not None:
        return problem
    bad = _differs(got, expected)
    if not bad.any():
        return None
    k = _first(bad)[0]
    return f"{_position(k)}: expected {_num(expected[k])}, yours is {_num(got[k])}"


error_per_position = Exercise(
    "6.1", "error_per_position",
    "the squared reconstruction error of each of the 16 grid positions, averaged over images and pixels",
    _error_per_position, "the package's error per position (vwe.exercises)", _position_cases, _position_diff,
    (Mistake("you summed over the images: average over them (and over each patch's 3 * 8 * 8 numbers)",
             lambda r, x: _error_per_position(r, x) * len(x)),
     Mistake("the positions run column by column: position k is grid row k // 4, column k % 4",
             lambda r, x: _error_per_position(r, x).view(4, 4).T.flatten()),
     Mistake("that is the absolute error: the reconstruction error here is squared, as in the loss",
             lambda r, x: (r - patches.patchify(x)).abs().mean(dim=(0, 2, 3, 4))),
     Mistake("your targets were cut with a plain reshape, which makes no 8x8 squares: cut them with patchify",
             lambda r, x: ((r - x.reshape(r.shape)) ** 2).mean(dim=(0, 2, 3, 4))),
     Mistake("a square root too many: the mean squared error has none",
             lambda r, x: _error_per_position(r, x).sqrt())),
    "err = (recon - patchify(images)) ** 2 is (B, 16, 3, 8, 8): average it over every axis but the patch "
    "axis, err.mean(dim=(0, 2, 3, 4)).")

KINDS = ("corner", "edge", "interior")
POSITIONS = {kind: [k for k in range(patches.N_PATCHES) if target_kind(k) == kind] for kind in KINDS}


def _errors_by_kind(errors: torch.Tensor) -> dict[str, float]:
    """The mean of (16,) per-position errors over each kind of position (`vwe.plots.target_kind`)."""
    return {kind: float(errors[positions].mean()) for kind, positions in POSITIONS.items()}


def _kind_cases() -> list[Case]:
    g = _generator(602)
    return [Case("16 random errors", (torch.rand(16, generator=g, dtype=torch.float64),)),
            Case("errors 0, 1, ..., 15", (torch.arange(16, dtype=torch.float64),)),
            Case("16 float32 errors", (torch.rand(16, generator=g),))]


def _kind_diff(expected: dict, got: Any, case: Case) -> str | None:
    if not isinstance(got, dict):
        return f"your function returned {_a(got)}, expected a dict {{'corner': ..., 'edge': ..., ...}}"
    if sorted(got) != sorted(expected):
        return f"your dict has the keys {sorted(got)}, expected {sorted(expected)}"
    for kind in KINDS:
        value = _as_number(got[kind])
        if value is None:
            return f"the {kind} value is {_a(got[kind])}, expected a number"
        if not _same_number(value, expected[kind], rtol(case.args[0].dtype)):
            return f"the {kind} mean should be {_num(expected[kind])}; yours is {_num(value)}"
    return None


def _means_over(groups: dict[str, list[int]], reduce: Callable = torch.mean) -> Callable:
    return lambda errors: {kind: float(reduce(errors[idx])) for kind, idx in groups.items()}


CORNERS, EDGES, INTERIOR = (POSITIONS[kind] for kind in KINDS)

errors_by_kind = Exercise(
    "6.2", "errors_by_kind", "the mean of the 16 per-position errors over the corners, edges and interior",
    _errors_by_kind, "the package's kinds (vwe.plots.target_kind)", _kind_cases, _kind_diff,
    (Mistake("your interior is off by one: the interior positions are 5, 6, 9 and 10 (grid rows and "
             "columns 1-2)",
             _means_over({"corner": CORNERS, "edge": EDGES, "interior": [k + 1 for k in INTERIOR]})),
     Mistake("corners and edges are swapped: the corners are 0, 3, 12 and 15 (3 real neighbours), the edges "
             "the other 8 border positions (5 real neighbours)",
             _means_over({"corner": EDGES, "edge": CORNERS, "interior": INTERIOR})),
     Mistake("your edges include the corners: an edge position has 5 real neighbours, a corner (0, 3, 12, "
             "15) has 3",
             _means_over({"corner": CORNERS, "edge": CORNERS + EDGES, "interior": INTERIOR})),
     Mistake("sums, not means: divide by the number of positions of each kind (4 corners, 8 edges, "
             "4 interior)",
             _means_over({"corner": CORNERS, "edge": EDGES, "interior": INTERIOR}, torch.sum))),
    "Group the positions with target_kind(k) (\"corner\", \"edge\" or \"interior\" for k in range(16)) and "
    "take the mean of errors[positions] of each group.")


# ----------------------------------------------------------------------------- 07: k-means, kNN


def _points(g: torch.Generator, n: int, d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, d) random rows of very different lengths (0.2 to 5), so that a dot product is no distance."""
    lengths = 0.2 + 4.8 * torch.rand(n, 1, generator=g, dtype=dtype)
    return torch.randn(n, d, generator=g, dtype=dtype) * lengths


def _assign_cases() -> list[Case]:
    g = _generator(701)
    tie = (torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64),  # each as near to two words
           torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]], dtype=torch.float64))
    return [Case("30 rows and 5 words of 4 features", (_points(g, 30, 4), _points(g, 5, 4))),
            Case("two rows, each as near to two words (ties)", tie),
            Case("one row", (_points(g, 1, 4), _points(g, 5, 4))),
            Case("float32 rows and words", (_points(g, 30, 4, torch.float32),
                                            _points(g, 5, 4, torch.float32)))]


def _squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return ((x[:, None] - centroids[None]) ** 2).sum(-1)  # (N, k)


def _assign_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your words")
    if problem is not None:
        return problem
    if torch.equal(got, expected):
        return None
    i = _first(got != expected)[0]
    d = _squared_distances(*case.args)[i]
    word = int(got[i])
    yours = f"word {word} (squared distance {_num(d[word])})" if 0 <= word < len(d) else f"{word}, no word"
    right = int(expected[i])
    return f"row {i}: expected word {right} (squared distance {_num(d[right])}), yours is {yours}"


nearest_word = Exercise(
    "7.1", "nearest_word", "k-means' assignment step: each row's nearest word (centroid), ties to the lowest",
    lambda x, centroids: words.assign(x, centroids)[0], "vwe.words.assign", _assign_cases, _assign_diff,
    (Mistake("you picked the farthest word: the nearest has the smallest squared distance (argmin)",
             lambda x, c: _squared_distances(x, c).argmax(1)),
     Mistake("you picked the largest dot product; with words of different lengths that is not the nearest: "
             "compare squared distances ||x - c||^2", lambda x, c: (x @ c.T).argmax(1)),
     Mistake("you compared directions (cosine similarity); k-means compares squared distances",
             lambda x, c: (F.normalize(x, dim=1) @ F.normalize(c, dim=1).T).argmax(1)),
     Mistake("a tie must go to the lowest word index, as argmin's first minimum does; yours went to a "
             "higher one",
             lambda x, c: len(c) - 1 - _squared_distances(x, c).flip(1).argmin(1))),
    "d = ((x[:, None] - centroids[None]) ** 2).sum(-1) is (N, k), every row's squared distance to every "
    "word; d.argmin(dim=1) picks the nearest, the first one on a tie.")


def _update_centroids(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """k-means' update step: each word's centroid moves to the mean of its rows; a word no row chose keeps
    its centroid. (N, D), (N,), (k, D) -> (k, D), as `vwe.words.kmeans` does between assignments."""
    counts = torch.bincount(labels, minlength=len(centroids))  # (k,)
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (k, D)
    return torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None].to(x.dtype), centroids)


def _update_cases() -> list[Case]:
    g = _generator(702)
    x, centroids = _points(g, 30, 4), _points(g, 5, 4)
    labels = torch.randint(0, 5, (30,), generator=g)
    labels[labels == 3] = 1  # word 3: no row
    labels[:5] = torch.arange(5) % 3  # words 0, 1, 2 have rows whatever the draw
    every = torch.arange(30) % 5
    return [Case("30 rows, every word chosen", (x, every, centroids)),
            Case("a word no row chose (word 3)", (x, labels, centroids)),
            Case("float32 rows", (x.float(), every, centroids.float()))]


def _update_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your centroids")
    if problem is not None:
        return problem
    bad = _differs(got, expected).any(1)
    if not bad.any():
        return None
    w = _first(bad)[0]
    rows = int((case.args[1] == w).sum())
    values = ", ".join(_num(v) for v in got[w])
    right = ", ".join(_num(v) for v in expected[w])
    return f"word {w} ({rows} rows): expected [{right}], yours is [{values}]"


update_centroids = Exercise(
    "7.2", "update_centroids",
    "k-means' update step: each word to the mean of its rows, a word without rows kept",
    _update_centroids, "the package's update (the step of vwe.words.kmeans)", _update_cases, _update_diff,
    (Mistake("a sum, not a mean: divide each word's sum by its number of rows",
             lambda x, lab, c: torch.where((torch.bincount(lab, minlength=len(c)) > 0)[:, None],
                                           torch.zeros_like(c).index_add_(0, lab, x), c)),
     Mistake("a word no row chose gives nan (0 / 0): keep its old centroid",
             spot=lambda got, expected: _like(got, expected) and bool(got.isnan().any())),
     Mistake("a word no row chose became the zero vector: keep its old centroid (k-means moves only the "
             "words rows chose)", lambda x, lab, c: torch.zeros_like(c).index_add_(0, lab, x)
             / torch.bincount(lab, minlength=len(c)).clamp_min(1)[:, None].to(x.dtype)),
     Mistake("you divided by the number of rows plus one",
             lambda x, lab, c: torch.zeros_like(c).index_add_(0, lab, x)
             / (torch.bincount(lab, minlength=len(c)) + 1)[:, None].to(x.dtype)),
     Mistake("every word got the mean of all the rows: average only the rows whose label is the word",
             lambda x, lab, c: x.mean(0).expand_as(c).clone())),
    "For each word w: rows = x[labels == w]; its new centroid is rows.mean(0) when len(rows) > 0, else its "
    "old centroids[w]. (torch.bincount and index_add_ do all words at once.)")


def _knn_cases() -> list[Case]:
    g = _generator(703)
    centres = torch.randn(4, 8, generator=g, dtype=torch.float64) * 1.5

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 4, (n,), generator=g)
        scale = 0.2 + 4.8 * torch.rand(n, 1, generator=g, dtype=torch.float64)  # lengths 0.2 to 5
        return (centres[labels] + torch.randn(n, 8, generator=g, dtype=torch.float64)) * scale, labels

    (train, train_y), (test, _) = sample(60), sample(20)
    tie = (torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), torch.tensor([1, 0]),
           torch.tensor([[1.0, 1.0]], dtype=torch.float64), 2, 0.07)
    return [Case("two test rows whose 5 neighbours' cosines are set, k=5, temperature 0.07", _set_votes()),
            Case("60 training rows of 4 classes, 20 test rows, k=5, temperature 0.07",
                 (train, train_y, test, 5, 0.07)),
            Case("k=9, temperature 0.5", (train, train_y, test, 9, 0.5)),
            Case("one test row", (train, train_y, test[:1], 5, 0.07)),
            Case("a tie between two classes (k=2)", tie)]


def _set_votes() -> tuple:
    """kNN inputs where the weights decide: test row 0 (axis 0) has 3 neighbours of class 2 at cosine 0.80
    and 2 of class 1 at 0.95 (the temperature makes class 1 win), test row 1 (axis 2) 2 of class 1 at 0.9,
    2 of class 0 at 0.5 and 1 of class 2 at 0.4 (weighted, class 1 wins; counted, a tie, class 0)."""
    rows, labels = [], []
    for (axis, other), votes in (((0, 1), ((2, 0.80), (2, 0.80), (2, 0.80), (1, 0.95), (1, 0.95))),
                                 ((2, 3), ((1, 0.9), (1, 0.9), (0, 0.5), (0, 0.5), (2, 0.4)))):
        for label, cosine in votes:
            row = torch.zeros(4, dtype=torch.float64)
            row[axis], row[other] = cosine, math.sqrt(1 - cosine**2)  # a unit row at that cosine to the axis
            rows.append(row)
            labels.append(label)
    return torch.stack(rows), torch.tensor(labels), torch.eye(4, dtype=torch.float64)[[0, 2]], 5, 0.07


def _knn_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your predictions")
    if problem is not None:
        return problem
    if torch.equal(got, expected):
        return None
    i = _first(got != expected)[0]
    return f"test row {i}: expected class {int(expected[i])}, yours is {int(got[i])}"


def _knn_with(similarity: Callable, weight: Callable, largest: bool = True) -> Callable:
    """A kNN vote with another similarity, vote weight or choice of neighbours."""
    def predict(train, labels, test, k, temperature):
        sims, idx = similarity(test, train).topk(k, dim=1, largest=largest)  # (M, k)
        votes = torch.zeros(len(test), int(labels.max()) + 1, dtype=sims.dtype)
        return votes.scatter_add_(1, labels[idx], weight(sims, temperature)).argmax(1)
    return predict


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def _softmax_weights(sims: torch.Tensor, temperature: float) -> torch.Tensor:
    return ((sims - sims[:, :1]) / temperature).exp()


knn_predict = Exercise(
    "7.3", "knn_predict", "the weighted kNN vote: the k most cosine-similar training rows vote exp(sim / T)",
    lambda train, labels, test, k, temperature: evaluate.knn_classify(train, labels, test, k, temperature),
    "vwe.evaluate.knn_classify", _knn_cases, _knn_diff,
    (Mistake("you ranked the neighbours by dot product: the vote ranks them by cosine similarity (normalise "
             "the rows first)", _knn_with(lambda a, b: a @ b.T, lambda s, t: ((s - s[:, :1]) / t).exp())),
     Mistake("every neighbour's vote counted the same: weigh each by exp(similarity / temperature)",
             _knn_with(_cosine, lambda s, t: torch.ones_like(s))),
     Mistake("you took the k least similar training rows: the neighbours are the most similar (topk's "
             "largest=True)", _knn_with(_cosine, _softmax_weights, largest=False)),
     Mistake("the temperature is missing: each vote weighs exp(similarity / temperature)",
             _knn_with(_cosine, lambda s, t: (s - s[:, :1]).exp()))),
    "sims = normalize(test) @ normalize(train).T is (M, N); sims.topk(k, dim=1) gives each test row's k "
    "neighbours; add exp(sim / temperature) into votes[row, label] (scatter_add_ on a (M, classes) zeros) "
    "and take argmax(dim=1), which sends a tie to the lowest class.")


# ----------------------------------------------------------------------------- 08: nearest images, agreement


def _nearest_images(embeddings: torch.Tensor, query: int, k: int) -> torch.Tensor:
    """The k images most cosine-similar to image `query`, itself left out, best first: (N, E) -> (k,)."""
    return words.nearest_neighbours(embeddings[query:query + 1], embeddings, k=k,
                                    exclude_self=torch.tensor([query]))[1][0]


def _embedding_cases() -> list[Case]:
    g = _generator(801)
    emb = _points(g, 20, 12)
    return [Case("20 embeddings, query 0, k=5", (emb, 0, 5)),
            Case("query 7, k=3", (emb, 7, 3)),
            Case("k=1", (emb, 19, 1)),
            Case("float32 embeddings", (emb.float(), 3, 5)),
            Case("two images, k=1", (emb[:2], 1, 1))]


def _nearest_diff(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    problem = _form(got, expected, "your neighbours")
    if problem is not None:
        return problem
    if torch.equal(got, expected):
        return None
    emb, query, _ = case.args
    sims = _cosine(emb[query:query + 1], emb)[0]
    i = _first(got != expected)[0]
    image = int(got[i])
    yours = f"image {image} (cosine {_num(sims[image])})" if 0 <= image < len(emb) else f"{image}, no image"
    right = int(expected[i])
    return f"neighbour {i}: expected image {right} (cosine {_num(sims[right])}), yours is {yours}"


def _ranked(score: Callable[[torch.Tensor, int], torch.Tensor], largest: bool = True, self_too: bool = False
            ) -> Callable:
    """Nearest images by another score, order or with the query itself."""
    def nearest(emb, query, k):
        s = score(emb, query).clone()
        if not self_too:
            s[query] = -math.inf if largest else math.inf
        return s.topk(k, largest=largest).indices
    return nearest


def _cosine_to(emb: torch.Tensor, query: int) -> torch.Tensor:
    return _cosine(emb[query:query + 1], emb)[0]


nearest_images = Exercise(
    "8.1", "nearest_images", "the k images most cosine-similar to a query, itself left out, best first",
    _nearest_images, "vwe.words.nearest_neighbours", _embedding_cases, _nearest_diff,
    (Mistake("your first neighbour is the query itself: leave it out", _ranked(_cosine_to, self_too=True)),
     Mistake("you ranked by dot product: long vectors win; normalise the embeddings first (cosine "
             "similarity)", _ranked(lambda e, q: e @ e[q])),
     Mistake("your list holds the least similar images: take the largest similarities (topk's largest=True)",
             _ranked(_cosine_to, largest=False)),
     Mistake("you ranked by Euclidean distance; cosine similarity ignores the embeddings' lengths",
             _ranked(lambda e, q: (e - e[q]).norm(dim=1), largest=False)),
     Mistake("the right images in the wrong order: the most similar comes first",
             lambda e, q, k: _nearest_images(e, q, k).flip(0))),
    "unit = F.normalize(embeddings, dim=1); sims = unit @ unit[query] is every image's cosine to the query; "
    "set sims[query] below any cosine (-2) and take sims.topk(k).indices.")


def _class_agreement(embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """The share (%) of every image's k cosine-nearest other images that share its label."""
    idx = words.nearest_neighbours(embeddings, embeddings, k=k, exclude_self=True)[1]  # (N, k)
    return 100.0 * (labels[idx] == labels[:, None]).double().mean().item()


def _agreement_cases() -> list[Case]:
    g = _generator(802)
    centres = torch.randn(3, 10, generator=g, dtype=torch.float64)
    labels = torch.arange(24) % 3
    emb = (centres[labels] + 0.9 * torch.randn(24, 10, generator=g, dtype=torch.float64)) * (
        0.2 + 4.8 * torch.rand(24, 1, generator=g, dtype=torch.float64))
    return [Case("24 embeddings of 3 classes, k=5", (emb, labels, 5)),
            Case("k=1", (emb, labels, 1)),
            Case("float32 embeddings, k=3", (emb.float(), labels, 3))]


def _agreement_diff(expected: float, got: Any, case: Case) -> str | None:
    value = _as_number(got)
    if value is None:
        return f"your function returned {_a(got)}, expected a number (a percentage)"
    if _same_number(value, expected, rtol(torch.float32)):  # a mean of <= 2^13 0/1 values, in float32 or 64
        return None
    return f"the agreement should be {_num(expected)} %; yours is {_num(value)}"


def _agreement_of(nearest: Callable[[torch.Tensor, int], torch.Tensor], share: Callable) -> Callable:
    return lambda emb, labels, k: share(labels[nearest(emb, k)] == labels[:, None])


def _nearest_of_all(emb: torch.Tensor, k: int, self_too: bool = False, cosine: bool = True) -> torch.Tensor:
    sims = _cosine(emb, emb) if cosine else emb @ emb.T
    if not self_too:
        sims.fill_diagonal_(-math.inf)
    return sims.topk(k, dim=1).indices


def _percent(same: torch.Tensor) -> float:
    return 100.0 * same.double().mean().item()


class_agreement = Exercise(
    "8.2", "class_agreement", "the share (%) of each image's k nearest other images that share its class",
    _class_agreement, "the package's agreement (vwe.words.nearest_neighbours)", _agreement_cases,
    _agreement_diff,
    (Mistake("each image counted itself among its neighbours: leave it out",
             _agreement_of(lambda e, k: _nearest_of_all(e, k, self_too=True), _percent)),
     Mistake("a fraction, not a percentage: multiply by 100",
             lambda e, lab, k: _class_agreement(e, lab, k) / 100),
     Mistake("you counted the images with at least one neighbour of their class; count the share of "
             "neighbours that share it", _agreement_of(_nearest_of_all, lambda same: _percent(same.any(1)))),
     Mistake("you ranked by dot product: long vectors win; normalise the embeddings first (cosine "
             "similarity)", _agreement_of(lambda e, k: _nearest_of_all(e, k, cosine=False), _percent))),
    "Find every image's k nearest others as in exercise 8.1, all at once: sims = unit @ unit.T with the "
    "diagonal set to -2, nearest = sims.topk(k, dim=1).indices (N, k); then labels[nearest] == "
    "labels[:, None] is True where a neighbour shares the class: its mean, times 100.")


# ----------------------------------------------------------------------------- the notebooks' exercises

EXERCISES = (patchify, unpatchify, neighbour_table, gather_context, shared_encoding, decode,
             reconstruction_loss, train_step, standardize, probe_epoch, welch_gap, error_per_position,
             errors_by_kind, nearest_word, update_centroids, knn_predict, nearest_images, class_agreement)


def of_notebook(notebook: str) -> list[Exercise]:
    """The exercises of notebook "01" ... "08", in order."""
    return [e for e in EXERCISES if e.notebook == notebook]


def summary(notebook: str) -> None:
    """Print the state of a notebook's exercises at a glance: done, not done yet, not right yet."""
    mine = of_notebook(notebook)
    done = sum(e.status == DONE for e in mine)
    print(f"Notebook {notebook}: {done} of {len(mine)} exercises done")
    width = max(len(e.name) for e in mine)
    for e in mine:
        print(f"  {'✓' if e.status == DONE else '·'} {e.number} {e.name:<{width}}  {e.status}")
