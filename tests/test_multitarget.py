"""The multitarget task (``--task multitarget --targets label,os:survival,grade:regression``): the syntax, the loss as
the sum of the heads' own, one head equal to its task run alone (bit for bit), a planted cohort whose heads each
have their own key patches learned through ``train --folds``, ``evaluate`` (per head, with CIs), ``predict`` and
heatmaps per head, and bad input refused."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

from abmil.cli import main
from abmil.data.synthetic import write_multitarget_cohort
from abmil.nn.models import MILOutput
from abmil.slides.features import FeatureBagDataset
from abmil.slides.train import WSIConfig, train_feature_model
from abmil.tasks import get_task, head_from_info, task_for_columns
from abmil.tasks.multitarget import MultitargetTask, parse_heads
from abmil.train.loss import Objective, bag_losses
from cli_helpers import assert_refused
from wsi_helpers import load_weights

HEADS = "label,os:survival,grade:regression"
SMALL = ["--hidden", "16", "--att-dim", "8", "--dropout", "0"]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_syntax_names_each_heads_columns():
    task = get_task("multitarget", HEADS)
    assert task.heads == (("label", "classification", None), ("os", "survival", None), ("grade", "regression", None))
    assert task.columns == ("label", "os_time", "os_event", "grade")
    assert get_task("multitarget", "y:regression:huber").heads == (("y", "regression", "huber"),)
    assert task is get_task("multitarget", HEADS)  # one class per set of heads: runs' heads compare equal


@pytest.mark.parametrize("targets,fragment", [
    ("label,os:survivl", "task must be one of"), ("os:survival:cox", "couples the bags"),
    ("a,b", "at most one classification head"), ("g:regression,g:survival", "names the head 'g' twice"),
    ("a.b:regression", "cannot name a head"), ("m:multilabel", "task must be one of"),
    ("y:regression:nll", "loss must be one of"), ("y:regression:mse:x", "is not NAME"),
])
def test_bad_heads_are_refused(targets, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_heads(targets.split(","))


def test_loss_is_the_sum_of_each_heads_own_loss():
    """On its slices, each head's loss is its task's objective's (classification: the paper's Bernoulli)."""
    rng = np.random.default_rng(0)
    survival = get_task("survival").fit("nll", [(1.0, 1), (2.0, 0), (3.0, 1), (5.0, 1)], 3)
    regression = get_task("regression").fit(None, [1.0, 2.0, 4.0])
    task = get_task("multitarget", HEADS)(parts=(get_task("classification")(), survival, regression), n_classes=2)
    assert task.n_out() == 1 + 3 + 1
    logits = torch.tensor(rng.normal(size=(6, 5)) * 2)
    outcomes = [(None, (float(rng.uniform(0, 6)), int(rng.integers(0, 2))), float(rng.normal(2, 1)))
                for _ in range(6)]
    labels = rng.integers(0, 2, 6).tolist()
    y = torch.tensor([task.loop_target(o, c) for o, c in zip(outcomes, labels)], dtype=torch.float64)
    got = bag_losses(MILOutput(logits), y, objective=task.objective())
    expected = (bag_losses(MILOutput(logits[:, :1]), torch.tensor(labels))
                + bag_losses(MILOutput(logits[:, 1:4]), torch.tensor([survival.loop_target(o[1]) for o in outcomes],
                                                                     dtype=torch.float64),
                             objective=Objective("nll"))
                + bag_losses(MILOutput(logits[:, 4:]), torch.tensor([regression.loop_target(o[2]) for o in outcomes],
                                                                   dtype=torch.float64),
                             objective=Objective("mse")))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64)  # class weights act on the classification head only
    weighted = bag_losses(MILOutput(logits), y, weights, task.objective())
    torch.testing.assert_close(weighted - got, (weights[torch.tensor(labels)] - 1)
                               * bag_losses(MILOutput(logits[:, :1]), torch.tensor(labels)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("head,task,rename", [("label", "classification", {}),
                                              ("os:survival", "survival", {"os_time": "time", "os_event": "event"})])
def test_one_head_is_its_task_run_alone_bit_for_bit(tmp_path, head, task, rename):
    """A multitarget run of one head trains the same weights and predicts the same numbers as its task alone."""
    manifest, features, _ = write_multitarget_cohort(tmp_path, 24, sizes=(8, 12))
    alone = tmp_path / "alone.csv"
    lines = manifest.read_text().splitlines()
    alone.write_text("\n".join([",".join(rename.get(c, c) for c in lines[0].split(",")), *lines[1:]]) + "\n")
    common = dict(epochs=2, batch_size=4, hidden=16, att_dim=8, seed=0)
    mt = train_feature_model(FeatureBagDataset(manifest, features, task=get_task("multitarget", head)),
                             tmp_path / "mt", WSIConfig(task="multitarget", targets=head, **common))
    one = train_feature_model(FeatureBagDataset(alone, features, task=task), tmp_path / "one",
                              WSIConfig(task=task, **common))
    assert mt["history"]["records"][-1]["train_loss"] == one["history"]["records"][-1]["train_loss"]
    a, b = load_weights(tmp_path / "mt"), load_weights(tmp_path / "one")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_planted_cohort_every_head_learned_through_the_cli(tmp_path, capsys):
    """120 slides, each head with its own key patches: 5-fold CV, evaluate per head with case-bootstrap CIs, predict,
    heatmaps per head (the patches' shares of each head's outputs)."""
    manifest, features, keys = write_multitarget_cohort(tmp_path, 120, sizes=(8, 16))
    run = tmp_path / "cv"
    assert main(["train", "--task", "multitarget", "--targets", HEADS, "--manifest", str(manifest), "--features",
                 str(features), "--out", str(run), "--folds", "5", "--epochs", "12", "--batch-size", "8", "--lr",
                 "1e-2", "--seed", "0", *SMALL]) == 0
    header = list(read_csv(run / "oof.csv")[0])
    assert header[:6] == ["slide_id", "case_id", "label.label", "label.prob_normal", "label.prob_tumor",
                          "label.predicted"]
    assert {"os.time", "os.event", "os.risk", "grade.target", "grade.predicted"} <= set(header)
    assert task_for_columns(header) is MultitargetTask and task_for_columns([*header, "site"]) is MultitargetTask
    summary = json.loads((run / "summary.json").read_text())
    assert {"label.auc", "os.c_index", "grade.r2"} <= set(summary["mean"])

    assert main(["evaluate", "--predictions", str(run / "oof.csv"), "--bootstrap", "100", "--out",
                 str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = {(r["target"], r["level"], r["metric"]): r for r in result["metrics"]}
    auc, c, r2 = (rows[k]["value"] for k in [("label", "slide", "auc"), ("os", "slide", "c_index_harrell"),
                                             ("grade", "slide", "r2")])
    print(f"multitarget oof: label AUC {auc:.3f}, os Harrell C {c:.3f}, grade R2 {r2:.3f}", file=sys.stderr)
    assert auc > 0.8 and c > 0.58 and r2 > 0.3
    assert all(r["ci_low"] is not None and r["ci_low"] <= r["value"] <= r["ci_high"] for k, r in rows.items()
               if k[2] in ("auc", "c_index_harrell", "r2"))
    for name, figure in [("label", "roc.png"), ("os", "km.png"), ("grade", "scatter.png")]:
        sub = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert sub["meta"]["predictions"] == str(run / "oof.csv") and (tmp_path / "eval" / name / figure).is_file()

    assert main(["predict", "--run", str(run), "--fold", "0,0", "--manifest", str(manifest), "--features",
                 str(features), "--out", str(tmp_path / "preds.csv")]) == 0
    own = [h for h in read_csv(tmp_path / "preds.csv")[0] if not h.startswith("os.surv_")]  # the fold's own bins
    assert own == [h for h in header if h not in ("case_id", "repeat", "fold") and not h.startswith("os.surv_")]
    capsys.readouterr()


def test_heatmap_maps_each_head_and_the_shares_give_each_heads_output(tmp_path):
    from abmil.slides.feature_files import FeatureFile
    from abmil.slides.heatmap import _maps, slide_heatmap
    from abmil.slides.predict import load_run, predict_file

    manifest, features, _ = write_multitarget_cohort(tmp_path, 16, sizes=(8, 16))
    train_feature_model(FeatureBagDataset(manifest, features, task=get_task("multitarget", HEADS)), tmp_path / "run",
                        WSIConfig(epochs=1, batch_size=4, hidden=16, att_dim=8, task="multitarget", targets=HEADS))
    run = load_run(tmp_path / "run")
    assert head_from_info(run.info) == run.head and run.head.n_out() == 1 + 4 + 1
    file = FeatureFile(features / "t000.h5", "t000")
    pred = predict_file(run, file)
    maps = dict(_maps(run, file, pred))
    assert list(maps) == ["attention", "label: share of logit", "os: share of mean hazard logit",
                          "grade: share of prediction"]
    bias = run.model.classifier.bias.detach().double().numpy()
    mean, sd = run.head.parts[2].target_scale
    p_tumor, predicted = pred.probabilities[1], pred.probabilities[-1]
    assert p_tumor == pytest.approx(1 / (1 + np.exp(-(maps["label: share of logit"].sum() + bias[0]))), rel=1e-5)
    assert predicted == pytest.approx(maps["grade: share of prediction"].sum() + mean + sd * bias[5], rel=1e-5)
    summary = slide_heatmap(tmp_path / "run", features / "t000.h5", tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000 and all(f"{h}: " in summary for h in ("label", "os", "grade"))


@pytest.mark.parametrize("edit,targets,culprit", [
    (("os_event", "2"), HEADS, "field 'os_event': '2' is not 0 (censored) or 1 (event)"),
    (("grade", "x"), HEADS, "field 'grade': 'x' is not a finite number"),
    (("os_time", ""), HEADS, "field 'os_time' is empty"),
    (None, "label,pfs:survival", "missing column(s) pfs_time, pfs_event"),
    (None, "label,os:survivl", "--targets: head 'os': task must be one of"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, edit, targets, culprit):
    manifest, _, _ = write_multitarget_cohort(tmp_path / "ws", 8, sizes=(4, 6))
    if edit is not None:
        rows = read_csv(manifest)
        rows[1][edit[0]] = edit[1]
        with open(manifest, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    assert_refused(tmp_path / "ws", ["train", "--task", "multitarget", "--targets", targets, "--manifest",
                                     "{ws}/manifest.csv", "--features", "{ws}/features", "--out", "{ws}/out",
                                     "--epochs", "1"], culprit)
