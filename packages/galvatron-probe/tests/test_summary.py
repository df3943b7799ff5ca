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
