"""Scaling laws read off a study's results table: pure functions over ``(study.json, results)``.

- ``cells``: one configuration's per-seed values and costs, and seed resampling for intervals;
- ``surface``: a quadratic response surface over the compound grid, its optimum under
  alpha·beta²·gamma² = target, seed-bootstrap intervals and a lack-of-fit check;
- ``curves``: metric against measured FLOPs per scaling rule (forms chosen by leave-one-out
  error), exponent intervals and predictions with prediction intervals;
- ``recommend``: the spec predicted best within a FLOPs, parameter or latency budget;
- ``fidelity``: Kendall tau between rankings (early epochs against the end, or two studies);
- ``design_space``: error EDFs normalized over complexity (Radosavovic et al., ICCV 2019).
"""
