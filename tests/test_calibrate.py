import json

from tests.helpers import run_cli
from trustgen.verifier.calibrate import calibrate_image, choose_threshold, majority_error, write_report


def test_majority_error_and_threshold_choice():
    assert majority_error(0.0) == 0.0 and majority_error(1.0) == 1.0
    assert abs(majority_error(0.1) - (3 * 0.01 * 0.9 + 0.001)) < 1e-12
    assert choose_threshold([0, 1, 2], [10, 12, 30], 64) == 4.0  # largest honest + 2-bit margin
    assert choose_threshold([0, 8, 12], [1, 40], 64) == 15.0  # + a quarter of it; overlap reported, not chased


def test_image_calibration_separates_honest_from_dishonest(tmp_path):
    rep = calibrate_image(samples=3, steps=12)
    files = write_report(rep, tmp_path)
    assert rep["honest_pairs"] == 12 and rep["dishonest_pairs"] == 18
    for kind in (
        "bfloat16",
        "threads",
        "weight_noise_1e-4",
        "scheduler_impl",
        "other_seed",
        "other_prompt",
        "other_model",
        "fewer_steps",
        "quantised_model",
        "other_scheduler",
    ):
        assert len(rep["pairs"][kind]["values"]) == 3
    assert max(rep["pairs"]["threads"]["values"]) == 0  # same pixels: thread count does not matter here
    assert max(rep["pairs"]["scheduler_impl"]["values"]) == 0  # float64 DDIM: same pixels
    assert rep["per_kind_accept_rate"]["other_seed"] == 0.0
    assert rep["per_kind_accept_rate"]["other_scheduler"] == 0.0
    assert rep["rates"]["false_reject"] == 0.0
    saved = json.loads(open(files["json"]).read())
    assert saved["threshold"] == rep["threshold"]
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_text_calibration_cli(tmp_path):
    res = run_cli("calibrate", "text", "--samples", "3", "--out", str(tmp_path), "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["kind"] == "text" and s["dishonest_pairs"] > 0
    assert s["rates"]["false_accept"] == 0.0  # every cheat is caught by the prefill check
    assert s["per_pair"]["altered_token"]["min"] > 0.25  # far outside even the cross-dtype tolerance
    assert (tmp_path / "calibration-text.png").exists()
    assert run_cli("calibrate", "sound", "--out", str(tmp_path)).returncode == 2


def test_text_reports_merge_by_pooling_pairs_and_counts():
    from trustgen.verifier.calibrate import merge_text_reports, wilson

    def rep(bf16: list, altered: list, acc: dict) -> dict:
        return {
            "measure": "prefill logit gap (inf = rejected)",
            "samples": 3,
            "honest_kinds": ["bfloat16"],
            "pairs": {"bfloat16": {"values": bf16}, "altered_token": {"values": altered}},
            "per_kind_accepted": acc,
        }

    merged = merge_text_reports(
        [
            rep([0.0, 0.1], [20.0], {"bfloat16": [3, 3], "altered_token": [0, 3], "truncated": [0, 2]}),
            rep([0.2], [None], {"bfloat16": [2, 3], "altered_token": [1, 3]}),
        ]
    )
    assert merged["samples"] == 6 and merged["honest_pairs"] == 3 and merged["dishonest_pairs"] == 2
    assert merged["pairs"]["bfloat16"]["max"] == 0.2 and merged["pairs"]["altered_token"]["rejected_outright"] == 1
    assert merged["per_kind_accepted"] == {"bfloat16": [5, 6], "altered_token": [1, 6], "truncated": [0, 2]}
    r = merged["rates"]
    assert r["false_reject"] == 1 / 6 and r["false_accept"] == 1 / 8
    assert r["false_accept_ci95"] == wilson(1, 8) and r["false_reject_ci95"][0] < 1 / 6 < r["false_reject_ci95"][1]
    lo, hi = wilson(0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04  # no error in 100 trials bounds the rate near 3.7 %, not at 0
