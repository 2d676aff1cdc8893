"""Ground-truth tables of the synthetic fab (registered with :func:`backend_fab.schema.register`).

All are run-scoped: they carry the ``run_id`` of the run they describe and are added to the lake
in the same :meth:`Lake.add_run` call, so truth appears exactly when its data does. Die positions
``x, y`` are the tester (data) coordinates of the ``die`` table, so truth joins on
``(lot_id, wafer_id, x, y)`` directly.

``truth_lots`` (one row per wafer-sort run, i.e. per fab lot):
    product, lot_id, n_wafers; ``bad_site`` (probe site with extra contact fails, null when the card
    was good) and ``bad_site_extra`` (added fail probability); ``reticle_repeat`` (JSON
    ``{"positions": [[rx, ry], ...], "density": d, ...}`` or null); ``lot_shift`` (JSON
    ``{test_num: shift in test sigmas}``).
``truth_wafers`` (one row per wafer):
    product, lot_id, wafer_id; ``pattern`` (WM-811K class planted on the wafer); ``params`` (JSON of
    :func:`~backend_fab.synth.patterns.draw_signature`'s ``params_used``); ``bad_site``;
    ``reticle_repeat`` (JSON or null, with this wafer's density); ``n_fail_first``/``n_fail_final``
    (die failing first pass / after retest); ``n_outliers``; ``n_latent``.
``truth_die`` (one row per gross die and wafer):
    product, lot_id, wafer_id, x, y, ``ring`` (:meth:`Layout.ring_index`), ``cause`` of the
    first-pass result (``pass``; ``pattern``: the wafer's WM-811K signature; ``random``: the
    background defect rate; ``reticle``; ``contact``; ``parametric``: a natural tail or gradient
    beyond a limit; a die hit by several causes takes the first of pattern, random, reticle, and
    contact overrides them all), ``defect_mode``
    (``iddq``, ``ileak``, ``scan``, ``mbist``, ``dc``, ``open``, ``short`` or null),
    ``first_pass``, ``final_pass``, ``retested``, ``n_fail_neighbors`` (8-neighbours failing
    after retest for a real reason, i.e. not a contact fail), ``outlier`` (has a planted
    outlier), ``latent_risk`` (probability of a latent reliability fail), ``latent_fail``
    (realised; only final-good die), ``latent_insertion`` (``FT1`` or ``PBI``: where the latent
    fail shows if the die is packaged), ``iddq_shift_sigma`` (the latent die's IDDQ elevation, in
    sigmas of ln IDDQ; 0 for others).
``truth_outliers`` (one row per planted outlier):
    product, lot_id, wafer_id, x, y, test_num, test_name, ``value``, ``expected`` (the die's
    noise-free mean: nominal + lot/wafer shifts + gradient + site offset), ``sigma`` (signed
    ``(value - expected) / test sigma``, |sigma| in [6, 10]), ``sigma_wafer`` (robust z within the
    wafer: ``(value - median) / (IQR / 1.349)`` over the wafer's final-good die).
``truth_units`` (one row per packaged unit; in the ``ASSEMBLY`` run of its assembly lot):
    unit_id, product, lot_id, wafer_id, x, y (the source die), assembly_lot_id, strip_id, row,
    col, ``assembly_reject_step``/``assembly_reject_code`` (null when the unit passed assembly),
    ``assembly_defect`` (a hidden assembly defect that fails final-test continuity), latent_fail,
    latent_insertion, ``ft1_cause``/``pbi_cause`` (why the unit fails that insertion: ``latent``,
    ``assembly``, ``contact`` (a socket contact fail not recovered by retest), ``random``,
    ``parametric`` (a limit tail, e.g. a latent die's raised IDDQ); null: passes or
    not tested there).
``truth_assembly`` (one row per assembly lot and step):
    assembly_lot_id, step, equipment, material_lot, ``excursion`` (the planted bad wire bonder),
    ``reject_rate`` (the per-unit reject probability planted for that lot and step, before the
    wafer-edge and strip-edge factors).
"""

from __future__ import annotations

import pyarrow as pa

from backend_fab import schema
from backend_fab.schema import Table

__all__ = ["TRUTH_TABLES"]


def _table(name, fields, keys, partition_by=(), description=""):
    return schema.register(
        Table(
            name=name,
            schema=pa.schema(fields),
            keys=tuple(keys),
            partition_by=tuple(partition_by),
            run_scoped=True,
            description=description,
        )
    )


TRUTH_LOTS = _table(
    "truth_lots",
    [
        ("run_id", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("n_wafers", pa.int32()),
        ("bad_site", pa.int16()),
        ("bad_site_extra", pa.float64()),
        ("reticle_repeat", pa.string()),
        ("lot_shift", pa.string()),
    ],
    keys=["run_id"],
    description="Synthetic truth: what was planted on a fab lot (bad probe site, reticle, shifts).",
)

TRUTH_WAFERS = _table(
    "truth_wafers",
    [
        ("run_id", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("pattern", pa.string()),
        ("params", pa.string()),
        ("bad_site", pa.int16()),
        ("reticle_repeat", pa.string()),
        ("n_fail_first", pa.int64()),
        ("n_fail_final", pa.int64()),
        ("n_outliers", pa.int64()),
        ("n_latent", pa.int64()),
    ],
    keys=["run_id", "wafer_id"],
    description="Synthetic truth: the WM-811K class and parameters planted on each wafer.",
)

TRUTH_DIE = _table(
    "truth_die",
    [
        ("run_id", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("ring", pa.int16()),
        ("cause", pa.string()),
        ("defect_mode", pa.string()),
        ("first_pass", pa.bool_()),
        ("final_pass", pa.bool_()),
        ("retested", pa.bool_()),
        ("n_fail_neighbors", pa.int16()),
        ("outlier", pa.bool_()),
        ("latent_risk", pa.float64()),
        ("latent_fail", pa.bool_()),
        ("latent_insertion", pa.string()),
        ("iddq_shift_sigma", pa.float64()),
    ],
    keys=["run_id", "wafer_id", "x", "y"],
    partition_by=["product", "lot_id"],
    description="Synthetic truth per die: fail cause, neighbourhood, latent reliability risk.",
)

TRUTH_OUTLIERS = _table(
    "truth_outliers",
    [
        ("run_id", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("test_num", pa.int64()),
        ("test_name", pa.string()),
        ("value", pa.float64()),
        ("expected", pa.float64()),
        ("sigma", pa.float64()),
        ("sigma_wafer", pa.float64()),
    ],
    keys=["run_id", "wafer_id", "x", "y", "test_num"],
    description="Synthetic truth: planted parametric outliers on good die (value, sigmas).",
)

TRUTH_UNITS = _table(
    "truth_units",
    [
        ("run_id", pa.string()),
        ("unit_id", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("assembly_lot_id", pa.string()),
        ("strip_id", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("assembly_reject_step", pa.string()),
        ("assembly_reject_code", pa.string()),
        ("assembly_defect", pa.bool_()),
        ("latent_fail", pa.bool_()),
        ("latent_insertion", pa.string()),
        ("ft1_cause", pa.string()),
        ("pbi_cause", pa.string()),
    ],
    keys=["run_id", "unit_id"],
    description="Synthetic truth per packaged unit: source die, assembly fate, final-test causes.",
)

TRUTH_ASSEMBLY = _table(
    "truth_assembly",
    [
        ("run_id", pa.string()),
        ("assembly_lot_id", pa.string()),
        ("step", pa.string()),
        ("equipment", pa.string()),
        ("material_lot", pa.string()),
        ("excursion", pa.bool_()),
        ("reject_rate", pa.float64()),
    ],
    keys=["run_id", "step"],
    description="Synthetic truth per assembly lot and step: equipment, material, planted rates.",
)

#: Every ground-truth table, by name.
TRUTH_TABLES: dict[str, Table] = {
    t.name: t
    for t in (TRUTH_LOTS, TRUTH_WAFERS, TRUTH_DIE, TRUTH_OUTLIERS, TRUTH_UNITS, TRUTH_ASSEMBLY)
}
