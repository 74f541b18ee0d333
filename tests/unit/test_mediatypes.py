"""Accept matching: whether a cached tag's media type may be served to this client."""

from regcache.oci import mediatypes as mt


def test_no_accept_or_wildcard_allows_anything():
    assert mt.allows(mt.accepted_types([]), mt.DOCKER_MANIFEST)
    assert mt.allows(mt.accepted_types(["*/*"]), mt.OCI_INDEX)
    assert mt.allows(mt.accepted_types([f"{mt.OCI_MANIFEST}, */*;q=0.1"]), mt.DOCKER_LIST)


def test_listed_types_only():
    accepted = mt.accepted_types([f"{mt.DOCKER_MANIFEST}, {mt.DOCKER_LIST};q=0.9", mt.OCI_MANIFEST])
    assert mt.allows(accepted, mt.DOCKER_MANIFEST)
    assert mt.allows(accepted, mt.DOCKER_LIST)
    assert mt.allows(accepted, mt.OCI_MANIFEST)
    assert not mt.allows(accepted, mt.OCI_INDEX)


def test_matching_ignores_case():
    assert mt.allows(mt.accepted_types([mt.OCI_INDEX.upper()]), mt.OCI_INDEX)
