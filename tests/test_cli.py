"""The command line: every subcommand, --help everywhere, clear errors (exit status 2)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import cli
from workbench.backends import status

ROOT = Path(__file__).resolve().parent.parent
HAS_BNB = status("bnb")[0]


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_python_dash_m_help():
    p = subprocess.run([sys.executable, "-m", "workbench", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "report" in p.stdout and "codebook" in p.stdout


@pytest.mark.parametrize("cmd", ["report", "study", "parity", "bench", "codebook", "backends"])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: workbench " + cmd in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    rc, out, _ = run(capsys)
    assert rc == 2 and "usage" in out


def test_backends_table(capsys):
    rc, out, _ = run(capsys, "backends")
    assert rc == 0 and "| reference" in out and "quantize_4bit" in out


def test_codebook_expression_table_bounds_and_error(capsys, tmp_path):
    rc, out, _ = run(capsys, "codebook", "linspace(-1,1,16)", "--n", "4096", "--blocksizes", "64,256",
                     "--save", str(tmp_path / "c.json"))
    assert rc == 0
    assert "bounds:" in out and "linspace(-1,1,16)" in out and "| laplace" in out and "| nf4" in out
    assert (tmp_path / "c.json").is_file()
    rc, out, _ = run(capsys, "codebook", str(tmp_path / "c.json"), "--no-eval")
    assert rc == 0 and "distinct levels: 16" in out
    rc, out, _ = run(capsys, "codebook", "nf4", "--n", "2048", "--compare", "")
    assert rc == 0 and "0.07958030" in out


@pytest.mark.parametrize("argv, msg", [
    (["codebook", "nope"], "not a registered name"),
    (["codebook", "nf4", "--blocksizes", "48"], "blocksize"),
    (["codebook", "nf4", "--blocksizes", "x"], "--blocksizes"),
    (["codebook", "linspace(-1,1,300)"], "at most 256"),
    (["study", "nope"], "unknown name"),
    (["report", "--studies", "error,nope"], "unknown name"),
    (["report", "--merge", "/no/such/dir"], "does not exist"),
    (["parity", "--sizes", "a,b"], "--sizes"),
    (["parity", "--blocksizes", "100"], "blocksize"),
])
def test_clear_errors(argv, msg, capsys):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (out, err)
    assert msg in err and "Traceback" not in err


def test_parity_cuda_without_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    rc, _, err = run(capsys, "parity", "--device", "cuda")
    assert rc == 2 and "CUDA" in err


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes 0.50.2")
def test_parity_prints_matrix(capsys, tmp_path):
    rc, out, _ = run(capsys, "parity", "--backends", "bnb", "--ops", "quantize_4bit,dequantize_blockwise",
                     "--sizes", "1,1001,4099", "--blocksizes", "64,4096", "--no-progress",
                     "--out", str(tmp_path / "p.parquet"))
    assert rc == 0, out
    assert "| bnb" in out and "exact" in out and "quantize_4bit" in out
    assert (tmp_path / "p.parquet").is_file()


def test_study_prints_tables_and_saves(capsys, tmp_path):
    rc, out, _ = run(capsys, "study", "codebook_lab", "--quick", "--out", str(tmp_path))
    assert rc == 0 and "SQNR" in out and "lloyd-max" in out
    assert (tmp_path / "codebook_lab.parquet").is_file() and list(tmp_path.glob("*.png"))


def test_report_quick_subset(capsys, tmp_path):
    rc, out, _ = run(capsys, "report", "--quick", "--name", "q", "--out", str(tmp_path), "--studies", "error,speed",
                     "--serial", "--no-progress")
    assert rc == 0
    assert "| error" in out and "| speed" in out and "report.md" in out
    assert (tmp_path / "q" / "report.html").is_file() and (tmp_path / "q" / "results.parquet").is_file()


def test_bench_runs_the_script_with_passthrough_args(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "ROOT", tmp_path)
    rc, _, err = run(capsys, "bench", "--device", "cpu")
    assert rc == 2 and "bench_cpu.py does not exist" in err
    (tmp_path / "studies" / "bench").mkdir(parents=True)
    (tmp_path / "studies" / "bench" / "bench_cpu.py").write_text(
        "import sys, pathlib\npathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))\n")
    rc = cli.main(["bench", "--device", "cpu", str(tmp_path / "args.txt"), "--n", "123"])
    assert rc == 0 and (tmp_path / "args.txt").read_text() == "--n 123"
