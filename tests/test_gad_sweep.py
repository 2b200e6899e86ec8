"""gad_sweep, its trade-off figure, and the defaults it chose: GAD must visibly simplify a map."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from captum.attr import InputXGradient, Saliency

from captum_gradflow import GADWrapper
from captum_gradflow.gad import GADConfig, evaluate_gad, gad_sweep
from captum_gradflow.visualization import plot_gad_sweep

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def test_default_gad_removes_a_visible_part_of_the_base_map(digits_38):
    d, model = digits_38
    gad = GADWrapper(Saliency(model), progress=False).fit((d.x_train, d.y_train), pair=(0, 1))
    scores = evaluate_gad(gad, d.x_test[:48], d.y_test[:48])
    # docs/definitions.md 3.1: a GAD keeping over 90% of the base map's top pixels is not doing its job
    assert scores["kept_fraction"] <= 0.90, scores
    assert 0 < scores["rc"] < 1


def test_sweep_table_has_one_row_per_setting_and_method(digits_38):
    d, model = digits_38
    grid = {"delta": [0.5, 8.0], "q": [0.2, 0.3]}
    table = gad_sweep(model, {"Saliency": Saliency, "IxG": InputXGradient}, (d.x_train, d.y_train), grid,
                      eval_data=(d.x_test[:24], d.y_test[:24]), pair=(0, 1),
                      config=GADConfig(steps=60, n_support=2), progress=False)
    assert len(table) == 2 * 2 * 2
    expected = {"delta", "q", "method", "kept_fraction", "rc", "rs_win_rate", "rs_p", "rs_pairs", "n_eval", "fit_s"}
    assert expected <= set(table.columns)
    assert table[["kept_fraction", "rc", "rs_win_rate", "rs_p"]].notna().all().all()
    assert ((table.kept_fraction > 0) & (table.kept_fraction <= 1)).all()
    # q only changes fusion: one fit per delta, shared by both methods and both q
    assert table.groupby("delta").fit_s.nunique().eq(1).all()
    # a sixteen times larger push removes more of the map
    wide = table.pivot_table(index=["method", "q"], columns="delta", values="kept_fraction")
    assert (wide[8.0] <= wide[0.5] + 0.01).all() and wide[8.0].mean() < wide[0.5].mean() - 0.03, wide


def test_sweep_rejects_unknown_settings_and_bad_factories(digits_38):
    d, model = digits_38
    with pytest.raises(ValueError, match="not GAD settings"):
        gad_sweep(model, Saliency, (d.x_train, d.y_train), {"epsilon": [1.0]}, progress=False)
    with pytest.raises(ValueError, match="at least one value"):
        gad_sweep(model, Saliency, (d.x_train, d.y_train), {"delta": []}, progress=False)
    with pytest.raises(TypeError, match="method_factory"):
        gad_sweep(model, {"x": 3}, (d.x_train, d.y_train), {"delta": [1.0]}, progress=False)


def test_trade_off_figure_draws_every_row_and_the_targets():
    import pandas as pd

    table = pd.DataFrame({
        "dataset": ["a", "a", "b", "b"], "method": ["IG", "Saliency"] * 2, "delta": [1.0, 1.0, 2.0, 2.0],
        "kept_fraction": [0.9, 0.7, 0.6, 0.8], "rs_win_rate": [0.5, 0.7, 0.8, 0.4], "rs_p": [0.3, 0.001, 0.0, 0.5],
    })
    fig = plot_gad_sweep(table, highlight={"delta": 2.0})
    ax = fig.axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections[:-1]])
    assert sorted(map(tuple, points)) == sorted(zip(table.kept_fraction, table.rs_win_rate))
    assert len(ax.collections[-1].get_offsets()) == 2  # the highlighted setting
    assert {tuple(line.get_xdata()) for line in ax.lines} >= {(0.75, 0.75)}
    with pytest.raises(ValueError, match="lacks the columns"):
        plot_gad_sweep(table.drop(columns="rs_win_rate"))


def test_sweep_computes_the_maps_once_per_fit_and_fuses_them_again_per_q_and_agreement(digits_38):
    d, model = digits_38
    calls = []

    class Counted(Saliency):
        def attribute(self, inputs, *args, **kwargs):
            calls.append(len(inputs))
            return super().attribute(inputs, *args, **kwargs)

    x, y = d.x_test[:20], d.y_test[:20]
    config = GADConfig(steps=20, n_support=2)
    grid = {"q": [0.2, 0.3], "agreement": [1.0, 0.5]}
    table = gad_sweep(model, Counted, (d.x_train, d.y_train), grid, eval_data=(x, y), pair=(0, 1),
                      config=config, progress=False)
    assert len(calls) == 3  # T + 1 maps of one batch, for four fusion settings
    # the same figures as fusing through GAD itself at each setting (the same seeded fit)
    gad = GADWrapper(Saliency(model), config, progress=False).fit((d.x_train, d.y_train), pair=(0, 1))
    for _, row in table.iterrows():
        attr, parts = gad.attribute(x, target=y, q=row.q, agreement=row.agreement, return_components=True)
        kept = parts.consistency.flatten(1).sum(1).double() / parts.masks[0].flatten(1).sum(1)
        assert np.isclose(row.kept_fraction, float(np.nanmedian(kept.numpy())))
        expected = evaluate_gad(gad, x, y, q=row.q, agreement=row.agreement)
        assert all(np.isclose(row[k], v, equal_nan=True) for k, v in expected.items()), (row, expected)
