"""The operator's commands (ls, du, verify, rm, prune) on the disk tier, against a cache filled by
real pulls through a running regcache, with that regcache still running: what an operator sees
(lines, exit codes) and what the cache then serves with its upstream registries down."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.operator_cache import MIB, OperatorImages, age, build, fill, pull, regcache, row
from tests.support import Regcache, blob_path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorImages]:
    built = build(tmp_path_factory.mktemp("operator"))
    yield built
    built.close()


@pytest.fixture
def cache(make_regcache, images: OperatorImages) -> Regcache:
    started = make_regcache(*images.upstream_args())
    fill(started, images)
    return started


def manifest_path(cache_dir: Path, digest: str) -> Path:
    return Path(str(blob_path(cache_dir, digest)).replace("/blobs/", "/manifests/", 1))


def image_files(cache: Regcache, registry: str, repo: str, tag: str, image) -> list[Path]:
    """Every stored file of a pulled single-platform image: tag pointer, manifest (+ metadata), blobs."""
    assert cache.cache_dir is not None
    manifest = manifest_path(cache.cache_dir, image.manifest_digest)
    return [
        cache.cache_dir / "tags" / registry / repo / f"{tag}.json",
        manifest,
        Path(f"{manifest}.json"),
        *(blob_path(cache.cache_dir, d) for d in image.blob_digests),
    ]


def upstreams_down(images: OperatorImages):
    class Down:
        def __enter__(self) -> None:
            images.first.stop()
            images.second.stop()

        def __exit__(self, *exc: object) -> None:
            images.first.start()
            images.second.start()

    return Down()


def test_ls_shows_each_pulled_tag_with_its_digest_size_and_last_use(cache, images):
    listed = regcache("ls", "-d", str(cache.cache_dir))
    assert listed.code == 0, listed.err
    assert listed.lines[0].split() == ["REGISTRY", "REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST", "USE"]
    web = row(listed, images.first.host, "ops/web", "1.0")
    assert images.web.digest[:19] in web and "3.0 MiB" in web and "s ago" in web
    assert images.db.manifest_digest[:19] in row(listed, images.first.host, "ops/db", "1")
    assert images.web.digest[:19] in row(listed, images.second.host, "mirror/web", "1.0")
    assert listed.lines[-1] == "4 tags"

    as_json = regcache("ls", "-d", str(cache.cache_dir), "--json").json()
    web2 = next(r for r in as_json if r["repository"] == "ops/web" and r["tag"] == "2.0")
    assert web2["digest"] == images.web2.manifest_digest
    parts = sum(len(images.web2.blob(d)) for d in (images.web2.manifest_digest, *images.web2.blob_digests))
    assert parts < web2["size"] < parts + 1024  # plus the tag pointer and the manifest's metadata
    assert web2["last_use"].endswith("Z")

    only_web = regcache("ls", "-d", str(cache.cache_dir), f"{images.first.host}/ops/w")
    assert [line.split()[2] for line in only_web.lines[1:-1]] == ["1.0", "2.0"]
    only_second = regcache("ls", "-d", str(cache.cache_dir), images.second.host)
    assert [line.split()[1] for line in only_second.lines[1:-1]] == ["mirror/web"]


def test_hits_record_last_use_at_most_once_an_hour(cache, images):
    files = image_files(cache, images.first.host, "ops/db", "1", images.db)
    for path in files:
        age(path, 40)
    assert "40d ago" in row(regcache("ls", "-d", str(cache.cache_dir)), "ops/db")

    pull(cache, images.first.host, "ops/db", "1")
    assert "s ago" in row(regcache("ls", "-d", str(cache.cache_dir)), "ops/db")
    # The tag pointer, the manifest and the blobs (a manifest's metadata goes with it).
    assert all(time.time() - path.stat().st_mtime < 60 for path in files if path != Path(f"{files[1]}.json"))

    # Used 30 minutes ago: a hit leaves the file alone (no write per request).
    layer = blob_path(cache.cache_dir, images.db.layer_digests[0])
    half_hour_ago = time.time() - 1800
    os.utime(layer, (half_hour_ago, half_hour_ago))
    assert cache.blob(images.first.host, "ops/db", images.db.layer_digests[0]).status == 200
    assert layer.stat().st_mtime == pytest.approx(half_hour_ago, abs=1)


def test_du_counts_by_tier_and_attributes_shared_blobs_to_every_registry_that_uses_them(cache, images):
    usage = regcache("du", "-d", str(cache.cache_dir), "--json").json()
    stored = [p for p in cache.stored_files() if p.parts[len(cache.cache_dir.parts)] in ("tags", "manifests", "blobs")]
    total = next(t for t in usage["tiers"] if t["kind"] == "total")
    assert (total["tier"], total["objects"], total["size"]) == (
        "disk",
        len(stored),
        sum(p.stat().st_size for p in stored),
    )
    second = next(r for r in usage["registries"] if r["name"] == images.second.host)
    web_blobs = sum(len(images.web_here.blob(d)) for d in images.web_here.blob_digests)
    # mirror/web:1.0 is ops/web:1.0's bytes: all its blobs are shared with the first registry.
    assert second["tags"] == 1 and second["manifests"] == 2 and second["blobs"] == 3
    assert second["shared"] == web_blobs
    first = next(r for r in usage["registries"] if r["name"] == images.first.host)
    assert first["tags"] == 3 and first["shared"] == web_blobs

    shown = regcache("du", "-d", str(cache.cache_dir))
    assert shown.code == 0
    assert row(shown, "disk", "total").split()[2] == str(len(stored))
    assert "counts under every registry" in shown.out


def test_a_private_registrys_blobs_count_under_it_though_it_has_no_stored_manifests(make_regcache, images):
    cache = make_regcache(*images.upstream_args(), "--private-registry", images.second.host)
    pull(cache, images.second.host, "mirror/web", "1.0")
    usage = regcache("du", "-d", str(cache.cache_dir), "--json").json()
    private = next(t for t in usage["tiers"] if t["kind"] == "private blobs")
    assert private["objects"] == len(images.web_here.blob_digests)
    second = next(r for r in usage["registries"] if r["name"] == images.second.host)
    assert (second["tags"], second["manifests"], second["blobs"]) == (0, 0, 3)
    assert second["size"] == sum(len(images.web_here.blob(d)) for d in images.web_here.blob_digests)
    assert regcache("ls", "-d", str(cache.cache_dir)).lines[-1] == "0 tags"
    assert regcache("prune", "-d", str(cache.cache_dir), "--max-size", "1").code == 0
    assert not [p for p in cache.stored_files() if "private" in p.parts]


def test_verify_reports_a_corrupt_blob_deletes_it_and_the_next_pull_fetches_it_again(cache, images):
    layer = images.db.layer_digests[0]
    path = blob_path(cache.cache_dir, layer)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))

    found = regcache("verify", "-d", str(cache.cache_dir))
    assert found.code == 1
    assert f"BAD disk {path.relative_to(cache.cache_dir)} (3.0 MiB)" in found.lines
    assert found.lines[-1].startswith("disk: ") and found.lines[-1].endswith("checked, 1 bad")
    assert path.exists()

    deleted = regcache("verify", "-d", str(cache.cache_dir), "--delete", "--json")
    assert deleted.code == 1 and deleted.json()["bad"][0]["deleted"] is True
    assert not path.exists()
    assert regcache("verify", "-d", str(cache.cache_dir)).code == 0
    again = cache.blob(images.first.host, "ops/db", layer)
    assert again.status == 200 and again.body == images.db.blob(layer)


def test_rm_forgets_a_tag_and_the_blobs_only_it_needed(cache, images):
    own_layer = images.web2.layer_digests[1]  # web:2.0's own layer; its base layer is shared
    base = images.web2.layer_digests[0]
    removed = regcache("rm", "-d", str(cache.cache_dir), f"{images.first.host}/ops/web:2.0")
    assert removed.code == 0, removed.err
    assert row(removed, "removed", "tag", f"{images.first.host}/ops/web:2.0")
    assert row(removed, "removed", "blob", own_layer[:19])
    assert removed.lines[-1].startswith("Freed 512.")
    assert not blob_path(cache.cache_dir, own_layer).exists()
    assert blob_path(cache.cache_dir, base).exists()
    assert "ops/web  2.0" not in regcache("ls", "-d", str(cache.cache_dir)).out

    with upstreams_down(images):
        pull(cache, images.first.host, "ops/web", "1.0")  # every byte from the cache
        assert cache.manifest(images.first.host, "ops/web", "2.0").status >= 500

    # The index is still tagged in the second registry: forgetting the first's tag keeps it.
    kept = regcache("rm", "-d", str(cache.cache_dir), f"{images.first.host}/ops/web")
    assert row(kept, "kept", "manifest", images.web.digest[:19]).endswith(
        f"needed by {images.second.host}/mirror/web:1.0"
    )
    assert blob_path(cache.cache_dir, base).exists()


def test_rm_explains_bad_references_and_missing_content_in_one_line(cache, images, tmp_path):
    cases = [
        (["rm", "-d", str(cache.cache_dir), "ops/web"], 2, "expected <registry>/<repository>"),
        (["rm", "-d", str(cache.cache_dir), f"{images.first.host}/Ops/web"], 2, "invalid repository name 'Ops/web'"),
        (["rm", "-d", str(cache.cache_dir), f"{images.first.host}/ops/web@sha256:12"], 2, "invalid sha256 digest"),
        (["rm", "-d", str(cache.cache_dir), f"{images.first.host}/ops/nothing:1"], 1, "nothing cached for"),
        (["ls", "-d", str(tmp_path / "absent")], 2, f"--cache-dir {tmp_path / 'absent'}: no such directory"),
        (["prune", "-d", str(cache.cache_dir), "--older-than", "soon"], 2, "--older-than 'soon'"),
    ]
    for argv, code, message in cases:
        done = regcache(*argv)
        assert (done.code, len(done.err.splitlines())) == (code, 1), (argv, done.err)
        assert message in done.err and "Traceback" not in done.err, done.err


def test_prune_older_than_removes_unused_images_and_keeps_what_used_ones_need(cache, images):
    for path in image_files(cache, images.first.host, "ops/db", "1", images.db):
        age(path, 40)
    for path in image_files(cache, images.first.host, "ops/web", "2.0", images.web2):
        age(path, 40)  # its base layer too, which ops/web:1.0 (used today) needs

    dry = regcache("prune", "-d", str(cache.cache_dir), "--older-than", "30d", "--dry-run")
    assert dry.code == 0, dry.err
    assert row(dry, "would", "remove", "tag", f"{images.first.host}/ops/db:1").split()[-3:] == ["unused", "for", "40d"]
    assert blob_path(cache.cache_dir, images.db.layer_digests[0]).exists()

    done = regcache("prune", "-d", str(cache.cache_dir), "--older-than", "30d")
    assert done.code == 0, done.err
    assert [line.split()[1] for line in done.lines[1:-1]] == [
        "tag",
        "tag",
        "manifest",
        "manifest",
        "blob",
        "blob",
        "blob",
        "blob",
    ]
    for digest in [*images.db.blob_digests, images.web2.layer_digests[1]]:
        assert not blob_path(cache.cache_dir, digest).exists()
    assert blob_path(cache.cache_dir, images.web2.layer_digests[0]).exists()
    with upstreams_down(images):
        pull(cache, images.first.host, "ops/web", "1.0")
        pull(cache, images.second.host, "mirror/web", "1.0")
        assert cache.manifest(images.first.host, "ops/db", "1").status >= 500


def test_prune_max_size_removes_least_recently_used_until_under_and_never_staging(cache, images):
    for days, (repo, tag, image) in enumerate([("ops/db", "1", images.db), ("ops/web", "2.0", images.web2)], start=3):
        for path in image_files(cache, images.first.host, repo, tag, image):
            age(path, 10 - days)  # db: 7 days, web:2.0: 6 days, the rest: today
    in_flight = cache.cache_dir / "staging" / "download-in-progress"
    in_flight.write_bytes(b"x" * MIB)

    done = regcache("prune", "-d", str(cache.cache_dir), "--max-size", "3.1M")
    assert done.code == 0, done.err
    names = [line.split()[2] for line in done.lines[1:-1]]
    assert names[0] == f"{images.first.host}/ops/db:1" and f"{images.first.host}/ops/web:2.0" in names
    assert "least recently used" in done.lines[1]
    assert done.lines[-1].endswith("(limit 3.1 MiB).")
    usage = regcache("du", "-d", str(cache.cache_dir), "--json").json()
    assert next(t for t in usage["tiers"] if t["kind"] == "total")["size"] <= 3.1 * MIB
    assert in_flight.exists()
    with upstreams_down(images):
        pull(cache, images.first.host, "ops/web", "1.0")
