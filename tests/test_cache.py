"""The stage cache's rules, on real files and a real sqlite tracking store: what changes a key, when a record
may be trusted, what a record keeps, and the stage/config-section pairing."""

import hashlib

import pytest

from tasks import cache
from tasks.config import load_config
from tasks.stage import ConfigReads, check_sections, stage_settings


def _ref(path, name="m", run_id="run-1"):
    path.write_bytes(name.encode() * 10)
    return {"name": name, "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "run_id": run_id}


def test_key_follows_content_not_where_it_was_logged(tmp_path):
    cfg = load_config("configs/smoke.yaml")
    settings = stage_settings(cfg, ("prune",))
    ref = _ref(tmp_path / "a.pt")
    key = cache.stage_key("prune", settings, {"student": ref})
    assert key == cache.stage_key("prune", settings, {"student": {**ref, "run_id": "another-run"}})
    assert key == cache.stage_key("prune", settings, {"student": {**ref, "path": "/elsewhere/a.pt"}})
    assert key != cache.stage_key("prune", settings, {"student": {**ref, "sha256": "0" * 64}})
    assert key != cache.stage_key("prune", stage_settings(load_config("configs/smoke.yaml", {"prune.ratio": 0.6}),
                                                          ("prune",)), {"student": ref})
    assert key != cache.stage_key("prune", stage_settings(load_config("configs/smoke.yaml", {"seed": 1}),
                                                          ("prune",)), {"student": ref})
    assert key != cache.stage_key("distill", settings, {"student": ref})
    # a section the stage does not read does not change its key
    assert key == cache.stage_key("prune", stage_settings(load_config("configs/smoke.yaml",
                                                                      {"quantize.enabled": False}),
                                                          ("prune",)), {"student": ref})


def test_a_key_with_the_source_follows_the_source_and_search_runs_only_fields_change_no_key():
    one, other = load_config("configs/smoke.yaml"), load_config("configs/smoke.yaml", {"source": "scratch:resnet34"})
    assert stage_settings(one, ("source",)) != stage_settings(other, ("source",))
    assert stage_settings(one, ()) == stage_settings(other, ())
    more = load_config("configs/smoke.yaml", {"search.trials": 50, "search.parallel": 4, "search.top_k": 3})
    assert stage_settings(one, ("search",)) == stage_settings(more, ("search",))
    assert stage_settings(one, ("search",)) != stage_settings(
        load_config("configs/smoke.yaml", {"search.budget.max": "20%"}), ("search",))


def test_a_record_is_used_only_when_valid_for_this_store(tmp_path):
    result = {"kd": _ref(tmp_path / "kd.pt", "kd", "run-kd"), "run_id": "run-stage", "stage": "distill"}
    cache.write_record(tmp_path, "distill", "k", "store-x", result)
    finished = {"run-kd", "run-stage"}
    assert cache.lookup(tmp_path, "store-x", finished.__contains__) == (result, "")
    assert cache.lookup(tmp_path, "store-y", finished.__contains__) == (
        None, "its runs were logged to another tracking store")
    hit, why = cache.lookup(tmp_path, "store-x", {"run-kd"}.__contains__)
    assert hit is None and "run run-stage is not a finished run" in why
    (tmp_path / "kd.pt").write_bytes(b"changed")
    hit, why = cache.lookup(tmp_path, "store-x", finished.__contains__)
    assert hit is None and "changed since it was recorded" in why
    (tmp_path / "kd.pt").unlink()
    hit, why = cache.lookup(tmp_path, "store-x", finished.__contains__)
    assert hit is None and why.endswith("kd.pt is missing")


def test_no_record_and_broken_records(tmp_path):
    assert cache.lookup(tmp_path, "store-x", lambda _: True) == (None, "")
    (tmp_path / cache.RECORD_NAME).write_text("{not json")
    hit, why = cache.lookup(tmp_path, "store-x", lambda _: True)
    assert hit is None and "unreadable" in why
    (tmp_path / cache.RECORD_NAME).write_text('{"version": 1, "stores": {}}')
    assert "another shrinkflow version" in cache.lookup(tmp_path, "store-x", lambda _: True)[1]


def test_record_keeps_other_stores_only_while_their_files_are_the_same(tmp_path):
    ref = _ref(tmp_path / "m.pt")
    cache.write_record(tmp_path, "trim", "k", "x", {**ref, "run_id": "in-x"})
    cache.write_record(tmp_path, "trim", "k", "y", {**ref, "run_id": "in-y"})
    record, _ = cache.read_record(tmp_path)
    assert {name: entry["run_id"] for name, entry in record["stores"].items()} == {"x": "in-x", "y": "in-y"}
    changed = _ref(tmp_path / "m.pt", "other")  # the stage wrote different bytes this time
    cache.write_record(tmp_path, "trim", "k", "y", {**changed, "run_id": "in-y-2"})
    record, _ = cache.read_record(tmp_path)
    assert list(record["stores"]) == ["y"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_stage_reading_a_section_its_key_does_not_hash_is_refused():
    cfg = ConfigReads(load_config("configs/smoke.yaml"))
    assert cfg.prune.ratio == 0.5 and cfg.distill.temperature == 4.0 and cfg.data.classes == [5, 7, 9]
    assert cfg.seed == 0 and cfg.name == "smoke"
    check_sections("prune", ("prune", "distill"), cfg.read)
    with pytest.raises(RuntimeError, match="stage prune reads config distill but its cache key hashes only prune"):
        check_sections("prune", ("prune",), cfg.read)
    with pytest.raises(AttributeError, match="must not change"):
        cfg.seed = 3
