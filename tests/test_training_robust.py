"""The screened trimmed mean (issue 12's -10x attacker): its worst case is the trimmed mean's, it
drops a far outlier without cutting honest values, and it is a pure function of the deltas:
the same bytes in other processes and at other thread counts, and a real run replays."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from trustgen.training import aggregate
from trustgen.training import spec as specs
from trustgen.training.run import run_job
from trustgen.training.tensors import tensor_digest

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
P = {"trim": 0.2, "clip": 1.0}
RULE = "screened-trimmed-mean"


def honest_deltas(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Correlated honest deltas (a shared direction plus per-trainer noise), as local SGD gives."""
    g = torch.Generator().manual_seed(seed)
    common = {"w": torch.randn(300, generator=g) * 0.01, "b": torch.randn(7, generator=g) * 0.01}
    return [{k: v + torch.randn(v.shape, generator=g) * 0.008 for k, v in common.items()} for _ in range(n)]


def test_a_minus_10x_delta_is_screened_and_the_honest_ones_are_averaged() -> None:
    honest = honest_deltas(4)
    deltas = honest + [{k: v * -10.0 for k, v in honest[0].items()}]
    assert aggregate.screen(deltas, aggregate.coordinate_median(deltas)) == [True] * 4 + [False]
    out = aggregate.aggregate(RULE, deltas, P)
    for k in out:
        stack = torch.stack([d[k] for d in deltas])
        s = torch.sort(stack, dim=0).values
        ref = torch.clamp(sum(d[k] for d in honest) / 4, s[1], s[3])  # type: ignore[arg-type]
        assert torch.equal(out[k], ref), k
    honest_mean = torch.stack([d["w"] for d in honest]).mean(dim=0)
    trimmed = aggregate.aggregate("trimmed-mean", deltas, P)["w"]
    # the plain trimmed mean also cuts an honest value per coordinate; the screened one is closer
    assert (out["w"] - honest_mean).norm() < 0.5 * (trimmed - honest_mean).norm()


def test_nobody_screened_when_all_are_honest_and_the_result_is_near_the_mean() -> None:
    deltas = honest_deltas(5, seed=2)
    assert aggregate.screen(deltas, aggregate.coordinate_median(deltas)) == [True] * 5
    out = aggregate.aggregate(RULE, deltas, P)["w"]
    plain = aggregate.aggregate("mean", deltas, P)["w"]
    assert (out - plain).norm() < 0.1 * plain.norm()


@pytest.mark.parametrize("n, trim", [(5, 0.2), (7, 0.2), (10, 0.2), (11, 0.3)])
def test_worst_case_every_coordinate_stays_within_the_honest_range(n: int, trim: float) -> None:
    """The trimmed mean's guarantee: with f <= k Byzantine deltas each output coordinate lies in
    the honest values' range. Attacks that pass the screen (just inside the radius, all on one
    side, copies of each other) as well as ones that do not."""
    k = aggregate.trimmed_k(n, trim)
    g = torch.Generator().manual_seed(n)
    for attack in range(6):
        honest = honest_deltas(n - k, seed=100 * n + attack)
        centre = torch.stack([d["w"] for d in honest]).mean(dim=0)
        push = torch.randn(300, generator=g)
        scale = (0.5, 1.0, 2.0, 3.0, 30.0, 1e4)[attack] * 0.01
        bad = [
            {"w": centre + push / push.norm() * scale * (1 + 0.01 * i), "b": honest[0]["b"] * (attack - 3)}
            for i in range(k)
        ]
        out = aggregate.aggregate(RULE, honest + bad, {"trim": trim, "clip": 1.0})
        for name in out:
            h = torch.stack([d[name] for d in honest])
            assert bool((out[name] >= h.min(dim=0).values).all() and (out[name] <= h.max(dim=0).values).all())


def test_at_most_half_are_screened_and_small_counts_fall_back_to_the_mean() -> None:
    deltas = honest_deltas(2) + [{"w": torch.full((300,), 5.0), "b": torch.zeros(7)}]
    assert sum(aggregate.screen(deltas, aggregate.coordinate_median(deltas))) >= 2
    two = honest_deltas(2)
    assert torch.equal(aggregate.aggregate(RULE, two, P)["w"], aggregate.aggregate("mean", two, P)["w"])


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_training_robust import honest_deltas
from trustgen.training import aggregate
from trustgen.training.tensors import tensor_digest
torch.set_num_threads({threads})
d = honest_deltas(5, seed=9)
d[2] = {{k: v * -10.0 for k, v in d[2].items()}}
print(tensor_digest(aggregate.aggregate({rule!r}, d, {{"trim": 0.2, "clip": 1.0}})).hex())
"""


def test_the_rule_gives_the_same_bytes_in_other_processes_and_at_other_thread_counts() -> None:
    d = honest_deltas(5, seed=9)
    d[2] = {k: v * -10.0 for k, v in d[2].items()}
    mine = tensor_digest(aggregate.aggregate(RULE, d, P)).hex()
    tests = str(pathlib.Path(__file__).parent)
    for threads in (1, 2):
        code = _CHILD.format(tests=tests, threads=threads, rule=RULE)
        r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == mine, threads


def test_old_rule_names_keep_their_meaning() -> None:
    """A job names its rule; `trimmed-mean` is unchanged by the new rule (old jobs replay)."""
    d = honest_deltas(5, seed=3)
    ref = torch.sort(torch.stack([x["w"] for x in d]), dim=0).values[1:4].mean(dim=0)
    assert torch.equal(aggregate.aggregate("trimmed-mean", d, P)["w"], ref)
    assert RULE in specs.AGGREGATORS and "trimmed-mean" in specs.AGGREGATORS


@pytest.mark.slow
def test_a_real_run_with_a_minus_10x_trainer_learns_and_replays(tmp_path: pathlib.Path) -> None:
    raw = specs.as_table(specs.load("diloco").data)
    raw.pop("trainers")
    raw["data"]["eval_windows"] = 16
    raw["algorithm"].update(rounds=2, inner_steps=2, check_probability=0.0, aggregator=RULE)
    # no spot checks, so the -10x delta reaches the aggregation and only the rule stands in its way
    s = run_job(specs.from_dict(raw), tmp_path / "run", 3, "scaled", 2)
    assert s["rejected"] == [] and s["final_heldout_loss"] < s["base_heldout_loss"]

    def replay(*extra: str) -> tuple[int, dict]:
        r = subprocess.run(
            [sys.executable, "-m", "trustgen.cli", "train", "replay", str(tmp_path / "run"), "--json", *extra],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return r.returncode, json.loads(r.stdout)

    # every round aggregated again from the blobs, in another process: the same checkpoints
    code, rep = replay("--mode", "deltas")
    assert code == 0 and rep["ok"] and rep["final_digest"] == s["evals"][-1]["digest"], rep
    # a full replay re-executes every trainer's round, and that names the -10x delta
    code, rep = replay()
    assert code == 1 and rep["first_bad"]["what"] == "delta" and rep["first_bad"]["round"] == 0, rep


def test_the_sorting_network_gives_torch_sort_values_for_every_count_up_to_64() -> None:
    g = torch.Generator().manual_seed(5)
    for n in [*range(1, 18), 31, 32, 33, 64]:
        d = [{"w": torch.randint(-3, 4, (40,), generator=g).float() * 0.37} for _ in range(n)]  # ties too
        ref = torch.sort(torch.stack([x["w"] for x in d]), dim=0).values
        assert torch.equal(torch.stack(aggregate._sorted(d)["w"]), ref), n
