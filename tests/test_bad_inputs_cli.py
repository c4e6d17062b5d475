"""Every `splitldm` subcommand turns bad input into ONE line ``splitldm <cmd>: error: ...`` and exit status 2,
never a traceback: bad values, seeds that overflow, missing / malformed / absurd files, malformed YAML, an
unwritable or file-blocked output. Also: the docs table of bad inputs (docs/guides/bad-inputs.md) is the
one `scripts/bad_inputs_table.py` generates from the tests' ``CASES``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitldm.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def _unwritable(tmp: Path) -> str:
    """A path whose folder cannot be created or written (root ignores permissions: then under /proc)."""
    if os.geteuid() == 0:
        return "/proc/splitldm-no-such-dir/out"
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return str(locked / "sub" / "out")


def _absurd_pipeline(tmp: Path) -> str:
    """The shipped tiny pipeline with a UNet width of 10**9 in its config.json."""
    import shutil

    from splitldm.zoo import checkpoints_dir

    folder = tmp / "absurd"
    shutil.copytree(checkpoints_dir() / "tiny", folder)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [10 ** 9, 64, 64]
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def _files(tmp: Path) -> dict[str, str]:
    """Bad files every case may name: {key: path} (created once per test)."""
    (tmp / "blocker").write_text("a file where a folder is needed")
    (tmp / "bad.yaml").write_text("pipeline: tiny\nsnr_db: [1, 2\n  - : :\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "unknown.yaml").write_text("pipeline: tiny\nwarp_drive: 9\n")
    (tmp / "rl_bad.yaml").write_text("algorithm: [cvpo\n")
    (tmp / "rl_algo.yaml").write_text("algorithm: dqn-9000\n")
    (tmp / "rl_ok.yaml").write_text("algorithm: ppo\n")
    (tmp / "eval_ok.yaml").write_text("pipeline: tiny-random\nschemes: [analog]\nrhos: [0.5]\nsnr_db: [5]\n"
                                      "channels: [awgn]\nnum_prompts: 2\nfid: none\n")
    (tmp / "policy").mkdir()
    (tmp / "policy" / "run.json").write_text("{not json")
    (tmp / "policy_noenv").mkdir()
    (tmp / "policy_noenv" / "run.json").write_text("{}")
    return {"blocked": str(tmp / "blocker" / "out"), "blocked_file": str(tmp / "blocker" / "img.png"),
            "bad_yaml": str(tmp / "bad.yaml"), "list_yaml": str(tmp / "list.yaml"),
            "unknown_yaml": str(tmp / "unknown.yaml"), "rl_bad": str(tmp / "rl_bad.yaml"),
            "rl_algo": str(tmp / "rl_algo.yaml"), "rl_ok": str(tmp / "rl_ok.yaml"), "eval_ok": str(tmp / "eval_ok.yaml"),
            "missing": str(tmp / "missing.yaml"), "policy": str(tmp / "policy"),
            "policy_noenv": str(tmp / "policy_noenv"), "unwritable": _unwritable(tmp)}


G = ["generate", "a red circle", "--model", "micro-random", "--steps", "2", "--split-step", "1"]
E = ["--quiet", "--no-progress", "--threads", "1"]

#: (argv with {placeholders}, text the error line must contain, entry point, kind of bad input, outcome).
_CLI = [
    (G + ["--seed", str(2 ** 64)], "--seed", "`splitldm generate`", "`--seed 2**64` (overflows 64 bits)",
     "one line naming `--seed` and [0, 2**64 - 1], exit 2"),
    (G + ["--seed", "-1"], "--seed", "`splitldm generate`", "negative `--seed`", "one line naming `--seed`, exit 2"),
    (G + ["--seed", "1.5"], "--seed", "`splitldm generate`", "float `--seed 1.5`", "one line (argparse), exit 2"),
    (G + ["--steps", "abc"], "--steps", "`splitldm generate`", "`--steps abc`", "one line (argparse), exit 2"),
    (G + ["--split-step", "5"], "split_step", "`splitldm generate`", "`--split-step` beyond `--steps`",
     "one line naming `split_step`, exit 2"),
    (G + ["--out", "{blocked_file}"], "--out", "`splitldm generate`", "`--out` under a file (blocked)",
     "one line naming `--out`, exit 2, before any work"),
    (G + ["--out", "{unwritable}/img.png"], "--out", "`splitldm generate`", "unwritable `--out`",
     "one line naming `--out`, exit 2, before any work"),
    (["generate", "x", "--model", "{missing}"], "name_or_path", "`splitldm generate`", "`--model` folder missing",
     "one line naming `name_or_path`, exit 2"),
    (["generate", "x", "--model", "{absurd}"], "block_out_channels", "`splitldm generate`",
     "`--model` folder with a width of 10**9 in `unet/config.json`",
     "one line naming the key and its bound, exit 2, nothing allocated"),
    (["profile", "--model", "tiny", "--height", "15"], "--height", "`splitldm profile`", "`--height 15`",
     "one line naming `--height`, exit 2"),
    (["demo", "--out", "{blocked}"] + E, "--out", "`splitldm demo`", "`--out` blocked by a file",
     "one line naming `--out`, exit 2, before any work"),
    (["demo", "--out", "{unwritable}"] + E, "--out", "`splitldm demo`", "unwritable `--out`",
     "one line naming `--out`, exit 2, before any work"),
    (["demo", "--seed", str(2 ** 70)] + E, "--seed", "`splitldm demo`", "`--seed 2**70`",
     "one line naming `--seed`, exit 2"),
    (["evaluate", "--config", "{bad_yaml}"] + E, "not valid YAML", "`splitldm evaluate`", "malformed YAML config",
     "one line `--config: <file> is not valid YAML: ...`, exit 2"),
    (["evaluate", "--config", "{list_yaml}"] + E, "config", "`splitldm evaluate`", "YAML config that is a list",
     "one line naming `config`, exit 2"),
    (["evaluate", "--config", "{unknown_yaml}"] + E, "unknown keys", "`splitldm evaluate`", "unknown config key",
     "one line listing the allowed keys, exit 2"),
    (["evaluate", "--config", "{missing}"] + E, "config", "`splitldm evaluate`", "missing config file",
     "one line naming `config`, exit 2"),
    (["evaluate", "--config", "{eval_ok}", "--output", "{blocked}"] + E, "--output", "`splitldm evaluate`",
     "`--output` blocked by a file", "one line naming `--output`, exit 2, before the sweep"),
    (["quality-table", "--output", "{blocked_file}", "--seeds", "0"], "--output", "`splitldm quality-table`",
     "`--output` blocked by a file", "one line naming `--output`, exit 2, before any work"),
    (["quality-table", "--output", "{unwritable}/q.json"], "--output", "`splitldm quality-table`",
     "unwritable `--output`", "one line naming `--output`, exit 2"),
    (["quality-table", "--output", "q.json", "--seeds", str(2 ** 64)], "--seeds", "`splitldm quality-table`",
     "`--seeds 2**64`", "one line naming `--seeds`, exit 2"),
    (["quality-table", "--output", "q.json", "--draws", "0"], "--draws", "`splitldm quality-table`",
     "`--draws 0`", "one line naming `--draws`, exit 2"),
    (["quality-table", "--output", "q.json", "--interval", "draws"], "--interval", "`splitldm quality-table`",
     "`--interval draws` with one draw", "one line naming `--interval`, exit 2"),
    (["rl", "train", "--config", "{rl_bad}"], "not valid YAML", "`splitldm rl train`", "malformed YAML config",
     "one line `--config: <file> is not valid YAML: ...`, exit 2"),
    (["rl", "train", "--config", "{rl_algo}"], "algorithm", "`splitldm rl train`", "unknown algorithm",
     "one line naming `algorithm` and the choices, exit 2"),
    (["rl", "train", "--config", "{rl_ok}", "--output", "{blocked}"], "--output", "`splitldm rl train`",
     "`--output` blocked by a file", "one line naming `--output`, exit 2, before training"),
    (["rl", "train", "--config", "{rl_ok}", "--total-steps", "0"], "--total-steps", "`splitldm rl train`",
     "`--total-steps 0`", "one line naming `--total-steps`, exit 2"),
    (["rl", "train", "--config", "{rl_ok}", "--threads", "0"], "--threads", "`splitldm rl train`", "`--threads 0`",
     "one line naming `--threads`, exit 2"),
    (["rl", "eval", "--policy", "{missing}"], "--policy", "`splitldm rl eval`", "`--policy` folder missing",
     "one line naming `--policy`, exit 2"),
    (["rl", "eval", "--policy", "{policy}"], "corrupt", "`splitldm rl eval`", "`run.json` that is not JSON",
     "one line naming `--policy` and the file, exit 2"),
    (["rl", "eval", "--policy", "{policy_noenv}"], "env", "`splitldm rl eval`", "`run.json` without `env`",
     "one line naming `--policy`, exit 2"),
    (["rl", "eval", "--policy", "{policy}", "--seed", str(2 ** 64)], "--seed", "`splitldm rl eval`",
     "`--seed 2**64`", "one line naming `--seed`, exit 2"),
]

#: (entry point, kind of bad input, what the user gets): collected into docs/guides/bad-inputs.md.
CASES = [c[2:] for c in _CLI] + [
    ("`splitldm demo`", "one prompt (`--num-prompts 1`): too few images for FID",
     "runs; FID skipped, said in the report's notes"),
    ("`splitldm evaluate` (`num_prompts: 1`)", "too few images for FID", "runs; FID skipped, with a warning"),
    ("`splitldm rl train` / `rl eval`", "`$SPLITLDM_THREADS=abc`", "one line naming `$SPLITLDM_THREADS`, exit 2"),
    ("`splitldm` (console script)", "malformed YAML config", "one line on stderr, exit status 2, no traceback"),
    ("`python -m splitldm.cli.evaluate`", "malformed YAML config", "one line on stderr, exit status 2"),
]


def _one_line(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in err, err
    assert lines[-1].startswith(f"splitldm {command}: error: "), lines[-1]
    return lines[-1]


@pytest.mark.parametrize("argv,needle,entry,kind,outcome", _CLI, ids=[f"{c[2]} {c[3]}" for c in _CLI])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, needle, entry, kind, outcome):
    monkeypatch.chdir(tmp_path)
    files = _files(tmp_path)
    if any("{absurd}" in a for a in argv):
        files["absurd"] = _absurd_pipeline(tmp_path)
    args = [a.format(**files) for a in argv]
    command = " ".join(argv[:2]) if argv[0] == "rl" else argv[0]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse: usage errors exit 2 with one line of their own
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    line = _one_line(err, command)
    assert needle in line, line
    assert len(err.strip().splitlines()) == 1, err  # nothing else on stderr (these commands run --quiet)


def test_threads_env_that_is_not_an_int(tmp_path, capsys, monkeypatch):
    files = _files(tmp_path)
    monkeypatch.setenv("SPLITLDM_THREADS", "abc")
    assert main(["rl", "train", "--config", files["rl_ok"]]) == 2
    assert "$SPLITLDM_THREADS" in _one_line(capsys.readouterr().err, "rl train")


def test_the_console_script_exits_2_without_traceback(tmp_path):
    files = _files(tmp_path)
    script = Path(sys.executable).with_name("splitldm")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from splitldm.cli import main; "
                                                                       "sys.exit(main())"]
    proc = subprocess.run([*cmd, "evaluate", "--config", files["bad_yaml"], "--quiet"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "is not valid YAML" in proc.stderr
    standalone = subprocess.run([sys.executable, "-m", "splitldm.cli.evaluate", "--config", files["bad_yaml"],
                                 "--quiet"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                timeout=300)
    assert standalone.returncode == 2 and "Traceback" not in standalone.stderr, standalone.stderr
    assert standalone.stderr.strip().splitlines()[-1].startswith("splitldm evaluate: error:")


def test_one_prompt_demo_skips_fid_and_says_so(tmp_path, capsys):
    """With the shipped classifier a one-prompt demo used to die in FID's covariance; now it runs."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-prompts", "1", "--steps", "2", "--split-step", "1",
                 "--student-steps", "1", "--snr-db", "10", "--merge-ratios", "0", *E]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["central"]["fid"] is None and all(e["fid"] is None for e in report["split"])
    assert any("FID skipped" in n for n in report["notes"])


def test_one_prompt_evaluation_skips_fid(tmp_path, caplog):
    from splitldm.eval.evaluate import EvalConfig, sweep

    class Features:
        name = "test-features"

        def __call__(self, images):
            return images.flatten(1)[:, :8].double()

    cfg = EvalConfig(pipeline="tiny-random", schemes=["analog"], rhos=[0.5], snr_db=[5.0], channels=["awgn"],
                     num_prompts=1, repeats=1, covariance_samples=2, fid_real=4, output=str(tmp_path / "ev"))
    with caplog.at_level("WARNING", logger="splitldm.eval.evaluate"):
        results = sweep(cfg, extractor=Features())
    assert results["reference"]["fid_ideal_link"] is None
    assert "FID skipped" in caplog.text


# ------------------------------------------------------------------------------ the docs table
def _table_script():
    spec = importlib.util.spec_from_file_location("bad_inputs_table", ROOT / "scripts" / "bad_inputs_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks the module up there
    spec.loader.exec_module(module)
    return module


def test_docs_table_is_generated_from_the_tests():
    """docs/guides/bad-inputs.md holds exactly what `scripts/bad_inputs_table.py` makes of every tests/*.py
    ``CASES`` (run ``python scripts/bad_inputs_table.py`` after changing a test's CASES)."""
    script = _table_script()
    cases = script.collect(ROOT / "tests")
    assert len(cases) >= 100
    for name in ("test_checks.py", "test_bad_inputs_cli.py", "test_no_unpickling.py"):
        assert any(c.source == name for c in cases), name
    page = (ROOT / "docs" / "guides" / "bad-inputs.md").read_text(encoding="utf-8")
    assert script.render(page, cases) == page, "docs/guides/bad-inputs.md is stale: run scripts/bad_inputs_table.py"
    assert f"**{len(cases)}**" in page
