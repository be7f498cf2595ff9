"""Study figures (study/figures.py) and the self-contained HTML report (study/html_report.py).

Each figure is drawn from realistic synthetic data (3 arms × 3 seeds × 12 epochs) and must
write a PNG that decodes to an image of a plausible size; empty input returns None.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from study import figures as F
from study.html_report import markdown_to_html, write_html

ARMS = ["kd", "wkd_l", "wkl_best"]
EPOCHS = 12
SEEDS = 3


def _curves(final: float, rng: np.random.Generator, scale: float = 1.0) -> list[list[float]]:
    e = np.arange(1, EPOCHS + 1)
    return [
        [float(v) for v in final * (1 - np.exp(-e / 3.5)) + rng.normal(0, 0.5 * scale, EPOCHS)]
        for _ in range(SEEDS)
    ]


def _decay(start: float, rng: np.random.Generator) -> list[list[float]]:
    e = np.arange(1, EPOCHS + 1)
    return [
        [float(v) for v in start * np.exp(-e / 5) + 0.2 * start + rng.normal(0, 0.02, EPOCHS)]
        for _ in range(SEEDS)
    ]


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _accuracy_series(rng: np.random.Generator) -> dict[str, list[list[float]]]:
    series = {a: _curves(f, rng) for a, f in zip(ARMS, [70.0, 71.0, 72.5], strict=True)}
    series["wkl_best"][1] = series["wkl_best"][1][:7]  # a seed stopped early
    series["kd"][0][3] = float("nan")  # a missing value
    return series


def _loss_series(rng: np.random.Generator) -> dict[str, dict[str, list[list[float]]]]:
    return {
        "kd": {"kl": _decay(2.0, rng), "tc": _decay(0.8, rng), "nc": _decay(1.2, rng)},
        "wkd_l": {"kl": _decay(2.2, rng), "w": _decay(0.5, rng)},
        "wkl_best": {
            m: _decay(s, rng) for m, s in [("kl", 1.8), ("tc", 0.7), ("nc", 1.0), ("w", 0.4)]
        },
    }


def _trials(
    rng: np.random.Generator, n: int = 24
) -> tuple[list[dict[str, float | str | None]], list[float]]:
    trials: list[dict[str, float | str | None]] = []
    objective: list[float] = []
    for i in range(n):
        schedule = ["step", "linear", "cosine"][i % 3]
        t: dict[str, float | str | None] = {
            "lr": float(10 ** rng.uniform(-4, -1)),
            "temperature": float(rng.uniform(1, 8)),
            "schedule": schedule,
            "switch_epoch": float(rng.integers(2, 10)),
            "ramp_epochs": None if schedule == "step" else float(rng.integers(1, 5)),
        }
        trials.append(t)
        objective.append(float(70 + 3 * rng.random()))
    return trials, objective


def _assert_png(path: Path | None, expected: Path) -> None:
    assert path is not None
    assert Path(path) == expected
    assert expected.is_file()
    assert expected.stat().st_size > 10_000, "a figure with data is more than a blank canvas"
    img = mpimg.imread(str(expected))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert float(np.std(img[..., :3])) > 0.01, "the image is not uniform"


# --- colours -------------------------------------------------------------------------


def test_arm_colors_fixed_for_baselines_and_distinct() -> None:
    a = F.arm_colors(["wkl_a", "kd", "gkl", "wkd_l", "wkl_b"])
    b = F.arm_colors(["kd", "wkd_l", "gkl"])
    for base in ("kd", "wkd_l", "gkl"):
        assert a[base] == b[base] == F.BASELINE_COLORS[base]
    assert len(set(a.values())) == 5
    assert F.arm_colors(["WKD-L"])["WKD-L"] == F.BASELINE_COLORS["wkd_l"]


# --- each figure writes a readable PNG -----------------------------------------------


def test_accuracy_curves_png(tmp_path: Path, rng: np.random.Generator) -> None:
    out = tmp_path / "acc.png"
    _assert_png(F.accuracy_curves(_accuracy_series(rng), out, split="validation"), out)


def test_loss_evolution_png(tmp_path: Path, rng: np.random.Generator) -> None:
    out = tmp_path / "loss.png"
    _assert_png(F.loss_evolution(_loss_series(rng), out), out)
    partial = tmp_path / "loss_kl_only.png"  # three panels "not logged", still drawn
    _assert_png(F.loss_evolution({"kd": {"kl": _decay(2.0, rng)}}, partial), partial)


def test_weight_schedule_png(tmp_path: Path) -> None:
    chosen = {
        "wasserstein (W)": [1.0 if e < 5 else max(0.0, 1 - (e - 5) / 4) for e in range(EPOCHS)],
        "KL": [0.0 if e < 5 else min(1.0, (e - 5) / 4) for e in range(EPOCHS)],
    }
    published = {
        "wasserstein (W)": [1.0 if e < 6 else 0.0 for e in range(EPOCHS)],
        "KL": [0.0 if e < 6 else 1.0 for e in range(EPOCHS)],
    }
    out = tmp_path / "schedule.png"
    _assert_png(F.weight_schedule(EPOCHS, chosen, published, out), out)


def test_parallel_coordinates_png(tmp_path: Path, rng: np.random.Generator) -> None:
    trials, objective = _trials(rng)
    out = tmp_path / "pc.png"
    _assert_png(F.parallel_coordinates(trials, objective, out, objective_name="val acc (%)"), out)


def test_importances_png(tmp_path: Path) -> None:
    values = {"lr": 0.42, "temperature": 0.21, "switch_epoch": 0.18, "ramp_epochs": 0.09}
    out = tmp_path / "imp.png"
    _assert_png(F.importances(values, out, evaluator="fANOVA"), out)


def test_rung_agreement_png(tmp_path: Path) -> None:
    rows = [(1, 0.12, 40), (3, 0.41, 20), (6, 0.68, 10), (9, 0.93, 5), (2, -0.3, 30)]
    out = tmp_path / "rung.png"
    _assert_png(F.rung_agreement(rows, out), out)


# --- no data: None, and no file ------------------------------------------------------


def test_empty_inputs_return_none(tmp_path: Path) -> None:
    p = tmp_path / "x.png"
    assert F.accuracy_curves({}, p, split="val") is None
    assert F.accuracy_curves({"kd": []}, p, split="val") is None
    assert F.accuracy_curves({"kd": [[], [float("nan")]]}, p, split="val") is None
    assert F.loss_evolution({}, p) is None
    assert F.loss_evolution({"kd": {}, "wkl": {"kl": []}}, p) is None
    assert F.weight_schedule(0, {}, {}, p) is None
    assert F.weight_schedule(12, {}, {"KL": []}, p) is None
    assert F.parallel_coordinates([], [], p, objective_name="acc") is None
    assert F.importances({}, p) is None
    assert F.rung_agreement([], p) is None
    assert not p.exists()


# --- statistics behind the curves ----------------------------------------------------


def test_band_mean_and_kind() -> None:
    two = F._band([[1.0, 2.0, 3.0], [3.0, 4.0]])
    assert two is not None and two.kind == "min–max" and two.n_seeds == 2
    assert list(two.mean) == [2.0, 3.0, 3.0]  # the stopped seed does not count at epoch 3
    assert list(two.low) == [1.0, 2.0, 3.0] and list(two.high) == [3.0, 4.0, 3.0]
    three = F._band([[1.0, float("nan")], [2.0, 5.0], [3.0, 7.0]])
    assert three is not None and three.kind == "±1 std" and three.n_seeds == 3
    assert three.mean[0] == pytest.approx(2.0) and three.mean[1] == pytest.approx(6.0)
    assert three.high[0] - three.mean[0] == pytest.approx(1.0)  # sample std of 1, 2, 3


# --- parallel coordinates: inactive parameters are never plotted ----------------------


def test_polyline_breaks_at_inactive_parameter(rng: np.random.Generator) -> None:
    trials, _ = _trials(rng)
    axes = sorted({k for t in trials for k in t})
    scales = F._axis_scales(trials, axes)
    step = next(t for t in trials if t["schedule"] == "step")
    assert step["ramp_epochs"] is None
    inactive = axes.index("ramp_epochs")
    segments = F._polyline_segments(step, axes, scales)
    plotted = [i for seg in segments for i, _ in seg]
    assert inactive not in plotted
    assert sorted(plotted) == [i for i in range(len(axes)) if i != inactive]
    # the line breaks: no segment jumps across the inactive axis
    for seg in segments:
        idx = [i for i, _ in seg]
        assert idx == list(range(idx[0], idx[-1] + 1))
    assert len(segments) == 2  # lr | (ramp_epochs) | schedule, switch_epoch, temperature

    missing = {"lr": 1e-3, "temperature": 4.0}  # key absent, and NaN, are inactive too
    segs = F._polyline_segments(
        {**missing, "switch_epoch": float("nan")}, ["lr", "switch_epoch", "temperature"]
    )
    assert [[i for i, _ in s] for s in segs] == [[0], [2]]
    assert F._polyline_segments({}, ["lr"]) == []


def test_parallel_axis_scaling() -> None:
    trials: list[dict[str, float | str | None]] = [
        {"lr": 1e-5, "t": 1.0, "s": "b"},
        {"lr": 1e-2, "t": 3.0, "s": "a"},
        {"lr": 1e-3, "t": 2.0, "s": None},
    ]
    scales = F._axis_scales(trials, ["lr", "s", "t"])
    assert scales["lr"].kind == "log"  # three decades
    assert scales["t"].kind == "num"
    assert scales["s"].kind == "cat" and scales["s"].categories == ("a", "b")
    seg = F._polyline_segments(trials[2], ["lr", "s", "t"], scales)
    assert [[i for i, _ in s] for s in seg] == [[0], [2]]
    assert seg[0][0][1] == pytest.approx(2 / 3)  # log10 position of 1e-3 in [1e-5, 1e-2]
    assert seg[1][0][1] == pytest.approx(0.5)
    for t in trials:
        for s in F._polyline_segments(t, ["lr", "s", "t"], scales):
            assert all(0.0 <= y <= 1.0 for _, y in s)


def test_parallel_coordinates_rejects_mismatched_objective(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        F.parallel_coordinates([{"lr": 0.1}], [], tmp_path / "x.png", objective_name="acc")


# --- HTML report ---------------------------------------------------------------------


def _figures(tmp_path: Path, rng: np.random.Generator) -> list[tuple[str, Path]]:
    acc = F.accuracy_curves(_accuracy_series(rng), tmp_path / "acc.png", split="validation")
    rung = F.rung_agreement([(1, 0.2, 20), (3, 0.7, 10)], tmp_path / "rung.png")
    assert acc is not None and rung is not None
    return [("Validation accuracy <per epoch>", acc), ("Rung agreement", rung)]


def test_html_embeds_figures_and_is_self_contained(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    figs = _figures(tmp_path, rng)
    text = "Intro paragraph with `code` and **bold**.\n\n- one\n- two\n"
    out = write_html(
        tmp_path / "r" / "report.html",
        title="Study <wkl>",
        sections=[("Summary", text)],
        figures=figs,
        notes=["see https-free note"],
    )
    page = out.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert 'src="/' not in page and "<link" not in page and "<script" not in page
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(figs)
    assert base64.b64decode(uris[0]) == figs[0][1].read_bytes()
    assert base64.b64decode(uris[1]) == figs[1][1].read_bytes()
    # index of figures links to each figure's anchor; captions under the images
    for i in (1, 2):
        assert f'href="#fig-{i}"' in page and f'id="fig-{i}"' in page
    assert page.index("<img", page.index('id="fig-1"')) < page.index(
        "<figcaption>", page.index('id="fig-1"')
    )
    assert "Validation accuracy &lt;per epoch&gt;" in page
    assert "<title>Study &lt;wkl&gt;</title>" in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page
    assert "<ul>" in page and "<li>one</li>" in page


def test_html_escapes_script(tmp_path: Path) -> None:
    evil = "hello <script>alert('x')</script> & <b>bold</b>"
    out = write_html(
        tmp_path / "r.html",
        title="<script>t()</script>",
        sections=[("<script>h()</script>", evil)],
        figures=[],
        notes=[evil],
    )
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(" in page
    assert "<b>" not in page
    assert "&amp;" in page


def test_markdown_pipe_table() -> None:
    md = (
        "Results:\n\n"
        "| arm | top-1 (%) | seeds |\n"
        "|---|---:|---|\n"
        "| kd | 70.1 ± 0.3 | 3 |\n"
        "| wkl `best` | 72.4 | 3 |\n"
        "| gkl <i> | n/a | 2 |\n"
        "\nAfter the table."
    )
    out = markdown_to_html(md)
    assert out.count("<table>") == 1
    table = out[out.index("<table>") : out.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
    assert len(rows) == 4  # header + 3 body rows
    assert len(re.findall(r"<th[ >]", rows[0])) == 3
    for row in rows[1:]:
        assert len(re.findall(r"<td[ >]", row)) == 3
    assert '<td class="num">72.4</td>' in table
    assert '<td class="num">70.1 ± 0.3</td>' in table
    assert "<td>kd</td>" in table
    assert "<code>best</code>" in table
    assert "&lt;i&gt;" in table
    assert "<p>Results:</p>" in out and "<p>After the table.</p>" in out


def test_markdown_headings_lists_paragraphs() -> None:
    out = markdown_to_html("# Top\n## Sub\npara one\nstill one\n\n- a\n- b **c**\n\npara two")
    assert "<h1>Top</h1>" in out and "<h2>Sub</h2>" in out
    assert "<p>para one still one</p>" in out
    assert "<ul>\n<li>a</li>\n<li>b <strong>c</strong></li>\n</ul>" in out
    assert "<p>para two</p>" in out
    assert "<h3>Top</h3>" in markdown_to_html("# Top", heading_offset=2)
    # bold markers inside code stay literal
    assert "<code>**x**</code>" in markdown_to_html("`**x**`")


def test_html_missing_figure_is_noted(tmp_path: Path) -> None:
    out = write_html(
        tmp_path / "r.html", title="t", sections=[], figures=[("gone", tmp_path / "nope.png")]
    )
    page = out.read_text(encoding="utf-8")
    assert "figure not available" in page and "data:image" not in page


def test_figures_module_has_no_heavy_imports() -> None:
    src = Path(F.__file__).read_text() + Path(write_html.__code__.co_filename).read_text()
    for mod in ("ray", "mlflow", "torch"):
        assert not re.search(rf"^\s*(import|from)\s+{mod}\b", src, flags=re.M)
