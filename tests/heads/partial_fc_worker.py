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

        # streaming over chunks of each rank's shard (chunk sizes that do not divide the
        # shards of 4 and 3 classes): must equal the dense cases above
        for name, margin_fn in (
            ("arcface", None),
            ("combined", combined),
            ("adaface", AdaFaceMargin(s=16.0)),
        ):
            head = PartialFC(
                embedding_size, weight.shape[0], margin_fn=margin_fn, chunk_size=3
            ).double()
            shard = PartialFC.reshard_state_dict(weight, rank, world_size)
            head.load_state_dict(shard, strict=False)
            out[f"streamed_{name}"] = _step(head, x, y)
            if name == "adaface":
                out["streamed_adaface"]["batch_mean"] = head.margin_fn.batch_mean.clone()

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


# ---------------------------------------------------------------------------------------------
# bad input on one rank (issue 13): every rank must raise the same error, promptly


def _bad_input_cases(rank: int) -> dict[str, object]:
    """Per scenario, a callable that this rank runs; "bad" marks the rank that misbehaves."""

    def partial_fc_step(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        torch.manual_seed(0)  # the same centres on both ranks' shards of the same layout
        head = PartialFC(4, 10, **kwargs).double()
        if isinstance(x, torch.Tensor):
            x = x.clone().requires_grad_(x.is_floating_point())
        loss = head(x, y)
        loss.backward()
        return loss.detach()

    good_x = torch.randn(3, 4, dtype=torch.float64)
    good_y = torch.tensor([0, 5, 9])
    nan_x = good_x.clone()
    nan_x[1, 2] = float("nan")
    return {
        "float_labels": lambda: partial_fc_step(good_x, good_y.double() if rank == 1 else good_y),
        "label_out_of_range": lambda: partial_fc_step(
            good_x, torch.tensor([0, 10, 9]) if rank == 1 else good_y
        ),
        "nan_embeddings": lambda: partial_fc_step(nan_x if rank == 0 else good_x, good_y),
        "wrong_embedding_size": lambda: partial_fc_step(
            torch.randn(3, 5, dtype=torch.float64) if rank == 1 else good_x, good_y
        ),
        "not_a_tensor": lambda: partial_fc_step([[0.0] * 4] if rank == 0 else good_x, good_y),
        "sharded_ce_rows_differ": lambda: sharded_cross_entropy(
            torch.randn(3 + rank, 5, dtype=torch.float64), torch.zeros(3 + rank, dtype=torch.long)
        ),
        "one_rank_empty": lambda: partial_fc_step(
            good_x[:0] if rank == 0 else good_x, good_y[:0] if rank == 0 else good_y
        ),
        "all_ranks_empty": lambda: partial_fc_step(good_x[:0], good_y[:0]),
        "all_ranks_empty_adaface": lambda: partial_fc_step(
            good_x[:0], good_y[:0], margin_fn=AdaFaceMargin()
        ),
        "nan_embeddings_streamed": lambda: partial_fc_step(
            nan_x if rank == 0 else good_x, good_y, chunk_size=2
        ),
        "one_rank_empty_streamed": lambda: partial_fc_step(
            good_x[:0] if rank == 0 else good_x, good_y[:0] if rank == 0 else good_y, chunk_size=2
        ),
        "all_ranks_empty_streamed": lambda: partial_fc_step(good_x[:0], good_y[:0], chunk_size=2),
    }


def run_bad_inputs(rank: int, world_size: int, workdir: str) -> None:
    """Run every scenario on every rank; record per rank what was raised and how fast."""
    import json
    import time
    import warnings

    torch.set_num_threads(1)
    root = Path(workdir)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{root / 'rendezvous_bad'}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=20),  # a hang shows up as a 20 s RuntimeError
    )
    results: dict[str, dict[str, object]] = {}
    try:
        torch.manual_seed(rank)
        for name, case in _bad_input_cases(rank).items():
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = case()
                outcome = {"error": None, "value": float(value)}
            except Exception as error:  # recorded for the parent to check
                outcome = {"error": type(error).__name__, "message": str(error)}
            outcome["seconds"] = time.perf_counter() - start
            results[name] = outcome
        (root / f"bad_rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()
