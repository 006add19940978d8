#!/usr/bin/env python3
"""Run a command against a real kernel with dm-thin: directly, or in a throwaway VM.

Directly when we are root and the running kernel can load dm-thin-pool (a real
server); otherwise inside Debian's stock kernel under qemu, booted by
virtme-ng with the host filesystem as the guest's read-only root.  Either way
the command runs under ``rig/env.sh``: a private loop-device-only LVM
configuration and a tmpfs for the loop images, so no host disk is touched.

The guest's exit status reaches the host twice: as vng's own exit status and
as ``RESULTS/exit-status`` written by the guest; a missing file means the
guest died (panic, timeout) and counts as failure.

Stdlib only: it runs before the virtualenv exists on a fresh machine.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "rig"
TCG_CPU_MODEL = "qemu64"  # chosen by measurement: see "How the tests reach a real kernel"


def log(msg: str) -> None:
    print(f"rig: {msg}", file=sys.stderr, flush=True)


def kernel_has_dm_thin() -> bool:
    """True when this kernel can run dm-thin itself (modprobe succeeds)."""
    if os.geteuid() != 0:
        return False
    subprocess.run(["modprobe", "-q", "-a", "loop", "dm-thin-pool"], check=False)
    return Path("/sys/module/dm_thin_pool").exists() and Path("/dev/mapper/control").exists()


def guest_kernel() -> str:
    """Newest installed /boot/vmlinuz-* whose modules include dm-thin-pool."""
    found = []
    for image in glob.glob("/boot/vmlinuz-*"):
        ver = image.removeprefix("/boot/vmlinuz-")
        if glob.glob(f"/lib/modules/{ver}/kernel/drivers/md/dm-thin-pool.ko*"):
            found.append((os.path.getmtime(image), image))
    if not found:
        sys.exit("rig: no /boot/vmlinuz-* with dm-thin-pool modules; install linux-image-amd64")
    return max(found)[1]


def vng_path() -> str:
    for cand in (ROOT / ".venv" / "bin" / "vng", shutil.which("vng")):
        if cand and Path(cand).exists():
            return str(cand)
    sys.exit("rig: vng (virtme-ng) not found; run scripts/setup")


def vng_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(vng_path()).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def kvm_works(kernel: str) -> bool:
    """Boot a trivial guest with KVM once and remember whether it answered.

    Some hosts expose a /dev/kvm on which a stock kernel hangs or qemu
    aborts, so the only honest test is a real boot, bounded by a timeout.
    """
    forced = os.environ.get("LVDIFF_RIG_KVM")
    if forced in ("0", "1"):
        return forced == "1"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu = shutil.which("qemu-system-x86_64") or ""
    key = hashlib.sha256(f"{kernel}:{os.stat(qemu).st_mtime if qemu else 0}".encode()).hexdigest()
    stamp = CACHE / f"kvm-{key[:16]}"
    if stamp.exists():
        return stamp.read_text().strip() == "yes"
    marker = "LVDIFF-KVM-BOOTED"
    cmd = [
        "timeout",
        "-k",
        "5",
        "90",
        vng_path(),
        "--force-9p",
        "--run",
        kernel,
        "--memory",
        "1G",
        "--exec",
        f"echo {marker}",
    ]
    proc = subprocess.run(
        cmd,
        env=vng_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    ok = proc.returncode == 0 and marker in proc.stdout.decode(errors="replace")
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp.write_text("yes\n" if ok else "no\n")
    log(f"KVM {'boots a guest' if ok else 'does not boot a guest here; using TCG emulation'}")
    return ok


# Parts of the interpreter's library no test imports: not worth copying into the guest.
_STDLIB_SKIP = ("site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3")


def python_bundle() -> tuple[Path, list[str]] | None:
    """Pack what the guest's Python reads, so the guest can run it from RAM.

    The guest reads the host's files over 9p without any caching, so every
    module import is a string of round trips through an emulated device:
    ``import lvdiff.cli`` took 5.4 s that way and 2.6 s from RAM.  Unpacking
    one tar (read sequentially) costs about 11 s per boot; a suite starts the
    tools over a hundred times.  Returns the tar and the paths (files and
    directories) the guest binds its RAM copies over, so every path stays
    what it is on the host.
    """
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():
        return None
    probe = (
        "import sys, sysconfig, os\n"
        "print(os.path.realpath(sys.executable))\n"
        "print(sysconfig.get_paths(vars={'base': sys.base_prefix, "
        "'platbase': sys.base_prefix, 'installed_base': sys.base_prefix})['stdlib'])\n"
        "lib = os.path.join(sysconfig.get_config_var('LIBDIR') or '', "
        "sysconfig.get_config_var('INSTSONAME') or '')\n"
        "print(os.path.realpath(lib) if os.path.isfile(lib) else '')\n"
    )
    exe, stdlib, libpython = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    binds = [p for p in (exe, libpython, stdlib) if p]
    binds += [str(ROOT / d) for d in (".venv", "src", "tests")]
    tar = CACHE / "guest-python.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    rel = [b.lstrip("/") for b in binds]
    excludes = [f"--exclude={stdlib.lstrip('/')}/{d}" for d in _STDLIB_SKIP]
    excludes.append(f"--exclude={str(ROOT).lstrip('/')}/.venv/lib/*/site-packages/pip")
    subprocess.run(["tar", "-C", "/", "-cf", str(tar), *excludes, *rel], check=True)
    return tar, binds


def run_in_vm(
    results: Path, command: list[str], timeout: int, memory: str, cpus: int, cpu_model: str
) -> int:
    kernel = guest_kernel()
    use_kvm = kvm_works(kernel)
    inner = shlex.join([str(ROOT / "rig" / "env.sh"), str(results), *command])
    bundle = None if use_kvm else python_bundle()
    if bundle:
        tar, binds = bundle
        inner = f"LVDIFF_RIG_BUNDLE={shlex.quote(str(tar))} " + (
            f"LVDIFF_RIG_BIND={shlex.quote(':'.join(binds))} {inner}"
        )
    guest_cmd = f"cd {shlex.quote(str(ROOT))} && {inner}"
    argv = [
        "timeout",
        "-k",
        "15",
        str(timeout),
        vng_path(),
        "--force-9p",
        "--run",
        kernel,
        "--cpus",
        str(cpus),
        "--memory",
        memory,
        f"--rwdir={results}",
        "--exec",
        guest_cmd,
    ]
    if not use_kvm:
        # vng asks for "-cpu max" under TCG; a later -cpu wins.  Emulating the newest
        # vector and SHA instructions costs more than the code using them saves.
        argv[5:5] = ["--disable-kvm", f"--qemu-opts=-cpu {cpu_model}"]
    how = "KVM" if use_kvm else f"TCG, cpu {cpu_model}"
    log(f"booting {Path(kernel).name} ({how}), results in {results}")
    # vng loses lines when stdout and stderr go to one file, so pump them through a pipe.
    with subprocess.Popen(
        argv,
        env=vng_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        rc = proc.wait()
    return finish(results, rc)


def run_direct(results: Path, command: list[str]) -> int:
    log("this kernel has dm-thin: running on loop devices directly")
    rc = subprocess.run([str(ROOT / "rig" / "env.sh"), str(results), *command], check=False)
    return finish(results, rc.returncode)


def finish(results: Path, rc: int) -> int:
    status_file = results / "exit-status"
    if not status_file.exists():
        log(f"the guest never reported an exit status (vng exit {rc}): boot failure or timeout")
        return rc or 99
    status = int(status_file.read_text().strip() or 99)
    if status != rc:
        log(f"guest exit status {status}, vng exit {rc}")
    return status or rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, help="directory for the guest's reports")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds before the VM is killed")
    ap.add_argument("--memory", default="4G")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--cpu-model",
        default=os.environ.get("LVDIFF_RIG_CPU", TCG_CPU_MODEL),
        help="guest CPU model under TCG emulation (qemu -cpu)",
    )
    ap.add_argument(
        "--mode", choices=("auto", "vm", "direct"), default=os.environ.get("LVDIFF_RIG", "auto")
    )
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command")
    results = args.results or Path(tempfile.mkdtemp(prefix="lvdiff-rig-"))
    results = results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    (results / "exit-status").unlink(missing_ok=True)
    mode = args.mode
    if mode == "auto":
        mode = "direct" if kernel_has_dm_thin() else "vm"
    if mode == "direct":
        return run_direct(results, command)
    return run_in_vm(results, command, args.timeout, args.memory, args.cpus, args.cpu_model)


if __name__ == "__main__":
    sys.exit(main())
