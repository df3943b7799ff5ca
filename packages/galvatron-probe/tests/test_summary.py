"""galvatron-probe summary of a model profile: one row per layer and timed length, also where the profile measured
no bytes at that length (a valid profile: the cost model extrapolates bytes over lengths)."""
import copy
import json
from pathlib import Path

from galvatron_probe.summary import model_summary

TINY = Path(__file__).resolve().parents[3] / "schemas" / "model-profile" / "examples" / "valid" / "tiny.json"


def test_a_timed_length_without_memory_rows_is_shown_as_unmeasured():
    doc = json.loads(TINY.read_text())
    whole = model_summary(doc)
    sparse = copy.deepcopy(doc)
    first = sparse["layers"][0]
    for row in first["memory"]:
        row["seq_len"] += 1000                       # bytes measured at another length than the timings'
    text = model_summary(sparse)
    rows = [line for line in text.splitlines() if line.startswith(first["layer"])]
    assert rows and all(" - " in line for line in rows)
    assert len(text.splitlines()) == len(whole.splitlines())      # the same rows, the bytes left out


def test_sequence_parallel_timings_and_optimizer_fits_get_their_rows():
    doc = json.loads(TINY.read_text())
    entry = max(doc["layers"], key=lambda e: e["tp"])
    entry["sequence_parallel_timings"] = copy.deepcopy(entry["timings"])
    doc["optimizer_step"] = {"optimizer": "adamw", "fixed_s": 1e-3, "per_param_s": 2e-9, "per_tensor_s": 3e-5,
                             "dtensor": {"fixed_s": 0.0, "per_tensor_s": 4e-4, "per_param_s": 2e-9}, "points": []}
    text = model_summary(doc)
    sp_rows = [line for line in text.splitlines() if line.startswith(entry["layer"] + "+sp ")]
    assert len(sp_rows) == len([t for t in entry["timings"]
                                if t["micro_batch_size"] == max(doc["settings"]["micro_batch_sizes"])])
    assert "plain tensors: 1.000 ms + 30.0 us/tensor" in text and "DTensor tensors: 0.000 ms + 400.0 us" in text
