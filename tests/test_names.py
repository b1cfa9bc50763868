"""Image-name parsing, processing order, junk and temp names (examples + hypothesis properties)."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wodrop.workorder.names import ImageName, is_junk, is_temp, parse_image_name, processing_order

EXTS = st.sampled_from(["jpg", "JPG", "Jpg", "jpeg", "JPEG", "jPeG", "png", "PNG", "pNg"])
# Task groups: any printable text (unicode, hyphens, digits, dots) that a file name can hold, non-empty,
# not ending in '-' (then the name would end "--N" or "-.jpg", a dangling hyphen).
GROUPS = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1, max_size=30
).filter(lambda g: not g.endswith("-"))
SUFFIXES = st.integers(min_value=0, max_value=10**12)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("task_group_A-0.jpg", ImageName("task_group_A", 0, "jpg")),
        ("task-group-2.jpg", ImageName("task-group", 2, "jpg")),
        ("A-01.JPG", ImageName("A", 1, "jpg")),
        ("A-1-2.jpeg", ImageName("A-1", 2, "jpeg")),
        ("A.PNG", ImageName("A", None, "png")),
        ("A-x.png", ImageName("A-x", None, "png")),
        ("a.b-3.png", ImageName("a.b", 3, "png")),
        ("équipe-7.jpg", ImageName("équipe", 7, "jpg")),
        ("A-٣.jpg", ImageName("A-٣", None, "jpg")),  # N is ASCII digits only
    ],
)
def test_parse_examples(name: str, expected: ImageName) -> None:
    assert parse_image_name(name) == expected


@pytest.mark.parametrize(
    "name", ["-1.jpg", ".jpg", "-.png", "A-.jpg", "A--.jpg", "A.gif", "A.jpg.txt", "A", "jpg"]
)
def test_parse_rejects(name: str) -> None:
    assert parse_image_name(name) is None


@given(GROUPS, SUFFIXES, st.integers(min_value=0, max_value=4), EXTS)
def test_suffix_round_trip(group: str, n: int, zeros: int, ext: str) -> None:
    """The last -<digits> is the suffix, whatever the group holds; leading zeros compare as a number."""
    parsed = parse_image_name(f"{group}-{'0' * zeros}{n}.{ext}")
    assert parsed == ImageName(group, n, ext.lower())


@given(GROUPS.filter(lambda g: not re.search(r"-[0-9]+$", g)), EXTS)
def test_unsuffixed_round_trip(group: str, ext: str) -> None:
    """A group that does not end in -<digits> comes back whole, hyphens and unicode included."""
    assert parse_image_name(f"{group}.{ext}") == ImageName(group, None, ext.lower())


@given(st.text(max_size=40))
def test_parse_never_raises_and_groups_are_non_empty(name: str) -> None:
    parsed = parse_image_name(name)
    if parsed is not None:
        assert parsed.task_group and not parsed.task_group.endswith("-")
        assert parsed.suffix is None or parsed.suffix >= 0


IMAGE_NAMES = st.builds(
    lambda g, n, ext: f"{g}-{n}.{ext}" if n is not None else f"{g}.{ext}",
    GROUPS,
    st.none() | st.integers(min_value=0, max_value=200).map(str) | st.just("007"),
    EXTS,
)


@given(st.lists(IMAGE_NAMES, unique=True, max_size=25), st.booleans(), st.booleans(), st.randoms())
def test_processing_order(images: list[str], meta: bool, params: bool, rnd: random.Random) -> None:
    names = images + ["metadata.json"] * meta + ["parameters.json"] * params
    shuffled = names[:]
    rnd.shuffle(shuffled)
    ordered = processing_order(shuffled)
    assert sorted(ordered) == sorted(names)
    assert ordered == processing_order(names)  # input order does not matter
    head = ["metadata.json"] * meta + ["parameters.json"] * params
    assert ordered[: len(head)] == head
    rest = [parse_image_name(n) for n in ordered[len(head) :]]
    keys = [(p.suffix is None, p.suffix or 0) for p in rest if p is not None]
    assert len(keys) == len(rest) and keys == sorted(keys)  # suffixed first, by N
    # equal N (or no suffix): by name
    tail = ordered[len(head) :]
    for a, b in itertools.pairwise(tail):
        pa, pb = parse_image_name(a), parse_image_name(b)
        assert pa is not None and pb is not None
        if pa.suffix == pb.suffix:
            assert a < b


def test_processing_order_example() -> None:
    names = ["B.jpg", "A-10.jpg", "parameters.json", "A.png", "B-2.jpg", "A-2.jpg", "metadata.json",
             "Z-0.PNG"]
    assert processing_order(names) == [
        "metadata.json", "parameters.json", "Z-0.PNG", "A-2.jpg", "B-2.jpg", "A-10.jpg", "A.png", "B.jpg",
    ]


@pytest.mark.parametrize("name", [".DS_Store", "Thumbs.db", "thumbs.db", "desktop.ini", "Desktop.ini",
                                  "._A-1.jpg", "@eaDir", "#recycle"])
def test_junk(name: str) -> None:
    assert is_junk(name)


def test_junk_ready_marker_and_ordinary_names() -> None:
    assert is_junk(".ready", ".ready")
    assert not is_junk(".ready")
    assert not is_junk("A-1.jpg", ".ready")
    assert not is_junk("metadata.json")


@pytest.mark.parametrize("name", ["A-1.jpg.part", "x.partial", "x.TMP", "x.filepart", "x.crdownload",
                                  "A-1.jpg.download", "~$report.docx", ".~lock.x#", ".syncthing.A-1.jpg.tmp"])
def test_temp(name: str) -> None:
    assert is_temp(name)


def test_temp_extra_patterns_and_ordinary_names() -> None:
    assert not is_temp("A-1.jpg")
    assert not is_temp("partial.jpg")
    assert is_temp(".A-1.jpg.Xy12Ab", extra_patterns=[".*.??????"])  # rsync's temp names

