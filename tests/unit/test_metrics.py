"""Metric labels that come from clients stay bounded."""

from regcache import metrics


def test_registry_labels_are_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "_registry_labels", set())
    monkeypatch.setattr(metrics, "MAX_REGISTRY_LABELS", 3)
    assert [metrics.registry_label(f"r{i}.test") for i in range(5)] == [
        "r0.test",
        "r1.test",
        "r2.test",
        "other",
        "other",
    ]
    assert metrics.registry_label("r1.test") == "r1.test"
