"""Tests for the TPU VM scripts and scripts/reproduce_paper.sh (dry runs and a fake gcloud)."""
import os
import pathlib
import shlex
import stat
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "scripts" / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh")) + [ROOT / "scripts" / n for n in (
    "reproduce_paper.sh", "train_offline_pair.sh", "train_deep_pair.sh", "main.sh", "test.sh",
    "env.sh")]
TPU_ENV = {"TPU_NAME": "my-tpu", "ZONE": "us-central2-b"}
_SETTINGS = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "TPU_VERSION", "REMOTE_DIR",
             "DRY_RUN", "REPO_URL", "REF", "SRC", "DEST", "MODULE", "TASKS", "STAGES", "OUTPUT_DIR")


@pytest.fixture
def fake_bin(tmp_path):
    """A folder on PATH whose gcloud/gsutil/python record their argv (one NUL-separated call per file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcloud", "gsutil", "python"):
        exe = bin_dir / name
        exe.write_text("#!/usr/bin/env bash\n"
                       f"printf '%s\\0' \"$@\" > \"{tmp_path}/calls.{name}.$$.$RANDOM\"\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _calls(tmp_path, name):
    files = sorted(tmp_path.glob(f"calls.{name}.*"), key=os.path.getmtime)
    return [f.read_bytes().split(b"\0")[:-1] for f in files]


def _run(script, *args, env=None, fake_bin=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    if fake_bin is not None:
        base["PATH"] = f"{fake_bin}:{base['PATH']}"
    base.update(env or {})
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=base,
                          cwd=cwd or ROOT, timeout=60)


def _commands(out: str) -> list[list[str]]:
    """The printed "+ cmd" lines of a dry run, split as the shell would split them."""
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    lines = script.read_text().splitlines()
    if script.name != "common.sh":  # common.sh is sourced by scripts that set the options
        assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines


def test_create_vm_dry_run_prints_gcloud_and_runs_nothing(tmp_path, fake_bin):
    r = _run(TPU / "create_vm.sh", "--dry_run", env=TPU_ENV, fake_bin=fake_bin)
    assert r.returncode == 0, r.stderr
    assert _commands(r.stdout) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", "--accelerator-type=v4-8",
        "--version=tpu-ubuntu2204-base", "--zone=us-central2-b"]]
    assert _calls(tmp_path, "gcloud") == []
    # Flags win over the environment; DRY_RUN=1 works like --dry_run; extra gcloud args after "--".
    r = _run(TPU / "create_vm.sh", "--accelerator_type", "v4-32", "--project=proj", "--spot",
             "--version=tpu-vm-v4-base", "--", "--network=net",
             env={**TPU_ENV, "DRY_RUN": "1", "ACCELERATOR_TYPE": "v4-16"}, fake_bin=fake_bin)
    assert r.returncode == 0, r.stderr
    (cmd,) = _commands(r.stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
    for flag in ("--accelerator-type=v4-32", "--version=tpu-vm-v4-base", "--spot", "--network=net",
                 "--project=proj", "--zone=us-central2-b"):
        assert flag in cmd
    assert _calls(tmp_path, "gcloud") == []


def test_create_vm_runs_gcloud_with_exact_argv(tmp_path, fake_bin):
    r = _run(TPU / "create_vm.sh", "--tpu_name=a b", "--zone=z", fake_bin=fake_bin)
    assert r.returncode == 0, r.stderr
    assert _calls(tmp_path, "gcloud") == [[
        b"compute", b"tpus", b"tpu-vm", b"create", b"a b", b"--accelerator-type=v4-8",
        b"--version=tpu-ubuntu2204-base", b"--zone=z"]]


@pytest.mark.parametrize("script", ["create_vm.sh", "install.sh", "launch.sh", "delete_vm.sh"])
def test_missing_settings_fail_clearly(script, tmp_path, fake_bin):
    extra = ["--gin_file=x.gin"] if script == "launch.sh" else []
    r = _run(TPU / script, "--dry_run", *extra, env={"ZONE": "z"}, fake_bin=fake_bin)
    assert r.returncode != 0
    assert "TPU_NAME is not set" in r.stderr and "--tpu_name" in r.stderr
    r = _run(TPU / script, "--dry_run", *extra, env={"TPU_NAME": "t"}, fake_bin=fake_bin)
    assert r.returncode != 0 and "ZONE is not set" in r.stderr
    assert _calls(tmp_path, "gcloud") == []


def test_bad_arguments_fail_clearly():
    r = _run(TPU / "create_vm.sh", "--dry_run", "--bogus", env=TPU_ENV)
    assert r.returncode != 0 and "unknown argument" in r.stderr and "--bogus" in r.stderr
    r = _run(TPU / "create_vm.sh", "--dry_run", "--accelerator_type=h100", env=TPU_ENV)
    assert r.returncode != 0 and "does not look like a TPU type" in r.stderr
    r = _run(TPU / "create_vm.sh", "--dry_run", "--zone", env={"TPU_NAME": "t"})
    assert r.returncode != 0 and "--zone needs a value" in r.stderr


def test_install_copies_checkout_and_installs_jax_tpu():
    r = _run(TPU / "install.sh", "--dry_run", "--project=p", env=TPU_ENV)
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    tar_line = [l for l in r.stdout.splitlines() if "ls-files" in l][0]
    assert "tar -czf" in tar_line
    scp = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]]
    assert len(scp) == 1 and "--worker=all" in scp[0] and "--project=p" in scp[0]
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 1 and ssh[0][5] == "my-tpu" and "--worker=all" in ssh[0]
    remote = [a for a in ssh[0] if a.startswith("--command=")][0]
    assert "tar -xzf" in remote and "bash scripts/env.sh" in remote
    assert '"jax[tpu]==$JAX_VERSION"' in remote and "python3.11" in remote
    subprocess.run(["bash", "-n", "-c", remote[len("--command="):]], check=True)
    # The inline Python programs must survive both rounds of quoting.
    tokens = shlex.split(remote)
    programs = [tokens[i + 1] for i, t in enumerate(tokens[1:], 1)
                if t == "-c" and tokens[i - 1].endswith("bin/python")]
    assert len(programs) == 2
    for code in programs:
        while code.count(")") > code.count("("):  # the closing ")" of a $(...) around the call
            code = code[:-1]
        compile(code, "<remote>", "exec")


def test_install_from_repo_url():
    r = _run(TPU / "install.sh", "--dry_run", "--repo_url=https://example.invalid/sc.git",
             "--ref=v1", "--remote_dir=work/sc", env=TPU_ENV)
    assert r.returncode == 0, r.stderr
    (ssh,) = _commands(r.stdout)
    remote = [a for a in ssh if a.startswith("--command=")][0]
    assert "git clone -q https://example.invalid/sc.git work/sc" in remote
    assert "fetch -q origin v1" in remote and "cd work/sc" in remote
    r = _run(TPU / "install.sh", "--dry_run", "--ref=v1", env=TPU_ENV)
    assert r.returncode != 0 and "--ref needs --repo_url" in r.stderr


def test_launch_runs_module_on_all_workers_with_passthrough(tmp_path, fake_bin):
    args = ["--gin_file=configs/paper/wmt_ende.gin", "--gin.SWEEP_OUTPUT_DIR='gs://b/run 1'",
            "--tfds_data_dir=gs://b/tfds"]
    r = _run(TPU / "launch.sh", "--dry_run", *args, env=TPU_ENV)
    assert r.returncode == 0, r.stderr
    (ssh,) = _commands(r.stdout)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
    remote = [a for a in ssh if a.startswith("--command=")][0][len("--command="):]
    assert "python -m spec_cascade.sweep --gin_file=configs/paper/wmt_ende.gin" in remote
    # Every host joins one pod (jax.distributed.initialize() finds the slice on TPU VMs).
    assert "SPEC_CASCADE_MULTIHOST=1" in remote

    # Run for real with a fake gcloud, then execute the remote command in a fake checkout with a
    # fake python: every pass-through argument must arrive as one argv element, unchanged.
    r = _run(TPU / "launch.sh", *args, env=TPU_ENV, fake_bin=fake_bin)
    assert r.returncode == 0, r.stderr
    (call,) = _calls(tmp_path, "gcloud")
    remote = [a.decode() for a in call if a.startswith(b"--command=")][0][len("--command="):]
    home = tmp_path / "home"
    (home / "spec_cascade" / ".venv" / "bin").mkdir(parents=True)
    (home / "spec_cascade" / ".venv" / "bin" / "activate").write_text("")
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", remote], cwd=home, env=env, check=True, timeout=30)
    (py,) = _calls(tmp_path, "python")
    assert py == [b"-m", b"spec_cascade.sweep"] + [a.encode() for a in args]


def test_launch_background_and_module():
    r = _run(TPU / "launch.sh", "--dry_run", "--module=spec_cascade.train", "--background",
             "--log=logs/ft.log", "--gin_file=a.gin", env=TPU_ENV)
    assert r.returncode == 0, r.stderr
    (ssh,) = _commands(r.stdout)
    remote = [a for a in ssh if a.startswith("--command=")][0]
    assert "nohup python -m spec_cascade.train --gin_file=a.gin > logs/ft.log 2>&1" in remote
    r = _run(TPU / "launch.sh", "--dry_run", "--gin.X=1", env=TPU_ENV)
    assert r.returncode != 0 and "needs at least one --gin_file" in r.stderr


def test_copy_results_scp_and_gsutil(tmp_path):
    r = _run(TPU / "copy_results.sh", "--dry_run", "--src=runs/paper/sweeps/xsum/",
             f"--dest={tmp_path}/out", env=TPU_ENV)
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert cmds[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "--worker=0",
                        "my-tpu:spec_cascade/runs/paper/sweeps/xsum", f"{tmp_path}/out/",
                        "--zone=us-central2-b"]
    assert not (tmp_path / "out").exists()  # the dry run created nothing
    r = _run(TPU / "copy_results.sh", "--dry_run", "--src=gs://bucket/run", "--dest=d")
    assert r.returncode == 0, r.stderr  # no TPU VM needed for a bucket
    assert _commands(r.stdout)[-1] == ["gsutil", "-m", "cp", "-r", "gs://bucket/run", "d/"]
    r = _run(TPU / "copy_results.sh", "--dry_run", env=TPU_ENV)
    assert r.returncode != 0 and "--src" in r.stderr


def test_delete_vm():
    r = _run(TPU / "delete_vm.sh", "--dry_run", env=TPU_ENV)
    assert r.returncode == 0, r.stderr
    assert _commands(r.stdout) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu",
                                    "--quiet", "--zone=us-central2-b"]]


PAPER_TASKS = ("wmt_ende", "cnn_dailymail", "xsum")


def test_reproduce_paper_local_dry_run(tmp_path, fake_bin):
    r = _run(ROOT / "scripts" / "reproduce_paper.sh", "--dry_run", "--", "--tfds_data_dir=/data",
             fake_bin=fake_bin)
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    train = [c for c in cmds if c[:3] == ["python", "-m", "spec_cascade.train"]]
    sweep = [c for c in cmds if c[:3] == ["python", "-m", "spec_cascade.sweep"]]
    rep = [c for c in cmds if c[:3] == ["python", "-m", "spec_cascade.report"]]
    assert len(train) == 6 and len(sweep) == 3 and len(rep) == 3 and len(cmds) == 12
    for t in PAPER_TASKS:
        for size in ("small", "large"):
            assert [f"--gin_file=configs/models/t5_1_1/{size}.gin",
                    f"--gin_file=configs/paper/finetune_{t}.gin"] in [c[3:5] for c in train]
            assert (f"--gin.INITIAL_CHECKPOINT_PATH='gs://t5-data/pretrained_models/t5x/"
                    f"t5_1_1_{size}/checkpoint_1000000'") in sum(train, [])
        (s,) = [c for c in sweep if f"--gin_file=configs/paper/{t}.gin" in c]
        assert f"--gin.VERIFIER_CHECKPOINT_PATH='runs/paper/models/{t}_large'" in s
        assert s[-1] == "--tfds_data_dir=/data"
        assert ["python", "-m", "spec_cascade.report", f"runs/paper/sweeps/{t}"] in rep
    # Fine-tuning comes before the sweep of the same task, the report after it.
    order = [c[2] for c in cmds]
    assert order[:4] == ["spec_cascade.train", "spec_cascade.train", "spec_cascade.sweep",
                         "spec_cascade.report"]
    assert _calls(tmp_path, "python") == [] and _calls(tmp_path, "gcloud") == []


def test_reproduce_paper_tpu_dry_run(tmp_path, fake_bin):
    r = _run(ROOT / "scripts" / "reproduce_paper.sh", "--dry_run", "--tpu", "--tasks=xsum",
             "--stages=sweep,report", "--setup_vm", "--teardown_vm", "--output_dir=gs://b/paper",
             "--accelerator_type=v4-32", env=TPU_ENV, fake_bin=fake_bin)
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    gc = [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
    assert [c[4] for c in gc] == ["create", "scp", "ssh", "ssh", "delete"]
    assert "--accelerator-type=v4-32" in gc[0]
    sweep = [a for a in gc[3] if a.startswith("--command=")][0]
    assert "--worker=all" in gc[3]
    assert "python -m spec_cascade.sweep --gin_file=configs/paper/xsum.gin" in sweep
    assert "finetune" not in r.stdout
    assert ["gsutil", "-m", "cp", "-r", "gs://b/paper/sweeps/xsum", "tpu_results/paper/"] in cmds
    assert ["python", "-m", "spec_cascade.report", "tpu_results/paper/xsum"] in cmds
    assert _calls(tmp_path, "gcloud") == [] and _calls(tmp_path, "gsutil") == []


def test_reproduce_paper_errors():
    script = ROOT / "scripts" / "reproduce_paper.sh"
    r = _run(script, "--dry_run", "--tpu")
    assert r.returncode != 0 and "TPU_NAME is not set" in r.stderr
    r = _run(script, "--dry_run", "--stages=eval")
    assert r.returncode != 0 and "unknown stage 'eval'" in r.stderr
    r = _run(script, "--dry_run", "--zone=z")
    assert r.returncode != 0 and "need --tpu" in r.stderr
    r = _run(script, "--dry_run", "--gin_file=x.gin")
    assert r.returncode != 0 and "after '--'" in r.stderr
    # Without --dry_run the gin files are checked before anything runs.
    r = _run(script, "--tasks=no_such_task", "--stages=sweep")
    assert r.returncode != 0 and "configs/paper/no_such_task.gin not found" in r.stderr


def test_train_deep_pair_refuses_an_unknown_drafter_before_any_work(tmp_path):
    r = _run(ROOT / "scripts" / "train_deep_pair.sh", str(tmp_path / "out"), "--drafter=big")
    assert r.returncode == 2 and "--drafter must be one of token, seq, shallow" in r.stderr
    assert not (tmp_path / "out").exists()


def test_train_deep_pair_refuses_a_base_that_is_not_the_mini_pair(tmp_path):
    # The committed default pair is the deep pair itself (8 decoder layers): growing it again
    # would not reproduce anything, so --base must name the 4-layer 'mini' base pair.
    pair = ROOT / "spec_cascade" / "assets" / "offline_pair"
    r = _run(ROOT / "scripts" / "train_deep_pair.sh", str(tmp_path / "out"), f"--base={pair}")
    assert r.returncode == 2 and "gives 8" in r.stderr and "Leave out --base" in r.stderr
    r = _run(ROOT / "scripts" / "train_deep_pair.sh", str(tmp_path / "out"),
             f"--base={tmp_path / 'nothing'}")
    assert r.returncode == 2 and "gives none" in r.stderr
    assert not (tmp_path / "out").exists()
