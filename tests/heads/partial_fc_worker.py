"""What each of the 2 processes spawned by ``test_partial_fc.py`` runs (not a test module).

It lives in its own module so that ``torch.multiprocessing.spawn`` can import it by name in the
child processes (``tests/`` is on ``sys.path``, which the children inherit). Every rank reads the
same data written by the parent, runs PartialFC on its share of the batch and writes what it
saw (losses, gradients, state dicts) for the parent to compare with a single-process reference.
"""

from __future__ import annotations

import datetime
import functools
from pathlib import Path

import torch
import torch.distributed as dist

from faceaux import AdaFaceMargin, PartialFC, margin_logits, sharded_cross_entropy


def _local(tensor: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return tensor[start : start + sizes[rank]].clone()


def _step(head: PartialFC, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    loss = head(x, y)
    loss.backward()
    return {"loss": loss.detach(), "x_grad": x.grad, "w_grad": head.weight.grad.clone()}


def run(rank: int, world_size: int, workdir: str) -> None:
    torch.set_num_threads(1)
    root = Path(workdir)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{root / 'rendezvous'}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),  # a hung collective fails the test, not CI
    )
    try:
        data = torch.load(root / "data.pt", weights_only=True)
        sizes = data["sizes"].tolist()
        x = _local(data["x"], sizes, rank)
        y = _local(data["y"], sizes, rank)
        weight = data["weight"]
        embedding_size = weight.shape[1]
        out: dict[str, object] = {}

        # ArcFace, exact gradients, with and without the world-size embedding-gradient scale
        for scale in (False, True):
            head = PartialFC(
                embedding_size, weight.shape[0], scale_embedding_grad_by_world_size=scale
            ).double()
            head.load_state_dict(PartialFC.reshard_state_dict(weight, rank, world_size))
            out[f"arcface_scale_{scale}"] = _step(head, x, y)
        out["class_range"] = (head.class_start, head.class_stop)
        out["weight_shape"] = tuple(head.weight.shape)
        out["state_dict"] = head.state_dict()
        out["full_weight"] = head.full_weight()

        # a combined margin with straight-through gradients, passed as margin_fn
        combined = functools.partial(
            margin_logits, s=16.0, m1=1.2, m2=0.3, m3=0.1, margin_grad="straight_through"
        )
        head = PartialFC(embedding_size, weight.shape[0], margin_fn=combined).double()
        head.load_state_dict(PartialFC.reshard_state_dict(weight, rank, world_size))
        out["combined"] = _step(head, x, y)

        # AdaFace's logits-in form: PartialFC passes the gathered norms
        head = PartialFC(embedding_size, weight.shape[0], margin_fn=AdaFaceMargin(s=16.0))
        head = head.double()
        head.load_state_dict(PartialFC.reshard_state_dict(weight, rank, world_size), strict=False)
        out["adaface"] = _step(head, x, y)
        out["adaface"]["batch_mean"] = head.margin_fn.batch_mean.clone()
        out["adaface"]["batch_std"] = head.margin_fn.batch_std.clone()

        # negative-class sampling: each rank keeps its positives plus random negatives
        many = data["weight_many"]
        torch.manual_seed(100 + rank)
        head = PartialFC(embedding_size, many.shape[0], sample_rate=0.25).double()
        head.load_state_dict(PartialFC.reshard_state_dict(many, rank, world_size))
        xs = x.clone().requires_grad_(True)
        y_many = _local(data["y_many"], sizes, rank)
        logits, local_labels, class_ids = head.local_logits(xs, y_many)
        loss = sharded_cross_entropy(logits, local_labels)
        loss.backward()
        out["sampled"] = {
            "loss": loss.detach(),
            "x_grad": xs.grad,
            "w_grad": head.weight.grad.clone(),
            "class_ids": class_ids,
            "num_sample": head.num_sample,
        }

        # a shard of the other rank's slice (same shape here) is refused
        other = PartialFC.reshard_state_dict(data["weight_even"], 1 - rank, world_size)
        head = PartialFC(embedding_size, data["weight_even"].shape[0]).double()
        try:
            head.load_state_dict(other)
            out["wrong_shard_error"] = ""
        except ValueError as error:
            out["wrong_shard_error"] = str(error)

        torch.save(out, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
