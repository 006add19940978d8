"""scripts/debian-mirror: which of the machine's apt sources scripts/setup fetches Debian from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "debian-mirror"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# As Debian 12 installs it (and as this machine has it), deb822
DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def machine(tmp_path: Path, files: dict[str, str], codename: str = "bookworm") -> Path:
    """A root directory with an os-release and ``files`` under etc/apt."""
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/os-release").write_text(
        f'PRETTY_NAME="Debian GNU/Linux"\nVERSION_CODENAME={codename}\nID=debian\n'
    )
    for name, text in files.items():
        (tmp_path / "etc/apt" / name).write_text(text)
    return tmp_path


def run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def found(root: Path) -> list[str]:
    res = run(root)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return res.stdout.split("\n")[0].split()


def test_deb822_main_archive_and_its_keyring(tmp_path: Path) -> None:
    root = machine(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES})
    assert found(root) == ["http://mirror.example/debian", DEFAULT_KEYRING]


def test_one_line_format_with_options(tmp_path: Path) -> None:
    text = (
        "# the site's mirror\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [ arch=amd64 signed-by=/etc/apt/keyrings/site.gpg ] http://mirror.example/debian"
        " bookworm main contrib  # trailing comment\n"
        "deb http://mirror.example/debian bookworm-updates main\n"
    )
    root = machine(tmp_path, {"sources.list": text})
    assert found(root) == ["http://mirror.example/debian", "/etc/apt/keyrings/site.gpg"]


def test_one_line_format_without_signed_by_gets_the_debian_keyring(tmp_path: Path) -> None:
    root = machine(
        tmp_path,
        {"sources.list.d/mirror.list": "deb http://proxy.example:3142/debian bookworm main\n"},
    )
    assert found(root) == ["http://proxy.example:3142/debian", DEFAULT_KEYRING]


def test_a_disabled_stanza_is_skipped(tmp_path: Path) -> None:
    text = (
        "Types: deb\nURIs: http://old.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\nTypes: deb\nURIs: http://old2.example/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: False\n\n" + DEBIAN_SOURCES
    )
    root = machine(tmp_path, {"sources.list.d/debian.sources": text})
    assert found(root)[0] == "http://mirror.example/debian"


def test_files_apt_does_not_read_are_skipped(tmp_path: Path) -> None:
    root = machine(
        tmp_path,
        {
            "sources.list.d/a.list.disabled": "deb http://off.example/debian bookworm main\n",
            "sources.list.d/b.sources.save": DEBIAN_SOURCES.replace("mirror", "off"),
            "sources.list.d/debian.sources": DEBIAN_SOURCES,
        },
    )
    assert found(root)[0] == "http://mirror.example/debian"


def test_a_third_party_repository_with_its_own_key_comes_after_debian(tmp_path: Path) -> None:
    vendor = (
        "deb [signed-by=/usr/share/keyrings/vendor.gpg] https://vendor.example/debian"
        " bookworm main\n"
    )
    root = machine(
        tmp_path,
        {"sources.list": vendor, "sources.list.d/debian.sources": DEBIAN_SOURCES},
    )
    assert found(root) == ["http://mirror.example/debian", DEFAULT_KEYRING]
    # and with the .pgp keyring of Debian 13's sources
    pgp = DEBIAN_SOURCES.replace(".gpg", ".pgp")
    (root / "etc/apt/sources.list.d/debian.sources").write_text(pgp)
    assert found(root) == [
        "http://mirror.example/debian",
        "/usr/share/keyrings/debian-archive-keyring.pgp",
    ]


def test_an_inline_key_falls_back_to_the_debian_keyring(tmp_path: Path) -> None:
    text = DEBIAN_SOURCES.replace(
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n",
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n /abc+def\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n\n",
        1,
    )
    root = machine(tmp_path, {"sources.list.d/debian.sources": text})
    assert found(root) == ["http://mirror.example/debian", DEFAULT_KEYRING]


@pytest.mark.parametrize(
    "files",
    [
        {},
        {
            "sources.list.d/debian.sources": DEBIAN_SOURCES.replace(
                "bookworm bookworm", "bookworm-x bookworm"
            )
        },
        {"sources.list": "deb http://security.example/debian-security bookworm-security main\n"},
        {"sources.list": "deb http://mirror.example/debian bookworm-updates main\n"},
        {"sources.list": "deb-src http://mirror.example/debian bookworm main\n"},
        {"sources.list": "deb http://mirror.example/debian bullseye main\n"},
        {"sources.list": "deb https://download.example/linux/debian bookworm stable\n"},
        {"sources.list.d/debian.list.disabled": "deb http://mirror.example/debian bookworm main\n"},
    ],
    ids=[
        "nothing",
        "updates-only",
        "security-only",
        "updates-line",
        "deb-src",
        "other-release",
        "not-main",
        "not-read-by-apt",
    ],
)
def test_none_found_fails_in_one_line_saying_what_it_looked_for(
    tmp_path: Path, files: dict[str, str]
) -> None:
    res = run(machine(tmp_path, files))
    assert res.returncode == 1
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "no Debian archive" in lines[0]
    assert "bookworm" in lines[0] and "main" in lines[0]


def test_no_codename(tmp_path: Path) -> None:
    root = machine(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES})
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux trixie/sid"\n')
    res = run(root)
    assert res.returncode == 1
    assert "VERSION_CODENAME" in res.stderr and len(res.stderr.splitlines()) == 1


def test_the_codename_comes_from_os_release(tmp_path: Path) -> None:
    text = DEBIAN_SOURCES.replace("bookworm", "trixie")
    root = machine(tmp_path, {"sources.list.d/debian.sources": text}, codename="trixie")
    assert found(root)[0] == "http://mirror.example/debian"
