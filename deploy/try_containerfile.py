"""Try deploy/Containerfile without a container engine: build each stage for real in a Debian
root file system made by mmdebstrap, then run the image's command and its health check.

    sudo apt-get install mmdebstrap
    sudo python3 deploy/try_containerfile.py [--keep WORKDIR]

Run as root from the repository root (it chroots). It understands the instructions the
Containerfile uses and no others: FROM (a Debian ``-slim`` image, stood in for by mmdebstrap's
``minbase`` of the same suite), ARG, ENV, WORKDIR, COPY (also ``--from``), RUN (shell form),
USER, VOLUME, EXPOSE, HEALTHCHECK (exec form), ENTRYPOINT and CMD (exec form). What it cannot
show: the engine's own isolation (namespaces, cgroups, the published port, the volume driver);
the stages share the host's network, and pip is given the host's CA bundle (``PIP_CERT``) so that
it can reach PyPI from here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"


@dataclass
class Stage:
    name: str
    base: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    meta: dict[str, str] = field(default_factory=dict)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs: comments dropped, continuation lines joined."""
    joined: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    pairs = []
    for entry in joined:
        word, _, rest = entry.strip().partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def sh(*argv: str | Path) -> None:
    print("+", " ".join(map(str, argv)), flush=True)
    subprocess.run([str(a) for a in argv], check=True)


def base_tarball(suite: str, work: Path) -> Path:
    tarball = work / f"{suite}-minbase.tar"
    if not tarball.exists():
        sh("mmdebstrap", "--variant=minbase", suite, tarball, MIRROR)
    return tarball


def new_root(stage_dir: Path, tarball: Path) -> Path:
    stage_dir.mkdir(parents=True)
    sh("tar", "-xf", tarball, "-C", stage_dir)
    shutil.copy("/etc/resolv.conf", stage_dir / "etc" / "resolv.conf")
    certs = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if certs and Path(certs).is_file():
        shutil.copy(certs, stage_dir / "host-ca.pem")
    return stage_dir


def ids(stage: Stage) -> tuple[int, int]:
    """USER as numbers: ``name``, ``uid`` or ``uid:gid``."""
    user, _, group = stage.user.partition(":")
    if user.isdigit():
        return int(user), int(group or user)
    for line in (stage.root / "etc" / "passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(group or parts[3])
    raise SystemExit(f"USER {stage.user}: no such user in the image")


def inside(
    stage: Stage, argv: list[str], *, wait: bool = True, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run ``argv`` in the stage's root, as its user, in its WORKDIR, with its ENV and ARGs."""
    uid, gid = ids(stage)
    env = {"HOME": "/root" if uid == 0 else stage.workdir, **stage.args, **stage.env}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if (stage.root / "host-ca.pem").exists():
        env["PIP_CERT"] = "/host-ca.pem"
    env.update(extra or {})

    def enter() -> None:
        os.chroot(stage.root)
        os.chdir(stage.workdir)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    print(f"+ [{stage.name} as {stage.user}] {shlex.join(argv)}", flush=True)
    process = subprocess.Popen(argv, env=env, preexec_fn=enter)
    if wait and process.wait() != 0:
        raise SystemExit(f"failed ({process.returncode}): {shlex.join(argv)}")
    return process


def mounted(root: Path) -> list[Path]:
    points = []
    for source in ("/proc", "/dev"):
        target = root / source.lstrip("/")
        target.mkdir(exist_ok=True)
        sh("mount", "--rbind", source, target)
        sh("mount", "--make-rslave", target)
        points.append(target)
    return points


def build(containerfile: Path, context: Path, work: Path) -> Stage:
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    mounts: list[Path] = []
    try:
        for word, rest in instructions(containerfile.read_text()):
            if word == "FROM":
                image, *alias = rest.split()
                found = re.fullmatch(r"debian:(\w+)-slim", image)
                if not found:
                    raise SystemExit(f"FROM {image}: only debian:<suite>-slim is understood")
                name = alias[-1] if alias else f"stage{len(stages)}"
                root = new_root(work / name, base_tarball(found.group(1), work))
                mounts += mounted(root)
                stage = stages[name] = Stage(name, image, root)
                continue
            assert stage is not None, "an instruction before FROM"
            if word == "ARG":
                key, _, value = rest.partition("=")
                stage.args[key] = value
            elif word == "ENV":
                for pair in shlex.split(rest):
                    key, _, value = pair.partition("=")
                    stage.env[key] = value
            elif word == "WORKDIR":
                stage.workdir = rest
                (stage.root / rest.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif word == "COPY":
                parts = rest.split()
                source_root = context
                if parts[0].startswith("--from="):
                    source_root = stages[parts.pop(0).split("=", 1)[1]].root
                *sources, dest = parts
                target = dest if dest.startswith("/") else f"{stage.workdir}/{dest}"
                into = stage.root / target.lstrip("/")
                for source in sources:
                    path = source_root / source.lstrip("/")
                    if path.is_dir():  # a folder's contents go into the destination
                        shutil.copytree(path, into, dirs_exist_ok=True, symlinks=True)
                    elif dest.endswith("/"):  # files go into a destination folder
                        into.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, into / path.name)
                    else:
                        into.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, into)
                print(f"+ [{stage.name}] COPY {rest}", flush=True)
            elif word == "RUN":
                inside(stage, ["/bin/sh", "-c", rest])
            elif word == "USER":
                stage.user = rest
            elif word in ("VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"):
                stage.meta[word] = rest
            else:
                raise SystemExit(f"{word}: not understood by this trial")
        assert stage is not None
        return stage
    finally:
        for point in reversed(mounts):
            subprocess.run(["umount", "-R", str(point)], check=False)


def health_command(rest: str) -> list[str]:
    found = re.search(r"CMD\s+(\[.*\])\s*$", rest)
    if not found:
        raise SystemExit("HEALTHCHECK: only the exec form CMD [...] is understood")
    return list(json.loads(found.group(1)))


def run_image(stage: Stage, timeout: float) -> None:
    """Start ENTRYPOINT + CMD as the image would, wait for HEALTHCHECK to pass, stop it."""
    command = json.loads(stage.meta["ENTRYPOINT"]) + json.loads(stage.meta["CMD"])
    check = health_command(stage.meta["HEALTHCHECK"])
    for path in json.loads(stage.meta["VOLUME"]):
        info = (stage.root / path.lstrip("/")).stat()
        print(f"volume {path}: mode {oct(info.st_mode & 0o777)}, owner uid {info.st_uid}")
    mounts = mounted(stage.root)
    try:
        server = inside(stage, command, wait=False)
        deadline = time.monotonic() + timeout
        while True:
            probe = inside(stage, check, wait=False)
            if probe.wait() == 0:
                print("HEALTHCHECK passed", flush=True)
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not become healthy")
            time.sleep(1)
        admin = inside(stage, ["sessiond", "users", "list", "--json"], wait=False)
        if admin.wait() != 0:
            raise SystemExit("sessiond users list failed in the image")
        server.send_signal(signal.SIGTERM)
        print(f"server stopped with status {server.wait(30)}", flush=True)
    finally:
        for point in reversed(mounts):
            subprocess.run(["umount", "-R", str(point)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containerfile", type=Path, default=Path("deploy/Containerfile"))
    parser.add_argument("--context", type=Path, default=Path("."))
    parser.add_argument("--keep", type=Path, help="work folder to use and keep")
    parser.add_argument("--timeout", type=float, default=60.0)
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the stages are chroots")
    work = (options.keep or Path(tempfile.mkdtemp(prefix="containerfile-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        final = build(options.containerfile, options.context.resolve(), work)
        run_image(final, options.timeout)
    finally:
        still = [m for m in Path("/proc/mounts").read_text().split() if m.startswith(str(work))]
        if still:  # never delete through a bind mount of the host's /dev or /proc
            print(f"left {work} in place: still mounted there: {still}", file=sys.stderr)
        elif not options.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
