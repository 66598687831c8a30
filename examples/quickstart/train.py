"""Train the quickstart's two models and write the hold-out set both are scored on.

    python examples/quickstart/train.py     # -> examples/quickstart/models/{production,candidate}.skops

Model 1 (production) is a depth-2 decision tree; model 2 (the candidate) a logistic regression,
better on the same rows. The hold-out rows are the 40 % neither model was trained on; the file is
also committed, so `git diff` shows that this script reproduces it exactly.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

HERE = Path(__file__).resolve().parent


def main() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    (HERE / "models").mkdir(exist_ok=True)
    sio.dump(DecisionTreeClassifier(max_depth=2, random_state=0).fit(Xtr, ytr), HERE / "models/production.skops")
    sio.dump(LogisticRegression(max_iter=5000).fit(Xtr, ytr), HERE / "models/candidate.skops")
    holdout = pd.DataFrame(Xte, columns=[f"x{i}" for i in range(X.shape[1])])
    holdout["label"] = yte
    holdout.to_csv(HERE / "holdout.csv", index=False)


if __name__ == "__main__":
    main()
