import math

import pytest

from dae_core.comparison import (
    CELLS,
    LECTURE_CELL,
    CellName,
    CellRun,
    DivergedRun,
    cell_config,
    comparison_table,
    findings,
    interval,
)
from dae_core.config import build_config
from dae_core.summary import ClassifierCurves, EvaluationScores, PretrainCurves, RunSummary, Timing


def test_interval_is_a_student_t_interval():
    result = interval([1.0, 2.0, 3.0])
    assert result.mean == 2.0 and result.std == 1.0 and result.n == 3
    # t(0.975, 2) = 4.3027; half width = 4.3027 * 1 / sqrt(3)
    assert result.ci_high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    single = interval([5.0, math.nan])
    assert single.mean == 5.0 and single.n == 1 and math.isnan(single.ci_low)
    assert interval([]).n == 0 and math.isnan(interval([]).mean)


def test_cells_change_only_what_they_name():
    base = build_config("smoke")
    assert set(CELLS) == set(CellName.__args__)
    assert cell_config(base, LECTURE_CELL, 0) == base
    sgd = cell_config(base, "sgd-clean", 3, sgd_lr=2.0)
    assert (sgd.pretrain.optimizer, sgd.pretrain.lr, sgd.pretrain.noise.enabled, sgd.seed) == ("sgd", 2.0, False, 3)
    assert sgd.classifier == base.classifier
    assert cell_config(base, "no-pretraining", 0).pretrain.epochs == 0
    with pytest.raises(ValueError, match="allowed cells"):
        cell_config(base, "adam+noise", 0)


def _summary(accuracy, epoch1, noisy, mse):
    return RunSummary(
        pretrain=PretrainCurves(mse=mse),
        classifier=ClassifierCurves(train_loss=[1.0, 0.5], test_accuracy=[epoch1, accuracy]),
        test=EvaluationScores(accuracy=accuracy, noisy_accuracy=noisy, per_class_accuracy=[accuracy] * 10),
        timing=Timing(pretrain_s=1, classifier_s=1, pretrain_loop_s=1, classifier_loop_s=1), mlflow_run_id="r")


def test_paired_differences_and_verdicts():
    records = []
    for seed, shift in enumerate([0.0, 0.2, -0.1]):
        records.append(CellRun("adam-noise", seed, _summary(92 + shift, 87 + shift, 88, [0.07, 0.007])))
        records.append(CellRun("no-pretraining", seed, _summary(90 + shift, 80 + shift, 85, [])))
        records.append(CellRun("adam-clean", seed, _summary(92.05 + shift * 0.5, 87, 85 + 0.1 * seed, [0.06, 0.006])))
    rows = {(r.cell, r.metric): r for r in comparison_table(records)}
    baseline = rows[("no-pretraining", "final_accuracy")]
    # Paired by seed, the seed shifts cancel: every difference is exactly -2.
    assert baseline.diff_mean == pytest.approx(-2.0) and baseline.diff_std == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(rows[("no-pretraining", "final_mse")].mean)
    assert math.isnan(rows[("adam-noise", "final_accuracy")].diff_mean)
    verdicts = "\n".join(findings(list(rows.values())))
    assert "random encoder after 10 epochs: **supported**" in verdicts
    assert "raises accuracy on noisy test digits: **supported**" in verdicts
    assert "lower final MSE): not testable" in verdicts


def test_building_a_cell_leaves_the_grid_unchanged():
    before = repr(CELLS)
    cell_config(build_config("smoke"), "sgd-noise", 0, sgd_lr=3.0)
    assert repr(CELLS) == before


def test_the_robustness_cells_are_paired_with_their_noisy_twin():
    base = build_config("smoke")
    frozen = cell_config(base, "adam-clean-frozen", 0)
    assert frozen.classifier.freeze_encoder and not frozen.pretrain.noise.enabled
    assert cell_config(base, "adam-noise-noisytune", 0).classifier.train_noise.enabled
    records = []
    for seed in range(3):
        records.append(CellRun("adam-noise", seed, _summary(92, 87, 86, [0.007])))
        records.append(CellRun("adam-noise-frozen", seed, _summary(85 + seed, 80, 70 + seed, [0.007])))
        records.append(CellRun("adam-clean-frozen", seed, _summary(84 + seed, 80, 72 + seed, [0.003])))
    rows = {(r.cell, r.metric): r for r in comparison_table(records)}
    noisy = rows[("adam-clean-frozen", "noisy_accuracy")]
    assert noisy.reference == "adam-noise-frozen" and noisy.diff_mean == pytest.approx(2.0)
    assert rows[("adam-noise-frozen", "noisy_accuracy")].reference == LECTURE_CELL
    verdicts = "\n".join(findings(list(rows.values())))
    assert ("Under a frozen encoder (a linear probe), noise during pretraining raises accuracy on noisy test digits: "
            "**contradicted**; adam-clean-frozen minus adam-noise-frozen = +2") in verdicts


def test_a_verdict_names_the_seeds_its_cells_lost_to_divergence():
    records = []
    for seed in range(4):
        records.append(CellRun("adam-noise", seed, _summary(92 + 0.1 * seed, 87, 88, [0.007])))
        if seed != 2:
            records.append(CellRun("no-pretraining", seed, _summary(90 + 0.1 * seed, 80, 85, [])))
    lost = [DivergedRun(cell="no-pretraining", seed=2, detail="classifier epoch 1: mean loss 24")]
    verdicts = "\n".join(findings(comparison_table(records), lost))
    assert ("random encoder after 10 epochs: **supported**; no-pretraining minus adam-noise = -2 "
            "(95% CI -2 to -2, n=3; no-pretraining seed 2 diverged, left out)") in verdicts
    assert verdicts.endswith("- Diverged at its settings, left out of every statistic: no-pretraining seed 2 "
                             "(classifier epoch 1: mean loss 24)")


@pytest.mark.parametrize("seeds, says", [(1, "final MSE 0.0500 (one seed: two or more give an interval)"),
                                         (2, "final MSE 0.0500 (95% CI 0.0500 to 0.0500)")])
def test_the_sgd_mse_finding_gives_an_interval_only_from_two_seeds(seeds, says):
    records = [CellRun("sgd-noise", seed, _summary(90, 80, 85, [0.05])) for seed in range(seeds)]
    verdicts = findings(comparison_table(records))
    assert verdicts[-1] == f"- Vanilla SGD pretraining's MSE stays near or above 0.01: {says}"
