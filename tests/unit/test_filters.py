"""Tests for reloadd.watch.filters: gitignore-style globs, built-in ignores, odd names.

Paths are root-relative and ``/``-separated, as the watchers hand them over; a name that
is not UTF-8 arrives surrogate-escaped (``os.fsdecode``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reloadd.watch.filters import PathFilter, compile_glob, display, is_dropping


def glob(pattern: str, path: str) -> bool:
    return compile_glob(pattern).match(path) is not None


# --------------------------------------------------------------------------- gitignore


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # no slash: a name at any depth
        ("*.py", "app.py", True),
        ("*.py", "app/models/user.py", True),
        ("*.py", "app.pyc", False),
        ("*.py", "app.py/inner.txt", True),  # a directory called app.py: everything below
        ("node_modules", "node_modules/x/y.js", True),
        ("node_modules", "web/node_modules/x.js", True),
        ("node_modules", "node_modules_old/x.js", False),
        ("*", ".hidden", True),  # unlike a shell, * matches a leading dot
        # a slash anywhere but at the end: anchored at the root
        ("config/*.yaml", "config/app.yaml", True),
        ("config/*.yaml", "app/config/app.yaml", False),
        ("config/*.yaml", "config/sub/app.yaml", False),  # * never crosses a /
        ("/build", "build/out.js", True),
        ("/build", "src/build/out.js", False),
        ("/app.py", "app.py", True),
        ("/app.py", "pkg/app.py", False),
        # ** spans directories
        ("config/**", "config/x.yaml", True),
        ("config/**", "config/a/b/x.yaml", True),
        ("config/**", "app/config/x.yaml", False),
        ("**/migrations/*.py", "migrations/0001.py", True),
        ("**/migrations/*.py", "app/db/migrations/0001.py", True),
        ("**/migrations/*.py", "app/db/migrations/sub/0001.py", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/xb", False),
        ("**", "anything/at/all", True),
        # a trailing slash: directories only (and everything below them)
        ("logs/", "logs/today.txt", True),
        ("logs/", "var/logs/today.txt", True),
        ("logs/", "logs", False),  # a file called logs
        # ? and classes
        ("?.txt", "a.txt", True),
        ("?.txt", "ab.txt", False),
        ("a?b", "a/b", False),  # ? never matches a /
        ("[abc].txt", "b.txt", True),
        ("[abc].txt", "d.txt", False),
        ("[!abc].txt", "d.txt", True),
        ("[!abc].txt", "a.txt", False),
        ("[a-c]x", "bx", True),
        ("v[0-9].py", "v7.py", True),
        ("[x", "[x", True),  # an unclosed bracket is literal
        # regex metacharacters are literal
        ("a+b.(x)", "a+b.(x)", True),
        ("a+b.(x)", "aab.(x)", False),
        ("file.txt", "fileXtxt", False),
        # a backslash escapes the next character
        (r"\[draft\].md", "[draft].md", True),
        (r"\[draft\].md", "d.md", False),
        (r"what\?.txt", "what?.txt", True),
        (r"what\?.txt", "whatX.txt", False),
        (r"star\*", "star*", True),
        (r"star\*", "starry", False),
        # surrounding whitespace is not part of the pattern
        ("  *.log  ", "x.log", True),
    ],
)
def test_gitignore_semantics(pattern: str, path: str, expected: bool) -> None:
    assert glob(pattern, path) is expected


def test_directory_probe_uses_a_trailing_slash() -> None:
    """A directory is tested as ``rel/``: dir-only patterns and their contents match."""
    assert glob("logs/", "logs/")
    assert glob("build/**", "build/")
    assert not glob("*.py", "pkg/")


# --------------------------------------------------------------------------- PathFilter


def test_default_filter_takes_every_ordinary_file() -> None:
    f = PathFilter()
    assert f.matches("app.py")
    assert f.matches("deep/down/there/config.yaml")
    assert f.matches("Makefile")
    assert f.matches(".env")


@pytest.mark.parametrize(
    "path",
    [
        ".app.py.swp",
        "pkg/.app.py.swx",
        "app.py~",
        "pkg/deep/app.py~",
        ".#app.py",
        "#app.py#",
        "4913",
        "pkg/4913",
        "app.py___jb_tmp___",
        "app.py___jb_old___",
        "pkg/__pycache__/models.cpython-311.pyc",
        "models.pyc",
        "models.pyo",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        "vendor/lib/.git/index",
        ".hg/store/data",
        ".svn/entries",
    ],
)
def test_builtin_ignores(path: str) -> None:
    assert not PathFilter().matches(path)
    assert not PathFilter(include=["**"]).matches(path)  # include cannot bring them back


@pytest.mark.parametrize(
    "path",
    ["#", "4913.txt", "a4913", "x.swp.txt", "notes~.md", "#draft", ".gitignore", "git/x"],
)
def test_near_misses_of_builtin_ignores_are_watched(path: str) -> None:
    assert PathFilter().matches(path)


@pytest.mark.parametrize(
    ("rel", "pruned"),
    [
        (".git", True),
        ("vendor/.hg", True),
        ("a/b/.svn", True),
        ("pkg/__pycache__", True),
        ("pkg", False),
        ("gitlab", False),
    ],
)
def test_builtin_pruned_directories(rel: str, pruned: bool) -> None:
    assert PathFilter().prune_dir(rel) is pruned


def test_is_dropping() -> None:
    assert is_dropping(".app.py.swp")
    assert is_dropping("#app.py#")
    assert not is_dropping("#")
    assert not is_dropping("app.py")


def test_exclude_prunes_directories_and_filters_files() -> None:
    f = PathFilter(exclude=["node_modules", "*.log", "/tmp/", "build/**"])
    assert f.prune_dir("node_modules")
    assert f.prune_dir("web/node_modules")
    assert f.prune_dir("tmp")
    assert not f.prune_dir("src/tmp")  # anchored
    assert f.prune_dir("build")  # everything below it is excluded, so never watched
    assert not f.prune_dir("src")
    assert not f.matches("web/node_modules/react/index.js")
    assert not f.matches("logs/app.log")
    assert not f.matches("tmp/x")
    assert f.matches("src/tmp/x")
    assert not f.matches("build/out.js")
    assert f.matches("src/app.js")


def test_include_selects_and_exclude_wins() -> None:
    f = PathFilter(include=["*.py", "config/**"], exclude=["**/test_*.py"])
    assert f.matches("app.py")
    assert f.matches("pkg/models.py")
    assert f.matches("config/app.yaml")
    assert f.matches("config/sub/app.yaml")
    assert not f.matches("app/config/app.yaml")  # config/** is anchored
    assert not f.matches("README.md")
    assert not f.matches("tests/test_models.py")
    assert not f.prune_dir("docs")  # include never prunes: a match may be below


# --------------------------------------------------------------------------- odd names


def test_non_utf8_names_match_and_display() -> None:
    name = os.fsdecode(b"caf\xe9.txt")  # Latin-1 bytes: surrogate-escaped
    f = PathFilter(include=["*.txt"], exclude=[os.fsdecode(b"skip\xff/")])
    assert f.matches(name)
    assert f.matches(os.fsdecode(b"d\xff\xfe/") + name)
    assert not f.matches(os.fsdecode(b"skip\xff/") + name)
    assert f.prune_dir(os.fsdecode(b"skip\xff"))
    assert not f.matches(os.fsdecode(b"caf\xe9.py"))
    assert display(name) == "caf\\xe9.txt"
    display(name).encode("utf-8")  # printable: no lone surrogates left


def test_utf8_pattern_matches_utf8_name() -> None:
    f = PathFilter(include=["café/*"])
    assert f.matches(os.fsdecode("café/menu.txt".encode()))


def test_newlines_and_odd_characters_in_names() -> None:
    f = PathFilter(exclude=["*.tmp"])
    assert f.matches("line\nbreak.txt")
    assert not f.matches("line\nbreak.tmp")
    assert f.matches("sp ace/ta\tb/[x].py")


@given(st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_any_byte_name_never_crashes(raw: bytes) -> None:
    """Every name the kernel can return is matched and displayed without an exception."""
    name = os.fsdecode(raw)
    f = PathFilter(include=["*", "**/x*"], exclude=["y*"])
    f.matches(name)
    f.matches("dir/" + name)
    f.prune_dir(name)
    display(name).encode("utf-8")


_PARTS = st.sampled_from(["a", "b", "node_modules", ".git", "__pycache__", "build", "x.d"])


@given(
    parent=st.lists(_PARTS, max_size=3).map("/".join),
    name=_PARTS,
    exclude=st.lists(st.sampled_from(["build/", "/a", "**/x.d", "b/node_modules"]), max_size=2),
)
def test_prune_child_is_prune_dir_below_an_unpruned_parent(
    parent: str, name: str, exclude: list[str]
) -> None:
    """The walk asks prune_child(parent, name) where the parent itself was not pruned."""
    filt = PathFilter(exclude=exclude)
    if parent and filt.prune_dir(parent):
        return
    rel = f"{parent}/{name}" if parent else name
    assert filt.prune_child(parent, name) == filt.prune_dir(rel)
