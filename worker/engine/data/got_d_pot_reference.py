#!/usr/bin/env python3
"""The reference dual potentials for got_d_test.cc, from POT (python3-pot).

Reads a JSON problem {"n", "m", "a", "b", "cost" (row-major n x m), "reg"}
from argv[1] and prints {"f": [...], "niter": ..., "err": ...}, where
f = reg * log(log['u']) of POT's plain (Sinkhorn-Knopp) solver,
ot.sinkhorn(a, b, C, reg, log=True): the plan is diag(u) K diag(v) with
K = exp(-C / reg), so reg * log(u) is the dual potential of the candidates
(METHODS.md §8.1; POT 0.8.2's log holds 'u' and 'v' for this method).
"""
import json
import sys

import numpy as np
import ot


def main():
    with open(sys.argv[1]) as f:
        p = json.load(f)
    a = np.array(p["a"], dtype=np.float64)
    b = np.array(p["b"], dtype=np.float64)
    cost = np.array(p["cost"], dtype=np.float64).reshape(p["n"], p["m"])
    reg = float(p["reg"])
    _, log = ot.sinkhorn(a, b, cost, reg, log=True, numItermax=1000000,
                         stopThr=1e-14)
    f = reg * np.log(log["u"])
    print(json.dumps({"f": f.tolist(), "niter": int(log["niter"]),
                      "err": float(log["err"][-1]), "version": ot.__version__}))


if __name__ == "__main__":
    main()
