"""One line per (data, seed): the test NLL each selection rule reports, from the per-epoch,
per-row validation and test log-probs that scratch_curves.py records (/tmp/w/*.npz).

    python scratch_curves.py wine default 0,1,...,19     # and the other sets
    python scratch_rules.py rules_from_curves.jsonl
"""
import glob
import json
import sys

import numpy as np


def best(v):  # v: [epochs + 1, rows] validation NLLs; the epoch of lowest mean
    return int(v.mean(1).argmin())


def one_se(v, k=1.0):  # the earliest epoch within k paired standard errors of the best
    m = v.mean(1)
    b = int(m.argmin())
    se = (v - v[b]).std(1, ddof=1) / np.sqrt(v.shape[1])
    return int(np.where(m - m[b] <= k * se)[0].min())


def best_or_start(v, k=1.0):  # the best, unless its gain over the start is within k SE
    b = best(v)
    d = v[0] - v[b]
    return b if d.mean() > k * d.std(ddof=1) / np.sqrt(len(d)) else 0


with open(sys.argv[1], "w") as out:
    for f in sorted(glob.glob("/tmp/w/*_default_*.npz")):
        name, seed = f.split("/")[-1].rsplit("_default_", 1)
        z = np.load(f)
        v, t, c = -z["val"], -z["test"], float(z["correction"])
        row = {"data": name, "seed": int(seed[:-4]), "gaussian": float(z["gauss"]),
               "start": float(t[0].mean() + c), "epochs": len(v) - 1, "val_rows": v.shape[1]}
        for k, fn in (("best", best), ("best_or_start", best_or_start), ("one_se", one_se)):
            e = fn(v)
            row[k] = {"epoch": e, "test_nll": float(t[e].mean() + c)}
        out.write(json.dumps(row) + "\n")
