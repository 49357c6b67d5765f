"""Issue 21: a report people read -- one self-contained HTML page (figures inlined), a table of contents, the key
findings at the top, wide tables that scroll, partial studies that say which rows and why, an untracked default
output folder; and the page rendered by a real headless browser (skipped when none is installed; .ci/run installs
Debian's chromium-headless-shell where apt is available), which keeps a screenshot."""
from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from workbench import report, study_api

ROOT = Path(__file__).resolve().parent.parent

STUDY = textwrap.dedent('''
    """A tiny study for the report tests."""
    import pandas as pd
    TITLE = "Tiny study"
    DESCRIPTION = "Measures nothing, **quickly**."

    def run(quick=False, executor=None):
        import matplotlib.pyplot as plt
        df = pd.DataFrame({"source": ["a", "a", "b"], "method": ["m1", "m2", "m1"], "mae": [0.1, 0.2, None],
                           "skipped": [None, None, "source b offline"]})
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([1, 2, 3], [3, 1, 2], marker="o", label="m1")
        ax.legend()
        wide = pd.DataFrame([[i * j for j in range(60)] for i in range(3)], columns=[f"col{j}" for j in range(60)])
        return df.assign(**{f"w{j}": 0 for j in range(3)}), {"tiny_fig": fig, "tiny_fig2": fig}

    def summarize(df):
        wide = pd.DataFrame([[i * j for j in range(60)] for i in range(3)], columns=[f"col{j}" for j in range(60)])
        return [("A wide table", wide)]

    def notes(df):
        return ["m1 beats m2 by 2x on source a"]
''')


@pytest.fixture
def tiny_report(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "kbit_tiny_study.py").write_text(STUDY)
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setattr(study_api, "STUDIES", dict(study_api.STUDIES))
    study_api.register("tiny", "kbit_tiny_study")
    study_api.register("absent", "kbit_no_such_study_module_xyz")
    md, done = report.build_report("page", studies=["tiny", "absent"], executor="serial", out_root=tmp_path / "r",
                                   progress=False)
    return md.parent, done


def test_html_is_self_contained_with_toc_findings_and_scrolling_tables(tiny_report):
    out, done = tiny_report
    page = (out / "report.html").read_text()
    # figures inlined: no PNG referenced by path, one data URI per figure
    assert not re.search(r"<img[^>]+src='(?!data:)", page)
    assert page.count("src='data:image/png;base64,") == 2
    # a table of contents whose every link has a target
    toc = re.search(r"<nav class='toc'>(.*?)</nav>", page, re.S).group(1)
    anchors = re.findall(r"href='#([^']+)'", toc)
    assert len(anchors) >= 4 and all(f"id='{a}'" in page for a in anchors)
    # the key findings come before the first study section
    assert page.index("m1 beats m2 by 2x") < page.index("<h2 id='s-tiny'>")
    assert page.index("Summary and key findings") < page.index("<h2 id='s-tiny'>")
    # partial: which rows and why
    assert done[0].status == "partial" and "source b offline" in page and "Skipped rows" in page
    # wide tables scroll inside their own box
    assert "div.scroll{overflow-x:auto" in page and "<div class='scroll'><table" in page


def test_default_output_is_untracked():
    assert report.LOCAL_REPORTS == ROOT / "reports" / "local"
    import inspect
    assert inspect.signature(report.build_report).parameters["out_root"].default == report.LOCAL_REPORTS
    from workbench import cli
    args = cli.build_parser().parse_args(["report"])
    assert Path(args.out) == report.LOCAL_REPORTS
    if shutil.which("git") and (ROOT / ".git").exists():
        r = subprocess.run(["git", "check-ignore", "-q", "reports/local/cpu-default/report.md"], cwd=ROOT)
        assert r.returncode == 0, "reports/local/ must be listed in .gitignore"
    # `make report` takes that default: its recipe names no other root
    recipe = re.search(r"^report:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "workbench report" in recipe and "--out" not in recipe, recipe


def test_the_committed_reference_report_is_regenerated_on_purpose():
    """`workbench report --out reports --name cpu-default` replaces the committed folder (a complete report)."""
    from workbench import cli
    args = cli.build_parser().parse_args(["report", "--out", "reports", "--name", "cpu-default"])
    assert Path(args.out) / args.name == Path("reports/cpu-default")
    ref = ROOT / "reports" / "cpu-default"
    assert (ref / "metadata.json").is_file() and report._is_replaceable(ref)


BROWSERS = ("chromium-headless-shell", "headless_shell", "chromium", "chromium-browser", "google-chrome")

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const links = [...document.querySelectorAll("nav.toc a")];
  const missing = links.filter(a => !document.getElementById(a.getAttribute('href').slice(1))).length;
  const h2 = document.querySelectorAll('h2').length;
  document.body.setAttribute('data-check', `images=${imgs.length} broken=${broken} toc=${links.length} missing=${missing} h2=${h2}`);
});
</script></body>"""


def _browser() -> str | None:
    for b in BROWSERS:
        p = shutil.which(b) or (shutil.which(b, path="/usr/lib/chromium") if b == "headless_shell" else None)
        if p:
            return p
    return None


def test_page_renders_in_a_headless_browser_with_every_image_and_section(tiny_report, tmp_path):
    exe = _browser()
    if exe is None:
        pytest.skip("no headless browser (apt-get install -y chromium-headless-shell)")
    out, _ = tiny_report
    probe = tmp_path / "probe.html"
    probe.write_text((out / "report.html").read_text().replace("</body>", CHECK, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=5000", "--run-all-compositor-stages-before-draw"]
    dom = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-check="([^"]+)"', dom.stdout)
    assert m, f"the page did not load: {dom.stderr[-2000:]}"
    check = dict(kv.split("=") for kv in m.group(1).split())
    assert int(check["images"]) == 2 and check["broken"] == "0", check
    assert int(check["toc"]) >= 4 and check["missing"] == "0", check
    assert int(check["h2"]) >= 4, check
    shot = tmp_path / "report.png"
    subprocess.run([exe, *flags, "--window-size=1280,2400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000   # kept under the test's tmp dir for review


# ------------------------------------------------------------------ the speed view (issue 21)

def _speed_rows():
    import pandas as pd
    rows = []
    for dev, ops in (("CPU (2 cores)", ("adam8", "quantize_4bit")), ("GPU A", ("adam8bit", "quantize_4bit", "int8_mm")),
                     ("GPU B", ("adam8bit", "quantize_4bit", "int8_mm"))):
        for op in ops:
            for be in ("ref", "fast"):
                rows.append({"op": op, "backend": be, "run_device": dev, "n": 1 << 20, "gbps": 10.0 + len(op),
                             "copy_gbps": 8.0 if dev.startswith("CPU") else 100.0, "source_file": f"{dev}.csv"})
    return pd.DataFrame(rows)


def test_speed_op_names_line_up_across_devices_and_every_panel_has_a_true_legend():
    from matplotlib.colors import to_hex

    from studies import speed
    d = speed.normalize(_speed_rows())
    assert set(d.loc[d["run_device"] == "CPU (2 cores)", "op"]) == {"adam8bit", "quantize_4bit"}
    assert [speed.canonical_dtype(x) for x in ("torch.bfloat16", "bf16", "float16", "fp32")] == \
        ["bfloat16", "bfloat16", "float16", "float32"]
    t = speed.table(d, "gbps", largest_only=True)
    assert t.loc[("adam8bit", "fast")].notna().all()          # CPU and both GPUs in one row
    fig = speed.figures(d)["speed"]
    colour_of = {}
    for ax in fig.axes:
        leg = ax.get_legend()
        assert leg is not None, ax.get_title()
        for cont, text in zip(ax.containers, leg.get_texts()):
            c = to_hex(cont.patches[0].get_facecolor())
            assert colour_of.setdefault(text.get_text(), c) == c, (ax.get_title(), text.get_text())
    assert len(set(colour_of.values())) == 3                  # GPU-only panels keep the devices' colours
    assert any("yardstick, not a ceiling" in n for n in speed.notes(d))   # % of copy > 100 explained


def test_outliers_section_has_prose_and_readable_tables():
    """Was a raw 20-row dump: now a description, headline notes and two shaped tables."""
    import pandas as pd
    import torch

    from studies import outliers_study as S
    from workbench import outliers as O
    X, dims = O.planted_outliers(tokens=64, features=96, n_outlier_dims=3)
    W = torch.randn(32, 96, generator=torch.Generator().manual_seed(1)) * 0.05
    summ = O.outlier_summary({"enc.0.q": X, "enc.0.k": X * 0.1}, S.THRESHOLDS).assign(source="minilm", kind="summary")
    sw = O.matmul_error_sweep(X, W, S.THRESHOLDS).assign(source="minilm", layer="enc.0.q", kind="sweep")
    df = pd.concat([summ, sw], ignore_index=True)
    assert "LLM.int8()" in S.DESCRIPTION and S.TITLE
    titles = [t for t, _ in S.summarize(df)]
    assert any("threshold 6" in t for t in titles) and any("Threshold sweep" in t for t in titles)
    notes = S.notes(df)
    assert any("of 2 MiniLM layer inputs have outlier features" in n for n in notes)
    assert any("without decomposition" in n for n in notes)


# ------------------------------------------------------------------ parity: CPU and GPU rows in one table (issue 21)

def test_parity_section_lines_up_this_runs_cpu_rows_with_the_committed_gpu_files(tmp_path, monkeypatch):
    import pandas as pd

    from workbench import parity
    rows = [{"family": "quant", "case": op, "backend": "bnb", "device": "cpu", "seed": 5, "op": op, "codebook": "nf4",
             "blocksize": 64, "n": 200, "dtype": "float32", "ok": True, "level": "exact", "detail": "",
             "mismatches": 0, "max_diff": 0.0} for op in ("quantize_4bit", "dequantize_4bit")]
    monkeypatch.setattr(parity, "run_parity", lambda *a, **k: pd.DataFrame(rows))   # a CPU run in no time
    md, done = report.build_report("p", studies=["parity"], executor="serial", out_root=tmp_path, progress=False)
    assert done[0].status == "ok", done[0].error
    page = (md.parent / "report.html").read_text()
    section = page[page.index("<h2 id='s-parity'>"):page.index("<h2 id='metadata'>")]
    cpu = done[0].tables[1][1].columns[0]
    assert cpu.startswith("CPU (")
    for device in (cpu, "NVIDIA H100 80GB HBM3", "NVIDIA H200"):
        assert device in section
    for source in ("gpu-h200/parity.parquet", "optim-gpu/h200/parity.parquet", "int8-gpu/h200/parity_bnb.parquet"):
        assert source in section
    # one row, the three devices side by side: bnb's quantize_4bit on the CPU and on both GPUs
    side = done[0].tables[1][1]
    row = side.loc[("quant", "quantize_4bit", "bnb", "reference")]
    assert row[cpu] == "1/1" and row["NVIDIA H200"].endswith("(i)") and row["NVIDIA H100 80GB HBM3"]
    # the long table names the device on every row and is shown whole
    long = done[0].tables[2][1].reset_index()
    assert long["device"].notna().all() and set(long["device"]) == {cpu, "NVIDIA H100 80GB HBM3", "NVIDIA H200"}
    assert section.count("<tr") >= len(side) + len(long) and "more rows in the result files" not in section
    assert "Committed GPU comparisons that missed their declared level" in section
