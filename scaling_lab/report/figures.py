"""The report's plotly figures; each builder gets data that has points (sections check first)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from scaling_lab.report.analysis import front_on, reaches_front
from scaling_lab.report.run import Run
from scaling_lab.schema import ACCURACY_METRICS, interval_columns, read_curve

COST_AXES = {
    "flops": ("FLOPs (multiply-adds, log)", "log"),
    "params": ("parameters", "linear"),
    "activations": ("activations", "linear"),
    "latency_ms": ("measured latency (ms)", "linear"),
}
FRONT_COLOR = "#1f5fa8"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
LAYOUT = dict(template="plotly_white", height=430, margin=dict(l=60, r=20, t=50, b=50), font=dict(family="sans-serif"))


def scale(metric: str) -> float:
    """Accuracy metrics are stored as fractions and shown as percentages, like the papers."""
    return 100.0 if metric in ACCURACY_METRICS else 1.0


def axis_title(metric: str) -> str:
    return f"{metric} (%)" if metric in ACCURACY_METRICS else metric


def human(value: float) -> str:
    """1.2B / 3.4M / 5.6k / 7.89, for hover text and tables."""
    if pd.isna(value):
        return "–"
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def hover_texts(run: Run, configs: pd.DataFrame) -> list[str]:
    metric, factor = run.main_metric, scale(run.main_metric)
    texts = []
    for _, row in configs.iterrows():
        spread = f" ± {row[metric + '_std'] * factor:.2f} sd" if pd.notna(row.get(metric + "_std")) else ""
        low, high = (row.get(column) for column in interval_columns(metric))
        bounds = f", 95 % [{low * factor:.2f}, {high * factor:.2f}]" if pd.notna(low) and pd.notna(high) else ""
        costs = ", ".join(f"{cost} {human(row[cost])}" for cost in COST_AXES if cost in row and pd.notna(row[cost]))
        texts.append(
            f"<b>{row['summary']}</b><br>{metric} {row[metric] * factor:.2f}{spread}{bounds}"
            f" (n={row['n_seeds']:g}{' of ' + str(row['planned_seeds']) + ' planned: INCOMPLETE, not on the front' if row.get('incomplete') else ''})<br>{costs}<br>group {row['group'] or '–'} · config {row['config_id']}"
            f"<br>seeds {row['seeds']} · trials {row['trial_ids']}"
        )
    return texts


def error_bars(rows: pd.DataFrame, metric: str) -> dict | None:
    """Asymmetric error bars from the 95 % interval columns (``analysis.configurations``)."""
    low, high = interval_columns(metric)
    if low not in rows.columns:
        return None
    factor = scale(metric)
    return dict(
        type="data",
        symmetric=False,
        array=(rows[high] - rows[metric]).clip(lower=0) * factor,
        arrayminus=(rows[metric] - rows[low]).clip(lower=0) * factor,
        thickness=1.2,
        width=3,
    )


def colour_labels(configs: pd.DataFrame) -> pd.Series:
    """What tells points apart: the group, with the feature network and the fusion where a group
    holds several (BiFPN sum and fast in one ablation group)."""
    labels = "group " + configs["group"].replace("", "(none)").astype(str)
    for field in ("feature_network", "fusion"):
        if field in configs.columns and (configs.groupby("group")[field].nunique() > 1).any():
            labels = labels + " · " + configs[field].astype(str)
    return labels


def pareto_figure(run: Run, configs: pd.DataFrame, cost: str) -> go.Figure:
    """Mean main metric against mean ``cost`` per configuration, coloured by group (and feature
    network where a group compares them) with 95 % error bars; the 2-D front as a line; filled markers on the front, open
    diamonds possibly on it (interval reaching it), faint open circles dominated."""
    metric, factor = run.main_metric, scale(run.main_metric)
    points = configs.dropna(subset=[metric, cost]).copy()
    points["hover"] = hover_texts(run, points)
    points["front"] = front_on(points, metric, cost)
    high = interval_columns(metric)[1]
    optimistic = points[high] if high in points.columns else points[metric]
    points["possibly"] = reaches_front(points[[metric, cost]].to_numpy(dtype=float), ["maximize", "minimize"], 0, optimistic.to_numpy(dtype=float))
    points["colour"] = colour_labels(points)
    figure = go.Figure()
    front = points[points["front"]].sort_values(cost)
    figure.add_trace(
        go.Scatter(x=front[cost], y=front[metric] * factor, mode="lines", line=dict(color=FRONT_COLOR, width=2, dash="dot"), name="Pareto front", hoverinfo="skip")
    )
    for index, (label, subset) in enumerate(points.groupby("colour", sort=True)):
        subset = subset.sort_values(cost)
        symbols = ["circle" if f else "diamond-open" if p else "circle-open" for f, p in zip(subset["front"], subset["possibly"])]
        figure.add_trace(
            go.Scatter(
                x=subset[cost],
                y=subset[metric] * factor,
                error_y=error_bars(subset, metric),
                mode="markers",
                marker=dict(color=PALETTE[index % len(PALETTE)], size=10, symbol=symbols, line=dict(width=1.5),
                            opacity=[1.0 if f or p else 0.45 for f, p in zip(subset["front"], subset["possibly"])]),
                name=label,
                hovertext=subset["hover"],
                hoverinfo="text",
            )
        )
    title, axis_type = COST_AXES[cost]
    figure.update_layout(
        title=f"{metric} vs {title.split(' (')[0]}", xaxis=dict(title=title, type=axis_type), yaxis_title=axis_title(metric),
        legend=dict(title="filled: on front · ◇ possibly · ○ dominated"), **LAYOUT,
    )
    return figure


def grid_heatmap(run: Run, grid: pd.DataFrame, chosen: pd.Series | None) -> go.Figure:
    """Accuracy over alpha × beta (gamma derived), each cell annotated with gamma and its FLOPs ratio."""
    metric, factor = run.main_metric, scale(run.main_metric)
    best = grid.sort_values(metric).drop_duplicates(["param.alpha", "param.beta"], keep="last")
    z = best.pivot(index="param.beta", columns="param.alpha", values=metric) * factor
    label = best.assign(
        label=[
            f"{row[metric] * factor:.2f}<br>γ={row['param.gamma']:g}<br>×{row['grid_flops_ratio']:.2f} FLOPs{' ✓' if row['eligible'] else ''}"
            for _, row in best.iterrows()
        ]
    ).pivot(index="param.beta", columns="param.alpha", values="label")
    figure = go.Figure(
        go.Heatmap(
            x=[f"{a:g}" for a in z.columns],
            y=[f"{b:g}" for b in z.index],
            z=z.to_numpy(),
            text=label.to_numpy(),
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar=dict(title=axis_title(metric)),
            hovertemplate="alpha %{x}, beta %{y}<br>%{text}<extra></extra>",
        )
    )
    if chosen is not None:
        figure.add_trace(
            go.Scatter(
                x=[f"{chosen['param.alpha']:g}"],
                y=[f"{chosen['param.beta']:g}"],
                mode="markers",
                marker=dict(symbol="square-open", size=70, color="white", line=dict(width=3)),
                name="derived coefficients",
                hoverinfo="skip",
            )
        )
    figure.update_layout(
        title="Compound-scaling grid (✓: may win: every seed complete, within the group constraints)",
        xaxis_title="alpha (depth)",
        yaxis_title="beta (width)",
        showlegend=False,
        **LAYOUT,
    )
    return figure


def scaling_figure(run: Run, curves: dict[str, pd.DataFrame]) -> go.Figure:
    """Accuracy against FLOPs for compound scaling and each single-dimension scaling, from the
    unscaled base (phi = 0) where the study has it, with 95 % error bars."""
    metric, factor = run.main_metric, scale(run.main_metric)
    figure = go.Figure()
    for group, rows in curves.items():
        figure.add_trace(
            go.Scatter(
                x=rows["flops"],
                y=rows[metric] * factor,
                error_y=error_bars(rows, metric),
                mode="lines+markers",
                name=f"{group} (phi {', '.join(f'{phi:g}' for phi in rows['param.phi'])})",
                line=dict(width=3 if group == "compound" else 1.5),
                hovertext=hover_texts(run, rows),
                hoverinfo="text",
            )
        )
    figure.update_layout(title=f"Scaling: {metric} vs FLOPs by scaling rule", xaxis=dict(title=COST_AXES["flops"][0], type="log"), yaxis_title=axis_title(metric), **LAYOUT)
    return figure


def training_curves_figure(run: Run, best: pd.DataFrame) -> go.Figure:
    """Training loss and the main metric per epoch for the best trials."""
    metric, factor = run.main_metric, scale(run.main_metric)
    figure = make_subplots(rows=1, cols=2, subplot_titles=("training loss", f"validation {metric}"))
    for index, (_, trial) in enumerate(best.iterrows()):
        curve = pd.DataFrame(read_curve(trial["curve"]))
        name = f"{trial.get('summary') or 'config ' + str(trial['config_id'])} · seed {trial.get('seed', '–'):g}"
        color = f"hsl({index * 360 // max(len(best), 1)}, 60%, 45%)"
        for column, col, multiplier in (("train_loss", 1, 1.0), (metric, 2, factor)):
            if column in curve:
                figure.add_trace(
                    go.Scatter(x=curve["epoch"], y=curve[column] * multiplier, mode="lines+markers", name=name,
                               legendgroup=name, showlegend=col == 1, line=dict(color=color)),
                    row=1, col=col,
                )
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(title_text="training loss", row=1, col=1)
    figure.update_yaxes(title_text=axis_title(metric), row=1, col=2)
    figure.update_layout(title=f"Training curves of the {len(best)} best trials", legend=dict(orientation="h", y=-0.2), **{**LAYOUT, "height": 480})
    return figure
