"""Interrupted restores resume from their last durable point and end bit-exact."""

from __future__ import annotations

import random
import re

from .lvmrig import (
    IMAGES,
    lv_attr,
    lv_names,
    lv_tags,
    lvpatch_cut_off,
    sh,
    sha256_of,
    tool,
    write_at,
)

M = 1 << 20


def test_cut_and_killed_restores_resume_bit_exact(loop_vg):
    rnd = random.Random(11)
    src = loop_vg(prefix="src")
    src.pool(size_mb=120)
    vol = src.thin("vol", 40)
    write_at(vol, 0, rnd.randbytes(40 * M))  # incompressible: the stream is ~40 MiB
    src.snapshot("vol", "new")
    sh("lvchange", "-q", "-p", "r", f"{src.name}/new")  # resumable: NEW cannot change
    full = IMAGES / "resume-full.lvd"
    res = tool("lvdiff", "-d", "2", f"{src.name}/new", stdout_file=full)
    assert res.returncode == 0, res.stderr.decode()
    data = full.read_bytes()
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=150)

    # 1. the stream is cut at 60%: the target is kept, with a token
    res = tool("lvpatch", "-s", "-g", dst.name, "-p", "pool", stdin=data[: len(data) * 6 // 10])
    err = res.stderr.decode()
    assert res.returncode == 3, err
    token = re.search(r"lvdiff --resume (\S+)", err)[1]
    assert "lvdiff_incomplete" in lv_tags(dst.name, "new")
    printed = tool("lvpatch", "-g", dst.name, "--resume-token", "new").stdout.decode().strip()
    assert printed == token
    durable = int(token.split(":")[0])
    assert durable >= 16 * M  # every whole 4 MiB record before the cut

    # a later plain lvpatch on the VG leaves a volume kept for --resume alone
    res = tool("lvpatch", "-g", dst.name, "-p", "pool", "other", stdin=data)
    assert res.returncode == 0 and "new" in lv_names(dst.name), res.stderr.decode()

    # NEW must be exactly what was being sent: a writable one could have changed
    sh("lvchange", "-q", "-p", "rw", f"{src.name}/new")
    rest = IMAGES / "resume-rest.lvd"
    res = tool("lvdiff", "--resume", token, f"{src.name}/new", stdout_file=rest)
    assert res.returncode == 2 and "writable" in res.stderr.decode(), res.stderr.decode()
    sh("lvchange", "-q", "-p", "r", f"{src.name}/new")
    src.snapshot("vol", "other", activate=False)
    sh("lvchange", "-q", "-p", "r", f"{src.name}/other")
    res = tool("lvdiff", "--resume", token, f"{src.name}/other", stdout_file=rest)
    assert res.returncode == 2 and "not the volumes" in res.stderr.decode(), res.stderr.decode()

    # 2. the sender re-sends only what is missing
    res = tool(
        "lvdiff",
        "--resume",
        token,
        f"{src.name}/new",
        stdout_file=rest,
    )
    assert res.returncode == 0, res.stderr.decode()
    # only what lies past the durable point is sent again (plus header and framing)
    assert rest.stat().st_size < len(data) - durable + 64 * 1024 < len(data)
    # a plain lvpatch refuses a resume stream
    res = tool("lvpatch", "-g", dst.name, "-p", "pool", "x", stdin_file=rest)
    assert res.returncode == 2 and "--resume" in res.stderr.decode()
    # a resume cut before its first record keeps the token on disk (lvm2 runs every
    # --addtag before every --deltag: re-adding the same token used to delete it)
    rest_data = rest.read_bytes()
    res = tool("lvpatch", "--resume", "-g", dst.name, "new", stdin=rest_data[:2000])
    assert res.returncode == 3 and f"lvdiff_resume:{token}" in lv_tags(dst.name, "new")
    # the next lvpatch on the VG cleans up (before it finds no pool "nopool")...
    res = tool("lvpatch", "-g", dst.name, "-p", "nopool", "x", stdin=data[:4096])
    assert res.returncode == 2 and "new" in lv_names(dst.name)  # ...but not what is kept
    res = tool("lvpatch", "--resume", "-g", dst.name, "new", stdin=rest_data)
    assert res.returncode == 0, res.stderr.decode()
    assert lv_tags(dst.name, "new").startswith("lvdiff_identity:")  # complete, read-only
    assert sha256_of(dst.dev("new")) == sha256_of(src.dev("new"))

    # 3. kill -9 after a checkpoint: the tag on the volume is the durable point
    lvpatch_cut_off(
        data,
        7 / 10,
        lambda: "again" in lv_names(dst.name) and "lvdiff_resume:" in lv_tags(dst.name, "again"),
        "-s",
        "--checkpoint-mib",
        "8",
        "-g",
        dst.name,
        "-p",
        "pool",
        "again",
    )
    token = tool("lvpatch", "-g", dst.name, "--resume-token", "again").stdout.decode().strip()
    res = tool(
        "lvdiff",
        "--resume",
        token,
        f"{src.name}/new",
        stdout_file=rest,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert rest.stat().st_size < len(data)
    # 4. a crash between making it read-only and clearing its tags, as an lvpatch whose
    # commit was two lvchange commands could leave it: the resume makes it writable again
    sh("lvchange", "-q", "-p", "r", f"{dst.name}/again")
    res = tool("lvpatch", "--resume", "-g", dst.name, "again", stdin_file=rest)
    assert res.returncode == 0, res.stderr.decode()
    assert "left read-only before its commit" in res.stderr.decode()
    assert sha256_of(dst.dev("again")) == sha256_of(src.dev("new"))
    assert lv_tags(dst.name, "again").startswith("lvdiff_identity:")  # one commit: complete
    assert lv_attr(dst.name, "again")[1] == "r"
    full.unlink()
    rest.unlink()
