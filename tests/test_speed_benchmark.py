"""The speed benchmark (python -m recbole_mmm4rec.benchmark.speed): its SSD scaling part, and (slow) a whole
run of two models, checking that what it writes is computed from its own timings."""

import json
import statistics

import pytest
from tqdm import tqdm

from recbole_mmm4rec.benchmark import speed


def test_ssd_scaling_times_every_length_and_the_1000_to_100_ratio():
    args = speed.parse_args(["--lengths", "20", "100", "1000", "--ssd-repeats", "2", "--ssd-batch", "2"])
    with tqdm(disable=True) as progress:
        result = speed.run_ssd(args, progress)
    assert {"chunked@20", "chunked@100", "chunked@1000", "quadratic@20", "quadratic@100"} <= set(result)
    assert "quadratic@1000" not in result  # [B, H, L, L] masks: too large beyond QUADRATIC_UP_TO
    ratios = [a / b for a, b in zip(result["chunked@1000"]["seconds"], result["chunked@100"]["seconds"])]
    assert result["chunked_ratio_1000_to_100"]["median"] == pytest.approx(statistics.median(ratios))
    assert result["chunked_ratio_1000_to_100"]["min"] == pytest.approx(min(ratios))
    assert all(t > 0 for key in result if "@" in key for t in result[key]["seconds"])


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        speed.parse_args(["--repeats", "0"])
    with pytest.raises(SystemExit):
        speed.parse_args(["--threads", "-1"])


@pytest.mark.slow
def test_speed_benchmark_end_to_end(tmp_path):
    """Two models interleaved, one repeat: README and JSON written, ratios from the same repeat's timings."""
    assert speed.main(["--models", "SASRec", "MMM4Rec", "--repeats", "2", "--ssd-repeats", "1",
                       "--lengths", "20", "100", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    sasrec, mmm4rec = result["models"]["SASRec"], result["models"]["MMM4Rec"]
    ratios = [a / b for a, b in zip(mmm4rec["epoch_seconds"], sasrec["epoch_seconds"])]
    assert mmm4rec["epoch_ratio_to_SASRec"]["min"] == pytest.approx(min(ratios))
    assert sasrec["epoch_ratio_to_SASRec"]["median"] == pytest.approx(1.0)
    assert mmm4rec["parameters"] > 0 and mmm4rec["memory"]["peak_mib"] > 100
    assert "| MMM4Rec |" in (tmp_path / "README.md").read_text()
