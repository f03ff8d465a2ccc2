"""Small, deterministic training and evaluation loops used to build the zoo (CPU, fixed seeds)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

Batches = Callable[[int], Iterable[tuple[object, torch.Tensor]]]


def fit(
    module: torch.nn.Module,
    forward: Callable[[object], torch.Tensor],
    batches: Batches,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    progress: bool = True,
    desc: str = "",
) -> float:
    """Adam on cross-entropy; ``batches(epoch)`` yields ``(inputs, labels)`` in a fixed order.
    Returns the last epoch's mean loss."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    module.train()
    mean = float("nan")
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        total, count = 0.0, 0
        for x, y in batches(epoch):
            loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        sched.step()
        mean = total / max(count, 1)
        bar.set_postfix(loss=f"{mean:.4f}")
    module.eval()
    return mean


@contextmanager
def num_threads(n: int):
    """Run the block with ``n`` torch CPU threads, then restore the previous number."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def shuffled(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Index batches of a permutation of ``range(n)`` fixed by ``seed``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def by_length(texts: list[str]) -> list[int]:
    """Indices of ``texts`` from shortest to longest (stable), so batches carry little padding."""
    return sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))


def predictions(wrapper, data) -> torch.Tensor:
    """Predicted labels of ``wrapper`` for every example of ``data``, in order. Text is run in
    length-sorted batches (less padding; the same order every time)."""
    if data.modality == "image":
        return wrapper.predict(data.x).cpu()
    order = by_length(data.x)
    pred = wrapper.predict([data.x[i] for i in order]).cpu()
    out = torch.empty_like(pred)
    out[torch.tensor(order)] = pred
    return out


def accuracy(wrapper, data) -> float:
    """Test accuracy of ``wrapper`` on ``data`` (the number stored in the zoo's metadata)."""
    return float((predictions(wrapper, data) == data.y).double().mean())


def fingerprint(data) -> str:
    """sha256 of a data set's inputs and labels (to tell whether evaluation data changed)."""
    import hashlib

    digest = hashlib.sha256(data.y.numpy().tobytes())
    if data.modality == "image":
        digest.update(data.x.contiguous().numpy().tobytes())
    else:
        digest.update("\x00".join(data.x).encode())
    return digest.hexdigest()


def majority_accuracy(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    """Accuracy of always predicting the training set's most frequent class."""
    top = int(torch.bincount(train_y).argmax())
    return float((test_y == top).double().mean())
