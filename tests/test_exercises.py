"""The notebooks' exercises: every checker passes the package's answer and the course notebook's own
solution (read from the notebook, so the tested solution is the one shipped), reports a stub as not done
yet, and rejects every planted wrong answer of its catalogue with a message that names the mistake; the
package's answers agree with the library code they stand for (the student notebooks that stub the
solutions out, `vwe.student`, in test_student.py; tests/notebooks/test_notebooks.py runs them under nbval).
"""

from __future__ import annotations

import ast
import copy
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from statistics import pvariance, variance

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vwe import evaluate, exercises, models, patches, student, words
from vwe.data import to_float
from vwe.exercises import DONE, EXERCISES, NOT_DONE, WRONG
from vwe.pretrain import PretrainStep

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BY_NAME = {e.name: e for e in EXERCISES}


def notebook_solutions(path: Path) -> dict[str, Callable]:
    """The functions a course notebook's solution cells define, run with the notebook's own imports (and
    the solutions before them, which a later solution may call)."""
    nb = nbformat.read(path, as_version=4)
    namespace: dict = {}
    imports = [ast.get_source_segment(cell.source, node) for cell in nb.cells if cell.cell_type == "code"
               for node in ast.parse(cell.source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec("\n".join(imports), namespace)  # noqa: S102 - the notebook's own import lines
    solved = []
    for cell in student.solution_cells(nb, path.name):
        exec(cell.source, namespace)  # noqa: S102 - the shipped solution, as the notebook runs it
        solved += student.defined_functions(cell.source)
    return {name: namespace[name] for name in solved}  # not the library's functions the notebook imports


SOLUTIONS = {name: fn for path in NOTEBOOKS for name, fn in notebook_solutions(path).items()}


def verdict(exercise: exercises.Exercise, fn: Callable, capsys) -> tuple[str, str, Callable]:
    """(status, what was printed, what the notebook goes on with) of one check."""
    returned = exercise.check(fn)
    return exercise.status, capsys.readouterr().out, returned


# ----------------------------------------------------------------------------- right answers


@pytest.mark.parametrize("exercise", EXERCISES, ids=[e.name for e in EXERCISES])
def test_the_package_answer_passes(exercise):
    status, message = exercise.verdict(exercise.reference)
    assert status == DONE, message
    assert message.startswith(f"✓ Exercise {exercise.number} `{exercise.name}`: right on ")


def test_a_check_run_again_on_what_it_handed_back_says_so(capsys):
    """After a wrong answer the name holds the package's function: checking it again must not pass it."""
    patchify = exercises.patchify.check(WRONG_ANSWERS["patchify"][0][1])
    capsys.readouterr()
    assert exercises.patchify.check(patchify) is patchify
    assert exercises.patchify.status == WRONG  # unchanged
    assert capsys.readouterr().out == ("… Exercise 1.1 `patchify`: this is the package's function, which the "
                                       "last check handed back; run the cell that defines yours first, then "
                                       "this one.\n")


@pytest.mark.parametrize("exercise", EXERCISES, ids=[e.name for e in EXERCISES])
def test_the_notebook_solution_passes_and_is_used(exercise, capsys):
    solution = SOLUTIONS[exercise.name]
    assert solution is not exercise.reference
    status, out, returned = verdict(exercise, solution, capsys)
    assert status == DONE, out
    assert returned is solution  # the notebook goes on with the student's function


@pytest.mark.parametrize("exercise", EXERCISES, ids=[e.name for e in EXERCISES])
def test_a_stub_is_not_done_yet_and_the_package_takes_over(exercise, capsys):
    def stub(*args):
        raise NotImplementedError("your code here")

    status, out, returned = verdict(exercise, stub, capsys)
    assert status == NOT_DONE
    assert out == (f"… Exercise {exercise.number} `{exercise.name}`: not done yet. The notebook goes on with "
                   f"{exercise.uses}. ex.{exercise.name}.hint() gives a hint, ex.{exercise.name}.solution() "
                   "the answer.\n")
    assert returned is exercise.reference


def _unfold_patchify(x):
    B, C = x.shape[:2]
    return x.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(B, 16, C, 8, 8)


def _loop_table():
    table = []
    for k in range(16):
        r, c = k // 4, k % 4
        table.append([(r + dr) * 4 + (c + dc) if r + dr in range(4) and c + dc in range(4) else -1
                      for dr, dc in patches.OFFSETS])
    return torch.tensor(table)


def _loop_gather(p):
    out = torch.zeros(*p.shape[:2], 8, *p.shape[2:], dtype=p.dtype)
    for k in range(16):
        for j, m in enumerate(patches.neighbour_table()[k].tolist()):
            if m >= 0:
                out[:, k, j] = p[:, m]
    return out


def _cosines(e, q):
    return F.normalize(e, dim=1) @ F.normalize(e[q], dim=0)


def _torch_gap(a, b):
    """In torch's float32, where x / 0 is inf."""
    points = b.mean() - a.mean()
    return points.item(), (points / (a.var() / len(a) + b.var() / len(b)).sqrt()).item()


def _two_step_standardize(train, test):
    mean, sd = train.mean(0), train.std(0)
    return (train - mean) / (sd + 1e-6), (test - mean) / (sd + 1e-6)  # eps elsewhere: still right


# Other right ways to write an exercise (another op, another order of the sums, eps elsewhere): a checker
# must accept them, so its tolerance is no tighter than the arithmetic allows.
OTHER_RIGHT = {
    "patchify": _unfold_patchify,
    "neighbour_table": _loop_table,
    "gather_context": _loop_gather,
    "reconstruction_loss": lambda r, x: F.mse_loss(r, patches.patchify(x)),
    "standardize": _two_step_standardize,
    "welch_gap": lambda a, b: _torch_gap(torch.tensor(a), torch.tensor(b)),
    "nearest_word": lambda x, c: torch.cdist(x, c).argmin(1),
    # the query is its own most similar image (cosine 1): the k after it
    "nearest_images": lambda e, q, k: _cosines(e, q).topk(k + 1).indices[1:],
    "error_per_position":
        lambda r, x: F.mse_loss(r, patches.patchify(x), reduction="none").mean((0, 2, 3, 4)),
}


@pytest.mark.parametrize("name", OTHER_RIGHT)
def test_another_right_answer_passes(name, capsys):
    status, out, _ = verdict(BY_NAME[name], OTHER_RIGHT[name], capsys)
    assert status == DONE, out


# ----------------------------------------------------------------------------- the catalogue of wrong answers
# For each exercise, answers a student could plausibly write, each with words its message must hold. Each
# is written as a student would write it, not from the checkers' own list of mistakes.


def _grid(x):
    B, C = x.shape[:2]
    return x.reshape(B, C, 4, 8, 4, 8)


def _patches(p):
    B, _, C = p.shape[:3]
    return p.reshape(B, 4, 4, C, 8, 8)


def _patchified(*order):
    """patchify with the grid's axes permuted to `order` (the right one: 0, 2, 4, 1, 3, 5)."""
    return lambda x: _grid(x).permute(*order).reshape(len(x), 16, x.shape[1], 8, 8)


def _unpatchified(*order):
    """unpatchify with the patches' axes permuted to `order` (the right one: 0, 3, 1, 4, 2, 5)."""
    return lambda p: _patches(p).permute(*order).reshape(len(p), p.shape[2], 32, 32)


SIDES_FIRST = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _squares(r, x):
    return (r - patches.patchify(x)) ** 2


def _scaled(x, by):
    return (x - by.mean(0)) / by.std(0)


def _distances(x, c):
    return ((x[:, None] - c[None]) ** 2).sum(-1)


def _table(offsets=patches.OFFSETS, fill=-1, inside=lambda r, c: 0 <= r < 4 and 0 <= c < 4,
           place=lambda k: divmod(k, 4), dtype=torch.long):
    table = torch.full((16, 8), fill, dtype=dtype)
    for k in range(16):
        row, col = place(k)
        for j, (dr, dc) in enumerate(offsets):
            r, c = row + dr, col + dc
            if inside(r, c):
                table[k, j] = 4 * r + c
    return table


def _gather_with(fill, table=None):
    def gather(p):
        t = patches.neighbour_table() if table is None else table
        with_fill = torch.cat([p, fill(p[:, :1])], dim=1)
        return with_fill[:, torch.where(t < 0, 16, t)]
    return gather


def _rolled(p):
    grid = p.view(len(p), 4, 4, *p.shape[2:])
    slots = [torch.roll(grid, shifts=(-dr, -dc), dims=(1, 2)) for dr, dc in patches.OFFSETS]
    return torch.stack(slots, dim=3).flatten(1, 2)


def _clamped(p):
    index = torch.tensor([[min(max(k // 4 + dr, 0), 3) * 4 + min(max(k % 4 + dc, 0), 3)
                           for dr, dc in patches.OFFSETS] for k in range(16)])
    return p[:, index]


def _looped_float32(p):
    out = torch.zeros(*p.shape[:2], 8, *p.shape[2:])  # float32, whatever the patches' dtype
    table = patches.neighbour_table()
    for k in range(16):
        for j in range(8):
            if table[k, j] >= 0:
                out[:, k, j] = p[:, table[k, j]]
    return out


def _features(tower, p):
    return tower(p.flatten(0, 1)).view(len(p), 16, -1)


def _two_calls(tower, p):
    zero = tower(torch.zeros(1, *p.shape[2:], dtype=p.dtype))[0]
    return patches.gather_neighbours(_features(tower, p), zero).flatten(2)


def _one_call(tower, p):
    feats = tower(torch.cat([p.flatten(0, 1), torch.zeros(1, *p.shape[2:], dtype=p.dtype)]))
    return patches.gather_neighbours(feats[:-1].view(len(p), 16, -1), feats[-1])  # (B, 16, 8, D)


def _steps(order):
    """A training step written in the order of `order`'s letters: z zero_grad, l loss, b backward, s step."""
    def step(model, optimizer, x):
        loss = None
        for letter in order:
            if letter == "z":
                optimizer.zero_grad()
            elif letter == "l":
                loss = model.forward_loss(x)
            elif letter == "b":
                loss.backward()
            elif letter == "s":
                optimizer.step()
        return loss.detach()
    return step


def _evaluating_step(model, optimizer, x):
    model.eval()
    return _steps("zlbs")(model, optimizer, x)


def _probe(loss_of=F.cross_entropy, zero=True, stop=lambda n, b: n, total="rows"):
    def epoch(layer, optimizer, feats, labels, batch_size):
        losses, rows = [], []
        for i in range(0, stop(len(feats), batch_size), batch_size):
            x, y = feats[i:i + batch_size], labels[i:i + batch_size]
            loss = loss_of(layer(x), y)
            if zero:
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            rows.append(len(x))
        if total == "batches":
            return sum(losses) / len(losses)
        if total == "sum":
            return sum(losses)
        return sum(v * n for v, n in zip(losses, rows, strict=True)) / len(feats)
    return epoch


def _gap(se):
    def gap(lower, higher):
        points = statistics.fmean(higher) - statistics.fmean(lower)
        return points, points / se(lower, higher)
    return gap


def _kinds(corner, edge, interior, reduce=lambda v: v.mean()):
    return lambda e: {"corner": reduce(e[corner]).item(), "edge": reduce(e[edge]).item(),
                      "interior": reduce(e[interior]).item()}


CORNER, EDGE, INTERIOR = [0, 3, 12, 15], [1, 2, 4, 7, 8, 11, 13, 14], [5, 6, 9, 10]


def _ties_to_highest(x, c):
    d = _distances(x, c)
    best = torch.zeros(len(x), dtype=torch.long)
    for i in range(len(x)):
        for j in range(len(c)):
            if d[i, j] <= d[i, best[i]]:  # <= where < belongs: a tie moves on to the higher word
                best[i] = j
    return best


def _centroids(divide, empty="keep"):
    def update(x, labels, c):
        k = len(c)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)[:, None].to(x.dtype)
        new = divide(sums, counts)
        return torch.where(counts > 0, new, c) if empty == "keep" else new
    return update


def _vote(similarity=lambda a, b: F.normalize(a, dim=1) @ F.normalize(b, dim=1).T,
          weight=lambda s, t: (s / t).exp(), largest=True):
    def predict(train, labels, test, k, temperature):
        sims, idx = similarity(test, train).topk(k, dim=1, largest=largest)
        votes = torch.zeros(len(test), int(labels.max()) + 1, dtype=sims.dtype)
        votes.scatter_add_(1, labels[idx], weight(sims, temperature))
        return votes.argmax(1)
    return predict


def _nearest(score, largest=True, keep_self=False):
    def nearest(e, q, k):
        s = score(e, q)
        if not keep_self:
            s[q] = -math.inf if largest else math.inf
        return s.topk(k, largest=largest).indices
    return nearest


def _cos_to(e, q):
    return F.normalize(e, dim=1) @ F.normalize(e, dim=1)[q]


def _agreement(normalise=True, keep_self=False, share=lambda same: same.float().mean().item() * 100):
    def agreement(e, labels, k):
        u = F.normalize(e, dim=1) if normalise else e
        sims = u @ u.T
        if not keep_self:
            sims.fill_diagonal_(-math.inf)
        nearest = sims.topk(k, dim=1).indices
        return share(labels[nearest] == labels[:, None])
    return agreement


WRONG_ANSWERS: dict[str, list[tuple[str, Callable, tuple[str, ...]]]] = {
    "patchify": [
        ("rows and columns swapped", _patchified(0, 4, 2, 1, 3, 5),
         ("rows and columns are swapped", "yours holds rows 8-15, columns 0-7",
          "patch 1 of image 0 should hold rows 0-7, columns 8-15 of the image")),
        ("a reshape without the permute", lambda x: x.reshape(len(x), 16, x.shape[1], 8, 8),
         ("a reshape alone",)),
        ("each patch transposed", _patchified(0, 2, 4, 1, 5, 3),
         ("each patch is transposed", "rows 0-7, columns 0-7, transposed")),
        ("channels last", _patchified(0, 2, 4, 3, 5, 1),
         ("the channels ended up last",)),
        ("three channels written in",
         lambda x: x.reshape(len(x), 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(len(x), 16, 3, 8, 8),
         ("raised RuntimeError on 2 one-channel float64 images (2, 1, 32, 32): "
          "shape '[2, 3, 4, 8, 4, 8]' is invalid for input of size 2048",)),
        ("the grid axes not merged", lambda x: _grid(x).permute(0, 2, 4, 1, 3, 5),
         ("shape (4, 4, 4, 3, 8, 8), expected (4, 16, 3, 8, 8)", "the right number of values")),
    ],
    "unpatchify": [
        ("rows and columns swapped", _unpatchified(0, 3, 2, 4, 1, 5),
         ("rows and columns are swapped",
          "rows 0-7, columns 8-15 of image 0 should be patch 1; yours holds patch 4")),
        ("a reshape without the permute", lambda p: p.reshape(len(p), p.shape[2], 32, 32),
         ("a reshape alone",)),
        ("the image transposed", _unpatchified(0, 3, 2, 5, 1, 4),
         ("the image came out transposed",)),
        ("each patch transposed", _unpatchified(0, 3, 1, 5, 2, 4),
         ("each patch went in transposed", "yours holds patch 0, transposed")),
    ],
    "neighbour_table": [
        ("16 for outside", lambda: _table(fill=16),
         ("must say -1",)),
        ("row and column 0 outside", lambda: _table(inside=lambda r, c: 0 < r < 4 and 0 < c < 4),
         ("off by one at the border", "target 0 (corner), slot 4 (right): expected patch 1, yours says -1")),
        ("rows and columns swapped", lambda: _table(place=lambda k: (k % 4, k // 4)),
         ("rows and columns are swapped",)),
        ("offsets written (dcol, drow)", lambda: _table(offsets=[(dc, dr) for dr, dc in patches.OFFSETS]),
         ("rows and columns are swapped",)),
        ("the sides before the corners", lambda: _table(offsets=SIDES_FIRST),
         ("the right neighbours in the wrong slots",)),
        ("the 3x3 block with its centre", lambda: _table(offsets=[(j // 3 - 1, j % 3 - 1) for j in range(8)]),
         ("slot 4 holds the target itself",)),
        ("row and column 4 inside", lambda: _table(inside=lambda r, c: 0 <= r <= 4 and 0 <= c <= 4),
         ("neighbours outside the grid were kept",)),
        ("a float table", lambda: _table(dtype=torch.float32),
         ("torch.float32, expected torch.int64: integers",)),
    ],
    "gather_context": [
        ("ones for the zero patch", _gather_with(torch.ones_like),
         ("the border holds ones instead of zeros", "should be a zero patch; yours is a patch of ones")),
        ("wrapped around with torch.roll", _rolled,
         ("wrap around", "yours is patch 15")),
        ("the border clamped", _clamped,
         ("repeats the nearest edge patch",)),
        ("the slots backwards", _gather_with(torch.zeros_like, patches.neighbour_table().flip(1)),
         ("the slots run backwards",)),
        ("a zero patch without its batch axis", lambda p: torch.cat([p, torch.zeros(3, 8, 8)], dim=1),
         ("raised RuntimeError",)),
        ("float32 contexts of uint8 patches", _looped_float32,
         ("on the patches of 3 uint8 images", "torch.float32, expected torch.uint8: the input's dtype")),
    ],
    "shared_encoding": [
        ("zeros for the zero patch's features",
         lambda t, p: patches.gather_neighbours(_features(t, p), torch.zeros(64, dtype=p.dtype)).flatten(2),
         ("the border slots hold zeros",)),
        ("the zero patch in a call of its own", _two_calls,
         ("the numbers are right", "ran 2 time(s)")),
        ("the literal encoding", lambda t, p: t(patches.gather_context(p).flatten(0, 2)).view(len(p), 16, -1),
         ("the tower ran on every context patch",)),
        ("feature by feature", lambda t, p: _one_call(t, p).transpose(2, 3).flatten(2),
         ("feature by feature",)),
        ("averaged like CBOW", lambda t, p: _one_call(t, p).mean(2),
         ("you averaged the 8 context features", "shape (2, 16, 64), expected (2, 16, 512)")),
    ],
    "decode": [
        ("images and patches mixed up",
         lambda d, z: d(z.transpose(0, 1).reshape(-1, z.shape[-1])).view(*z.shape[:2], 3, 8, 8),
         ("images and patches are mixed up",
          "out[0, 1] must be the decoder's output for z[0, 1]; yours is that of z[1, 0]")),
        ("the decoder's rows not viewed back", lambda d, z: d(z.reshape(-1, z.shape[-1])),
         ("your output has the decoder's shape (32, 3, 8, 8)",)),
        ("channels last",
         lambda d, z: d(z.reshape(-1, z.shape[-1])).view(*z.shape[:2], 8, 8, 3).permute(0, 1, 4, 2, 3),
         ("the pixels are scrambled",)),
        ("the embeddings flattened per image", lambda d, z: d(z.flatten(1)).view(*z.shape[:2], 3, 8, 8),
         ("raised RuntimeError", "mat1 and mat2 shapes cannot be multiplied")),
    ],
    "reconstruction_loss": [
        ("a sum", lambda r, x: _squares(r, x).sum(),
         ("a sum, not a mean", "times the right one")),
        ("targets by reshape", lambda r, x: ((r - x.reshape(r.shape)) ** 2).mean(),
         ("plain reshape",)),
        ("the absolute error", lambda r, x: (r - patches.patchify(x)).abs().mean(),
         ("the absolute error",)),
        ("a Python float", lambda r, x: _squares(r, x).mean().item(),
         ("your loss is a Python float", "without .item()")),
        ("only the interior", lambda r, x: _squares(r, x)[:, [5, 6, 9, 10]].mean(),
         ("only the 4 interior targets",)),
        ("detached", lambda r, x: _squares(r.detach(), x).mean(),
         ("carries no gradient",)),
        ("a square root", lambda r, x: _squares(r, x).mean().sqrt(),
         ("a square root too many",)),
        ("summed over the targets", lambda r, x: _squares(r, x).mean((0, 2, 3, 4)).sum(),
         ("summed over the 16 targets",)),
    ],
    "train_step": [
        ("no zero_grad", _steps("lbs"),
         ("the gradients add up from step to step",)),
        ("step before backward, gradients zeroed", _steps("zlsb"),
         ("the weights never moved",)),
        ("step first", _steps("szlb"),
         ("optimizer.step() ran before loss.backward()",)),
        ("step between the loss and backward", _steps("lsb"),
         ("raised RuntimeError", "optimizer.step() ran between the loss and loss.backward()")),
        ("zero_grad between backward and step", _steps("lbzs"),
         ("the weights never moved",)),
        ("the loss of the updated model", lambda m, o, x: _steps("zlbsl")(m, o, x),
         ("the loss of the updated model",)),
        ("eval mode", _evaluating_step,
         ("the model ran in eval mode",)),
        ("a Python float", lambda m, o, x: _steps("zlbs")(m, o, x).item(),
         ("returned a Python float",)),
    ],
    "standardize": [
        ("the test set's own statistics", lambda tr, te: tuple((x - x.mean(0)) / x.std(0) for x in (tr, te)),
         ("with the test set's own statistics",)),
        ("statistics of both sets", lambda tr, te: tuple(_scaled(x, torch.cat([tr, te])) for x in (tr, te)),
         ("your statistics include the test features",)),
        ("no eps", lambda tr, te: (_scaled(tr, tr), _scaled(te, tr)),
         ("on a constant feature (column 2)", "a constant feature gives nan or inf")),
        ("the population sd",
         lambda tr, te: tuple((x - tr.mean(0)) / tr.std(0, correction=0) for x in (tr, te)),
         ("population standard deviation",)),
        ("each row", lambda tr, te: tuple(_scaled(x.T, x.T).T for x in (tr, te)),
         ("you standardised each row",)),
        ("the training features only", lambda tr, te: _scaled(tr, tr),
         ("your function returned a Tensor, expected a pair",)),
    ],
    "probe_epoch": [
        ("the mean of the batches' losses", _probe(total="batches"),
         ("averaged the batches' mean losses",)),
        ("no zero_grad", _probe(zero=False),
         ("the gradients add up from batch to batch",)),
        ("the last batch dropped", _probe(stop=lambda n, b: n - b + 1),
         ("the last, short batch was skipped",)),
        ("softmax before cross_entropy", _probe(loss_of=lambda z, y: F.cross_entropy(z.softmax(1), y)),
         ("applied softmax first",)),
        ("the sum of the losses", _probe(total="sum"),
         ("the sum of the batches' losses",)),
        ("the loss in a list", lambda *a: [_probe()(*a)],
         ("your epoch returned a list of 1",)),
        ("the weights of a fresh layer", lambda layer, *a: _probe()(copy.deepcopy(layer), *a),
         ("after the epoch, the layer's weight moved by 0",)),
    ],
    "welch_gap": [
        ("the population variance", _gap(lambda a, b: (pvariance(a) / len(a) + pvariance(b) / len(b)) ** 0.5),
         ("the population variance",)),
        ("variances not divided by n", _gap(lambda a, b: math.sqrt(variance(a) + variance(b))),
         ("without dividing each by its number of seeds",)),
        ("standard errors added", _gap(lambda a, b: sum((variance(v) / len(v)) ** 0.5 for v in (a, b))),
         ("you added the two standard errors",)),
        ("lower minus higher", lambda a, b: tuple(-v for v in exercises.welch_gap.reference(a, b)),
         ("the gap runs the wrong way",)),
        ("no guard for no spread", _gap(lambda a, b: math.sqrt(variance(a) / len(a) + variance(b) / len(b))),
         ("raised ZeroDivisionError on probes that do not vary over their seeds",)),
    ],
    "error_per_position": [
        ("summed over the images", lambda r, x: _squares(r, x).mean((2, 3, 4)).sum(0),
         ("you summed over the images",)),
        ("positions column by column", lambda r, x: _squares(r, x).mean((0, 2, 3, 4)).view(4, 4).T.flatten(),
         ("the positions run column by column",)),
        ("the absolute error", lambda r, x: (r - patches.patchify(x)).abs().mean((0, 2, 3, 4)),
         ("absolute error",)),
        ("one error per image", lambda r, x: _squares(r, x).mean((1, 2, 3, 4)),
         ("shape (4,), expected (16,)",)),
        ("targets by reshape", lambda r, x: ((r - x.reshape(r.shape)) ** 2).mean((0, 2, 3, 4)),
         ("plain reshape",)),
    ],
    "errors_by_kind": [
        ("the interior one place over", _kinds(CORNER, EDGE, [6, 7, 10, 11]),
         ("your interior is off by one",)),
        ("corners and edges swapped", _kinds(EDGE, CORNER, INTERIOR),
         ("corners and edges are swapped",)),
        ("edges with the corners", _kinds(CORNER, CORNER + EDGE, INTERIOR),
         ("your edges include the corners",)),
        ("sums", _kinds(CORNER, EDGE, INTERIOR, reduce=lambda v: v.sum()),
         ("sums, not means",)),
        ("a list", lambda e: [e[CORNER].mean(), e[EDGE].mean(), e[INTERIOR].mean()],
         ("expected a dict",)),
    ],
    "nearest_word": [
        ("the farthest word", lambda x, c: _distances(x, c).argmax(1),
         ("the farthest word",)),
        ("the largest dot product", lambda x, c: (x @ c.T).argmax(1),
         ("the largest dot product",)),
        ("cosine similarity", lambda x, c: (F.normalize(x, dim=1) @ F.normalize(c, dim=1).T).argmax(1),
         ("you compared directions",)),
        ("<= in a loop", _ties_to_highest,
         ("a tie must go to the lowest word index",)),
        ("argmin over the rows", lambda x, c: _distances(x, c).argmin(0),
         ("shape (5,), expected (30,)",)),
    ],
    "update_centroids": [
        ("sums", _centroids(lambda s, n: s),
         ("a sum, not a mean",)),
        ("0 / 0 for an empty word", _centroids(lambda s, n: s / n, empty="nan"),
         ("on a word no row chose (word 3)", "a word no row chose gives nan")),
        ("zeros for an empty word", _centroids(lambda s, n: s / n.clamp(min=1), empty="zero"),
         ("became the zero vector",)),
        ("divided by n + 1", _centroids(lambda s, n: s / (n + 1)),
         ("the number of rows plus one",)),
        ("every word the mean of all rows", lambda x, labels, c: x.mean(0).repeat(len(c), 1),
         ("the mean of all the rows",)),
    ],
    "knn_predict": [
        ("dot products",
         _vote(similarity=lambda a, b: a @ b.T, weight=lambda s, t: ((s - s[:, :1]) / t).exp()),
         ("ranked the neighbours by dot product",)),
        ("a plain majority", _vote(weight=lambda s, t: torch.ones_like(s)),
         ("every neighbour's vote counted the same",)),
        ("the least similar", _vote(largest=False),
         ("the k least similar training rows",)),
        ("no temperature", _vote(weight=lambda s, t: s.exp()),
         ("the temperature is missing",)),
    ],
    "nearest_images": [
        ("the query itself kept", _nearest(_cos_to, keep_self=True),
         ("your first neighbour is the query itself",)),
        ("dot products", _nearest(lambda e, q: e @ e[q]),
         ("you ranked by dot product",)),
        ("the least similar", _nearest(_cos_to, largest=False),
         ("the least similar images",)),
        ("Euclidean distance", _nearest(lambda e, q: (e - e[q]).norm(dim=1), largest=False),
         ("you ranked by Euclidean distance",)),
        ("worst first", lambda e, q, k: _nearest(_cos_to)(e, q, k).flip(0),
         ("the most similar comes first",)),
    ],
    "class_agreement": [
        ("itself among its neighbours", _agreement(keep_self=True),
         ("each image counted itself",)),
        ("a fraction", _agreement(share=lambda same: same.float().mean().item()),
         ("a fraction, not a percentage",)),
        ("any neighbour of its class", _agreement(share=lambda same: same.any(1).float().mean().item() * 100),
         ("at least one neighbour of their class",)),
        ("dot products", _agreement(normalise=False),
         ("you ranked by dot product",)),
    ],
}
CATALOGUE = [(name, *answer) for name, answers in WRONG_ANSWERS.items() for answer in answers]


def test_every_exercise_has_at_least_three_planted_wrong_answers():
    assert sorted(WRONG_ANSWERS) == sorted(BY_NAME)
    assert all(len(answers) >= 3 for answers in WRONG_ANSWERS.values())


@pytest.mark.parametrize("name,what,fn,words", CATALOGUE, ids=[f"{c[0]}-{c[1]}" for c in CATALOGUE])
def test_a_planted_wrong_answer_is_rejected_and_named(name, what, fn, words, capsys):
    exercise = BY_NAME[name]
    status, out, returned = verdict(exercise, fn, capsys)
    assert status == WRONG, out
    assert out.startswith(f"✗ Exercise {exercise.number} `{name}`")
    for word in words:
        assert word in out, f"{what}: the message does not say {word!r}:\n{out}"
    assert f"The notebook goes on with {exercise.uses}." in out
    assert "Traceback" not in out
    assert returned is exercise.reference  # the rest of the notebook runs on the package's function


def test_the_checkers_own_mistakes_are_each_named(capsys):
    """Every classic mistake a checker knows as a function is recognised as itself, by its own words."""
    for exercise in EXERCISES:
        for mistake in exercise.mistakes:
            if mistake.wrong is not None:
                status, out, _ = verdict(exercise, mistake.wrong, capsys)
                assert status == WRONG and mistake.says in out, (exercise.name, mistake.says, out)


# ----------------------------------------------------------------------------- how a check behaves


def test_an_exception_is_reported_in_words_with_its_line(capsys):
    def patchify(x):
        return x.view(len(x), 16, 3, 8, 8, 2)

    status, out, _ = verdict(exercises.patchify, patchify, capsys)
    assert status == WRONG
    assert out.startswith("✗ Exercise 1.1 `patchify` raised RuntimeError on 4 uint8 images (4, 3, 32, 32): "
                          "shape '[4, 16, 3, 8, 8, 2]' is invalid for input of size 12288, at "
                          "`return x.view(len(x), 16, 3, 8, 8, 2)`.")


def test_something_that_is_no_function_is_refused(capsys):
    status, out, returned = verdict(exercises.neighbour_table, torch.zeros(16, 8), capsys)
    assert status == WRONG and "that is a Tensor, not a function" in out
    assert returned is exercises.neighbour_table.reference


def test_a_check_is_deterministic_and_leaves_the_random_state_alone():
    """nbval compares a check's output between two runs; and a later cell's draws must not depend on it."""
    state = torch.get_rng_state()
    wrong = WRONG_ANSWERS["train_step"][0][1]
    first = exercises.train_step.verdict(wrong)
    assert torch.equal(torch.get_rng_state(), state)
    assert exercises.train_step.verdict(wrong) == first


def test_a_check_does_not_write_into_the_cases():
    def careless(p):  # zeroes its input before gathering: later cases must still see their patches
        out = patches.gather_context(p.clone())
        p.zero_()
        return out

    assert exercises.gather_context.verdict(careless)[0] == DONE


def test_the_summary_shows_each_exercise_of_a_notebook(capsys):
    assert [e.name for e in exercises.of_notebook("05")] == ["standardize", "probe_epoch", "welch_gap"]
    exercises.standardize.check(SOLUTIONS["standardize"])
    exercises.probe_epoch.check(WRONG_ANSWERS["probe_epoch"][0][1])
    exercises.welch_gap.status = exercises.UNCHECKED
    capsys.readouterr()
    exercises.summary("05")
    assert capsys.readouterr().out == ("Notebook 05: 1 of 3 exercises done\n"
                                       "  ✓ 5.1 standardize  done\n"
                                       "  · 5.2 probe_epoch  not right yet\n"
                                       "  · 5.3 welch_gap    not checked yet\n")


def test_hint_and_solution(capsys):
    exercises.unpatchify.hint()
    assert capsys.readouterr().out.startswith("Hint for Exercise 1.2 `unpatchify` (put (B, 16, C, 8, 8) ")
    exercises.unpatchify.solution()
    out = capsys.readouterr().out
    assert out.startswith("Exercise 1.2 `unpatchify`, as notebooks/01_patching.ipynb solves it:\n\n")
    assert "def unpatchify(p: torch.Tensor) -> torch.Tensor:" in out and "SOLUTION" not in out


def test_every_exercise_numbers_and_notebooks():
    numbers = [e.number for e in EXERCISES]
    assert len(EXERCISES) >= 16 and len(set(numbers)) == len(numbers)
    for path in NOTEBOOKS:
        mine = exercises.of_notebook(path.name[:2])
        assert len(mine) >= 2, path.name
        assert [e.number for e in mine] == [f"{int(path.name[:2])}.{i}" for i in range(1, len(mine) + 1)]


# ----------------------------------------------------------------------------- the package's answers


def test_the_shared_encoding_is_the_models_and_the_literal_one():
    torch.manual_seed(0)
    tower = models.Conv4().double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    p = patches.patchify(x)
    model = models.ContextAutoencoder(tower, encoding="shared").double().eval()
    literal = tower(patches.gather_context(p).flatten(0, 2)).view(2, 16, -1)
    mine = exercises.shared_encoding.reference(tower, p)
    assert torch.equal(mine, model.encode(x))  # the same calls on the same batch
    # 4 layers of sums in another batch layout: the rounding bound the checker itself allows
    torch.testing.assert_close(mine, literal, rtol=0,
                               atol=exercises.rtol(torch.float64, 8) * literal.abs().max().item())


def test_decode_is_the_autoencoders():
    torch.manual_seed(0)
    model = models.build_model("context", "conv4").eval()
    z = torch.randn(3, 16, 512)
    assert torch.equal(exercises.decode.reference(model.decoder, z), model.decode(z))


def test_the_loss_is_forward_loss():
    torch.manual_seed(0)
    model = models.build_model("patch", "conv4")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(exercises.reconstruction_loss.reference(model(x), x), model.forward_loss(x))


def test_the_step_is_pretrain_step():
    torch.manual_seed(0)
    model = models.build_model("context", "conv4")
    mine, theirs = copy.deepcopy(model), copy.deepcopy(model)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    loss = exercises.train_step.reference(mine, torch.optim.Adam(mine.parameters()), to_float(images))
    step = PretrainStep(theirs, torch.optim.Adam(theirs.parameters()), None, torch.Generator())
    assert torch.equal(loss, step(images))
    assert all(torch.equal(a, b) for a, b in zip(mine.parameters(), theirs.parameters(), strict=True))


def test_the_probe_epoch_is_linear_probes():
    """Seed 0's init and shuffle, as linear_probe makes them: its first epoch is the reference's epoch."""
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(300, 10, generator=g), torch.randint(0, 4, (300,), generator=g)
    probe = evaluate.linear_probe(feats, labels, feats, labels, seed=0, epochs=1, norm="raw", num_classes=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = nn.Linear(10, 4)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    loss = exercises.probe_epoch.reference(layer, torch.optim.Adam(layer.parameters(), lr=1e-3), feats[order],
                                           labels[order], 128)
    # linear_probe adds its batches' float32 losses on the device; this adds them as Python floats
    assert loss == pytest.approx(probe.losses[0], rel=exercises.rtol(torch.float32))
    with torch.no_grad():
        assert 100.0 * int((layer(feats).argmax(1) == labels).sum()) / len(labels) == probe.test_acc


def test_the_gap_is_results_gap():
    assert exercises.welch_gap.reference([1.0, 2.0, 3.0], [4.0, 6.0]) == pytest.approx(
        (3.0, 3.0 / math.sqrt(1 / 3 + 2 / 2)))
    assert exercises.welch_gap.reference([2.0], [3.0, 3.0]) == (1.0, math.inf)  # one seed: no spread known


def test_the_error_per_position_and_its_kinds():
    r, x = torch.rand(3, 16, 3, 8, 8, dtype=torch.float64), torch.rand(3, 3, 32, 32, dtype=torch.float64)
    errors = exercises.error_per_position.reference(r, x)
    assert errors.mean().item() == pytest.approx(F.mse_loss(r, patches.patchify(x)).item(), rel=1e-12)
    assert exercises.errors_by_kind.reference(torch.arange(16.0)) == dict.fromkeys(exercises.KINDS, 7.5)
    assert exercises.POSITIONS == {"corner": CORNER, "edge": EDGE, "interior": INTERIOR}


def test_the_update_is_a_kmeans_step():
    g = torch.Generator().manual_seed(0)
    x, init = (torch.randn(n, 4, generator=g, dtype=torch.float64) for n in (200, 5))
    labels = words.assign(x, init)[0]
    assert torch.bincount(labels, minlength=5).min() > 0  # no empty word: kmeans re-seeds those
    one_step = words.kmeans(x, 5, iters=1, init=init, tol=0.0)
    torch.testing.assert_close(exercises.update_centroids.reference(x, labels, init), one_step.centroids)


def test_the_agreement_counts_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 0])
    # nearest others: 0 -> 1 (same), 1 -> 0 (same), 2 -> 3 (other), 3 -> 2 (other)
    assert exercises.class_agreement.reference(emb, labels, 1) == 50.0


# ----------------------------------------------------------------------------- the course notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_each_solution_cell_is_checked_and_the_notebook_ends_with_its_summary(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    number = path.name[:2]
    mine = exercises.of_notebook(number)
    solved = [i for i, c in enumerate(code) if student.SOLUTION_TAG in c.metadata.get("tags", [])]
    assert [student.defined_functions(code[i].source) for i in solved] == [[e.name] for e in mine]
    for i, e in zip(solved, mine, strict=True):  # the very next cell checks it, under the same name
        assert code[i + 1].source.startswith(f"{e.name} = ex.{e.name}.check({e.name})")
    assert code[-1].source == f'ex.summary("{number}")'


def test_the_readme_counts_each_notebooks_exercises():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        row = re.search(rf"^\| `{path.stem}` \| (\d+) \|", readme, re.M)
        assert row, f"README's course table has no row for {path.stem} with its number of exercises"
        assert int(row.group(1)) == len(exercises.of_notebook(path.name[:2]))
