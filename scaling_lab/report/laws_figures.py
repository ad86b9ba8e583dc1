"""Figures of the scaling-law sections (``report.laws``): the grid with its fitted optimum and
confidence region, fitted scaling curves, rank agreement over epochs, and error EDFs."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from scaling_lab.laws.curves import CurveFit
from scaling_lab.laws.design_space import ErrorEDF
from scaling_lab.laws.fidelity import RankAgreement
from scaling_lab.laws.surface import SurfaceFit
from scaling_lab.report.figures import COST_AXES, LAYOUT, PALETTE, axis_title, scale

EXTRAPOLATE = 4.0  # curves are drawn (dashed) up to this factor beyond the largest measured FLOPs


def surface_figure(fit: SurfaceFit, winner: dict[str, float] | None) -> go.Figure:
    """Mean metric per grid cell over (alpha, beta), the bootstrap optima, their 95 % region,
    the fitted optimum (star) and the grid winner (square)."""
    factor = scale(fit.metric)
    alphas, betas = sorted({c.params["alpha"] for c in fit.cells}), sorted({c.params["beta"] for c in fit.cells})
    z = np.full((len(betas), len(alphas)), np.nan)
    for cell in fit.cells:
        z[betas.index(cell.params["beta"]), alphas.index(cell.params["alpha"])] = cell.mean[0] * factor
    figure = go.Figure(go.Heatmap(x=alphas, y=betas, z=z, colorscale="Viridis", colorbar=dict(title=axis_title(fit.metric)), hovertemplate="alpha %{x}, beta %{y}: %{z:.2f}<extra></extra>"))
    figure.add_trace(go.Scatter(x=fit.replicates[:, 0], y=fit.replicates[:, 1], mode="markers", marker=dict(size=3, color="white", opacity=0.35), name="bootstrap optima", hoverinfo="skip"))
    if len(fit.region) >= 2:
        ring = np.vstack([fit.region, fit.region[:1]])
        figure.add_trace(go.Scatter(x=ring[:, 0], y=ring[:, 1], mode="lines", fill="toself", fillcolor="rgba(255,255,255,0.15)", line=dict(color="white", width=2), name="95 % region", hoverinfo="skip"))
    if not fit.quality.poor:
        figure.add_trace(go.Scatter(x=[fit.optimum["alpha"]], y=[fit.optimum["beta"]], mode="markers", marker=dict(symbol="star", size=18, color="#ff7f0e", line=dict(width=1, color="black")), name="fitted optimum"))
    if winner:
        figure.add_trace(go.Scatter(x=[winner["alpha"]], y=[winner["beta"]], mode="markers", marker=dict(symbol="square-open", size=22, color="white", line=dict(width=3)), name="grid winner"))
    figure.update_layout(title="Response surface: fitted optimum and its 95 % region over the grid", xaxis_title="alpha (depth)", yaxis_title="beta (width)", legend=dict(orientation="h", y=-0.2), **LAYOUT)
    return figure


def curves_figure(fits: dict[str, CurveFit]) -> go.Figure:
    """Each rule's configuration means and its fitted curve with the 95 % band; dashed beyond
    the measured FLOPs (extrapolation)."""
    figure = go.Figure()
    for index, (rule, fit) in enumerate(fits.items()):
        colour, factor = PALETTE[index % len(PALETTE)], scale(fit.metric)
        smallest, largest = fit.measured_range
        figure.add_trace(go.Scatter(x=fit.flops, y=fit.means * factor, mode="markers", marker=dict(color=colour, size=9), name=f"{rule} (measured)", legendgroup=rule))
        for start, end, dash in ((smallest, largest, "solid"), (largest, largest * EXTRAPOLATE, "dash")):
            grid = np.geomspace(start, end, 40)
            low, high = fit.band(grid)
            figure.add_trace(go.Scatter(x=np.concatenate([grid, grid[::-1]]), y=np.concatenate([high, low[::-1]]) * factor, fill="toself", line=dict(width=0), fillcolor=colour, opacity=0.15, showlegend=False, legendgroup=rule, hoverinfo="skip"))
            figure.add_trace(go.Scatter(x=grid, y=fit.predict(grid) * factor, mode="lines", line=dict(color=colour, dash=dash), name=f"{rule}: {fit.form.name}" if dash == "solid" else f"{rule}: extrapolated", legendgroup=rule, showlegend=dash == "solid"))
    metric = next(iter(fits.values())).metric
    figure.update_layout(title=f"Scaling curves: {metric} against FLOPs, fitted (dashed: extrapolation, shaded: 95 % band)", xaxis=dict(title=COST_AXES["flops"][0], type="log"), yaxis_title=axis_title(metric), **LAYOUT)
    return figure


def fidelity_figure(groups: dict[str, list[RankAgreement]]) -> go.Figure:
    """Kendall tau of each epoch's ranking against the final one, per group, with 95 % intervals."""
    figure = go.Figure()
    for index, (group, rows) in enumerate(groups.items()):
        epochs = [float(row.label.split()[-1]) for row in rows]
        taus = np.array([row.tau for row in rows])
        figure.add_trace(
            go.Scatter(
                x=epochs, y=taus, mode="lines+markers", name=f"group {group or '(none)'} ({rows[0].configurations} configurations)",
                line=dict(color=PALETTE[index % len(PALETTE)]),
                marker=dict(symbol=["circle" if row.same_winner else "x" for row in rows], size=10),
                error_y=dict(type="data", symmetric=False, array=np.array([row.high for row in rows]) - taus, arrayminus=taus - np.array([row.low for row in rows])),
            )
        )
    figure.update_layout(title="Proxy fidelity: rank agreement of each epoch with the end (x: another early winner)", xaxis_title="validation epoch", yaxis=dict(title="Kendall tau with the final ranking", range=[-1.05, 1.05]), **LAYOUT)
    return figure


def edf_figure(edfs: list[ErrorEDF], metric: str) -> go.Figure:
    """Complexity-normalized error EDFs, one step curve per group."""
    factor = scale(metric)
    figure = go.Figure()
    for index, edf in enumerate(edfs):
        figure.add_trace(go.Scatter(x=edf.errors * factor, y=edf.cumulative, mode="lines", line=dict(shape="hv", color=PALETTE[index % len(PALETTE)]), name=f"group {edf.group} ({edf.models} models)"))
    figure.update_layout(title="Design spaces: error EDFs normalized over complexity (Radosavovic et al. 2019)", xaxis_title=f"error (1 - {metric}){' (%)' if factor != 1 else ''}", yaxis=dict(title="cumulative share of models", range=[0, 1.02]), **LAYOUT)
    return figure
