"""What `prune` and `rm` choose, on inventories built in memory: whatever the ages and the size
limit, what stays is whole (a kept tag has its manifest, a kept manifest its blobs), nothing
pending upload goes, and the oldest goes first."""

from __future__ import annotations

import random

import pytest

from regcache.commands.common import CommandError
from regcache.commands.inventory import Inventory, Item, Stored
from regcache.commands.prune import plan
from regcache.commands.rm import Target, parse_target
from regcache.commands.rm import plan as rm_plan
from regcache.oci.digest import Digest
from regcache.oci.manifest import references
from regcache.storage.base import blob_key, manifest_key, tag_key

NOW = 1_900_000_000.0
DAY = 86400.0


def obj(key: str, size: int, last_use: float) -> Stored:
    return Stored(key, size, last_use, ("disk",), (("disk", last_use),))


def digest(name: str) -> Digest:
    return Digest.of(name.encode())


def blob(name: str, size: int, last_use: float) -> Item:
    key = blob_key(digest(name))
    return Item("blob", key, (obj(key, size, last_use),), name, digest=digest(name))


def manifest(name: str, last_use: float, blobs: list[str] = (), children: list[str] = ()) -> Item:
    key = manifest_key(digest(name))
    refers = tuple(manifest_key(digest(c)) for c in children) + tuple(blob_key(digest(b)) for b in blobs)
    return Item("manifest", key, (obj(key, 500, last_use),), name, refers, digest=digest(name))


def tag(repo: str, name: str, target: str, last_use: float, registry: str = "r.example") -> Item:
    key = tag_key(registry, repo, name)
    refers = (manifest_key(digest(target)),)
    return Item(
        "tag",
        key,
        (obj(key, 100, last_use),),
        f"{registry}/{repo}:{name}",
        refers,
        registry,
        repo,
        name,
        digest(target),
    )


def inventory(*items: Item, pending: frozenset[str] = frozenset()) -> Inventory:
    return Inventory({item.id: item for item in items}, pending)


def assert_whole(inv: Inventory, removed: set[str]) -> None:
    kept = set(inv.items) - removed
    for id in kept:
        item = inv.items[id]
        needed = [r for r in item.refers_to if r in inv.items]
        if item.kind == "tag":
            assert all(r in kept for r in needed), f"{item.label} kept without its manifest"
        elif item.kind == "manifest":
            blobs = [r for r in needed if inv.items[r].kind == "blob"]
            assert all(r in kept for r in blobs), f"manifest {item.label} kept without a blob"


def random_inventory(rng: random.Random) -> Inventory:
    items: list[Item] = []
    blobs = [f"b{i}" for i in range(rng.randint(1, 12))]
    for name in blobs:
        items.append(blob(name, rng.randint(1, 5000), NOW - rng.uniform(0, 60) * DAY))
    manifests = [f"m{i}" for i in range(rng.randint(1, 6))]
    for name in manifests:
        items.append(manifest(name, NOW - rng.uniform(0, 60) * DAY, rng.sample(blobs, rng.randint(1, len(blobs)))))
    for i in range(rng.randint(0, 2)):
        items.append(
            manifest(
                f"i{i}", NOW - rng.uniform(0, 60) * DAY, children=rng.sample(manifests, 2 if len(manifests) > 1 else 1)
            )
        )
    targets = manifests + [f"i{i}" for i in range(sum(1 for it in items if it.label.startswith("i")))]
    for i in range(rng.randint(0, 5)):
        items.append(tag(f"repo{i % 2}", f"t{i}", rng.choice(targets), NOW - rng.uniform(0, 60) * DAY))
    pending = frozenset(rng.sample([it.id for it in items], rng.randint(0, 2)))
    return inventory(*items, pending=pending)


@pytest.mark.parametrize("seed", range(200))
def test_whatever_prune_removes_leaves_every_kept_tag_and_manifest_whole(seed):
    rng = random.Random(seed)
    inv = random_inventory(rng)
    older_than = rng.choice([None, 10 * DAY, 30 * DAY])
    total = sum(item.size for item in inv.items.values())
    max_size = rng.choice([None, 0, total // 3, total // 2]) if older_than else rng.choice([0, total // 3, total // 2])
    victims = plan(inv, NOW, older_than, max_size)
    removed = {v.item.id for v in victims}
    assert len(removed) == len(victims)
    assert_whole(inv, removed)
    assert not removed & inv.reachable(id for id, item in inv.items.items() if item.objects[0].key in inv.pending)
    if older_than is not None:
        keep = inv.keep_times(NOW)
        assert all(
            keep[id].time < NOW - older_than
            for id, v in ((v.item.id, v) for v in victims)
            if v.why.startswith("unused")
        )


def test_age_is_that_of_the_latest_user_a_blob_shared_with_a_used_image_stays():
    inv = inventory(
        blob("base", 1000, NOW - 40 * DAY),
        blob("old-only", 1000, NOW - 40 * DAY),
        manifest("old", NOW - 40 * DAY, ["base", "old-only"]),
        manifest("new", NOW - 1 * DAY, ["base"]),
        tag("app", "old", "old", NOW - 40 * DAY),
        tag("app", "new", "new", NOW - 40 * DAY),  # the tag is old, its manifest was pulled by digest yesterday
    )
    removed = [v.item.label for v in plan(inv, NOW, 30 * DAY, None)]
    assert removed == ["r.example/app:old", "old", "old-only", "r.example/app:new"]


def test_max_size_takes_whole_images_least_recently_used_first():
    inv = inventory(
        blob("a", 1000, NOW - 3 * DAY),
        manifest("ma", NOW - 3 * DAY, ["a"]),
        tag("a", "1", "ma", NOW - 3 * DAY),
        blob("b", 1000, NOW - 2 * DAY),
        manifest("mb", NOW - 2 * DAY, ["b"]),
        tag("b", "1", "mb", NOW - 2 * DAY),
        blob("c", 1000, NOW),
        manifest("mc", NOW, ["c"]),
        tag("c", "1", "mc", NOW),
    )
    removed = [v.item.label for v in plan(inv, NOW, None, 3200)]  # 4800 bytes: one image must go
    assert removed == ["r.example/a:1", "ma", "a"]


def test_rm_forgets_a_tag_and_what_only_it_reached():
    inv = inventory(
        blob("base", 1000, NOW),
        blob("own", 1000, NOW),
        manifest("m1", NOW, ["base", "own"]),
        manifest("m2", NOW, ["base"]),
        tag("app", "1", "m1", NOW),
        tag("app", "2", "m2", NOW),
        tag("other", "1", "m2", NOW),
    )
    going, kept = rm_plan(inv, Target("r.example", "app"))
    assert sorted(i.label for i in going) == ["m1", "own", "r.example/app:1", "r.example/app:2"]
    assert [(i.label, users) for i, users in kept] == [("m2", ["r.example/other:1"])]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alpine", "expected <registry>/<repository>"),
        ("alpine:3.19", "expected <registry>/<repository>"),
        ("docker.io/Library/alpine", "invalid repository name"),
        ("docker.io/library/alpine:bad tag", "invalid tag"),
        ("docker.io/library/alpine@sha256:abc", "invalid sha256 digest"),
    ],
)
def test_rm_references_that_name_no_cached_image_are_refused_with_the_reason(text, message):
    with pytest.raises(CommandError, match=message):
        parse_target(text)


def test_rm_references_name_registry_repository_and_tag_or_digest():
    assert parse_target("127.0.0.1:5000/ops/web:1.0") == Target("127.0.0.1:5000", "ops/web", "1.0")
    assert parse_target("docker.io/library/alpine") == Target("docker.io", "library/alpine")
    hex64 = "a" * 64
    assert parse_target(f"localhost/app@sha256:{hex64}") == Target("localhost", "app", None, Digest("sha256", hex64))


def test_manifests_name_their_blobs_and_indexes_their_manifests():
    d1, d2 = f"sha256:{'1' * 64}", f"sha256:{'2' * 64}"
    image = references(
        b'{"config": {"digest": "%s"}, "layers": [{"digest": "%s"}, {"digest": "%s"}]}'
        % (d1.encode(), d2.encode(), d1.encode())
    )
    assert [str(d) for d in image.blobs] == [d1, d2] and image.manifests == ()
    index = references(b'{"manifests": [{"digest": "%s"}, {"digest": "not-a-digest"}]}' % d1.encode())
    assert [str(d) for d in index.manifests] == [d1] and index.blobs == ()
    schema1 = references(b'{"fsLayers": [{"blobSum": "%s"}]}' % d2.encode())
    assert [str(d) for d in schema1.blobs] == [d2]
    assert not references(b"not json").readable and not references(b"[1, 2]").readable
