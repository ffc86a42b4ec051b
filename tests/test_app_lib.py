"""The MONAI Label app's library (``monai_app/lib``) on its own: the module graph has no import
circle, every request/``--conf`` value has one validator, and the served model carries the sha256
of the file it was loaded from."""

from __future__ import annotations

import ast
import graphlib
import hashlib
import importlib
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("monailabel")

APP_DIR = Path(__file__).resolve().parent.parent / "monai_app"
LIB = APP_DIR / "lib"


# --- the module graph --------------------------------------------------------------------------------


def _app_modules(root: Path = APP_DIR, package: str = "lib") -> dict[str, tuple[bool, ast.Module]]:
    """Dotted name -> (is a package ``__init__``, parsed source) of every module under ``root/package``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (is_package, ast.parse(path.read_text(), str(path)))
    return modules


def _targets(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict) -> set[str]:
    """The app modules an import statement of module ``name`` loads."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
    return {t for t in found if t in modules}


def _graph(modules: dict) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> app modules it imports at module level, nested app imports as ``module:line``)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    nested = []
    for name, (is_package, tree) in modules.items():
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = _targets(name, is_package, node, modules)
            if not targets:
                continue  # a third-party import (a lazy ``import torch`` is no dodge)
            if id(node) in top:
                graph[name] |= targets
            else:  # inside a function, class, ``if TYPE_CHECKING:`` or ``try:``: hides a circle
                nested.append(f"{name}:{node.lineno} imports {sorted(targets)}")
    return graph, nested


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import circle in monai_app/lib: {' -> '.join(err.args[1])}")


def test_the_app_library_has_no_import_circle_and_no_import_hidden_in_a_function():
    modules = _app_modules()
    assert {"lib.serve_config", "lib.model_cache", "lib.errors", "lib.configs.medsad", "lib.infers.medsad"} <= set(
        modules
    )
    graph, nested = _graph(modules)
    assert nested == [], "app imports must sit at module level (a nested one dodges an import circle)"
    _assert_acyclic(graph)
    # the old circle: configs.medsad <-> model_cache through ServeConfig
    assert graph["lib.serve_config"] == {"lib.errors"}
    assert graph["lib.model_cache"] == {"lib.errors", "lib.serve_config"}
    assert "lib.configs.medsad" in graph["lib.configs"] and "lib.model_cache" in graph["lib.configs.medsad"]
    for task in ("lib.infers.medsad", "lib.trainers.medsad", "lib.scoring.medsad", "lib.configs.medsad"):
        assert "lib.serve_config" in graph[task], f"{task} does not validate through lib.serve_config"


def test_the_graph_check_finds_a_circle_and_a_nested_import(tmp_path):
    pkg = tmp_path / "lib"
    (pkg / "configs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "configs" / "__init__.py").write_text("from .medsad import Task\n")
    (pkg / "configs" / "medsad.py").write_text("from ..model_cache import Cache\nclass Task: pass\n")
    (pkg / "model_cache.py").write_text("from .configs.medsad import Task\nclass Cache: pass\n")
    (pkg / "late.py").write_text("def f():\n    from .model_cache import Cache\n    return Cache\n")
    graph, nested = _graph(_app_modules(tmp_path))
    assert graph["lib.model_cache"] == {"lib.configs.medsad"} and graph["lib.configs"] == {"lib.configs.medsad"}
    assert nested == ["lib.late:2 imports ['lib.model_cache']"]
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        _assert_acyclic(graph)


# --- the app library, imported as MONAI Label imports it -------------------------------------------


@pytest.fixture
def app_lib():
    """``lib.errors``, ``lib.serve_config``, ``lib.model_cache`` of monai_app, freshly imported the way
    MONAI Label imports them (it drops and re-imports ``lib`` on every app load)."""
    from monailabel.utils.others.class_utils import unload_module

    unload_module("lib")
    sys.path.insert(0, str(APP_DIR))
    try:
        yield tuple(importlib.import_module(f"lib.{name}") for name in ("errors", "serve_config", "model_cache"))
    finally:
        sys.path.remove(str(APP_DIR))
        unload_module("lib")


@pytest.mark.parametrize(
    "check,good,bad,message",
    [
        ("check_threshold", [("0.3", 0.3), (0.7, 0.7)], ["1.5", "0", "abc", None], "between 0 and 1"),
        (
            "check_optional_threshold",
            [("", None), (None, None), ("Calibrated", None), ("0.25", 0.25)],
            ["1", "x"],
            "between 0 and 1",
        ),
        ("check_slice_axis", [(0, 0), ("2", 2), (1.0, 1)], [3, "-1", "x", 1.5, True, None], "expected 0, 1 or 2"),
        ("check_batch_size", [(1, 1), ("16", 16)], [0, "-2", "x", 2.5, False], ""),
        ("check_count", [(3, 3)], [0, "x"], ""),
        ("check_positive", [("1e-4", 1e-4)], [0, "-1", "nan", "x"], ""),
        ("check_fraction", [("0.2", 0.2)], [0, 1, "1.5", "inf"], ""),
        ("check_probability", [(0, 0.0), ("1", 1.0)], ["1.5", -0.1], "between 0 and 1"),
        ("check_minutes", [(0, 0.0), ("2.5", 2.5)], [-1], "0 (no limit) or positive"),
        ("check_seed", [(-3, -3), ("7", 7)], ["x", 0.5], "integer"),
        ("check_flag", [(True, True), ("false", False), ("YES", True), (0, False)], ["maybe", None], "true or false"),
        ("check_preset", [("tiny", "tiny")], ["huge", None], "choose one of"),
        (
            "check_device",
            [("cpu", "cpu"), ("cuda:1", "cuda:1"), ("", None), (None, None)],
            ["tpu", "cudax", 0],
            "cpu, cuda or cuda:N",
        ),
        ("check_models", [("medsad", "medsad"), ("all", "all")], ["segmentation"], "one model"),
    ],
)
def test_each_validator_returns_the_typed_value_or_an_input_error_naming_the_key(app_lib, check, good, bad, message):
    errors, serve_config, _ = app_lib
    fn = getattr(serve_config, check)
    for raw, expected in good:
        assert fn("some_key", raw) == expected
    for raw in bad:
        with pytest.raises(errors.InputError, match=f"^some_key .*{re.escape(message)}"):
            fn("some_key", raw)
    assert issubclass(errors.InputError, ValueError)


def test_conf_and_request_values_share_one_validator(app_lib, tmp_path):
    errors, serve_config, _ = app_lib
    conf = serve_config.ServeConfig.from_conf(
        {"threshold": "calibrated", "slice_axis": "1", "batch_size": "2"}, tmp_path
    )
    assert (conf.threshold, conf.slice_axis, conf.batch_size) == (None, 1, 2)
    assert conf.checkpoint == (tmp_path / "model" / "medsad.pt").resolve()
    assert serve_config.ServeConfig.from_conf({"precision": "bf16"}, tmp_path).precision == "bf16"
    assert conf.precision == "auto"  # as medsad infer and the Slicer local backend
    for key, value in [
        ("threshold", "1.5"),
        ("slice_axis", "3"),
        ("batch_size", "0"),
        ("device", "tpu"),
        ("precision", "fp16"),
        ("min_lesion_mm3", "-5"),
        ("min_lesion_mm3", "lots"),
        ("min_lesion_mean", "1"),
        ("min_lesion_mean", "-0.2"),
        ("min_lesion_mean", "high"),
        ("profile", "a/b"),
        ("profile", "_x"),
    ]:
        with pytest.raises(errors.ConfError) as from_conf:
            serve_config.ServeConfig.from_conf({key: value}, tmp_path)
        with pytest.raises(errors.InputError) as from_request:
            serve_config.InferParams.from_request({key: value}, conf) if key in (
                "threshold",
                "slice_axis",
                "min_lesion_mm3",
                "min_lesion_mean",
                "profile",
            ) else getattr(serve_config, f"check_{key}")(key, value)
        assert str(from_conf.value) == f"--conf {from_request.value}"
    params = serve_config.InferParams.from_request({"slice_threshold": "0.4", "skip_background": "false"}, conf)
    assert params == serve_config.InferParams(None, 0.4, None, 1, False)
    fixed = serve_config.ServeConfig.from_conf({"threshold": "0.3"}, tmp_path)
    assert serve_config.InferParams.from_request({"threshold": ""}, fixed).threshold == 0.3
    assert serve_config.InferParams.from_request({"threshold": 0.6}, fixed).threshold == 0.6
    sized = serve_config.ServeConfig.from_conf({"min_lesion_mm3": "50"}, tmp_path)  # every request's minimum
    assert serve_config.InferParams.from_request({}, sized).min_lesion_mm3 == 50.0
    assert serve_config.InferParams.from_request({"min_lesion_mm3": "calibrated"}, sized).min_lesion_mm3 == 50.0
    assert serve_config.InferParams.from_request({"min_lesion_mm3": 0}, sized).min_lesion_mm3 == 0.0
    assert serve_config.InferParams.from_request({}, conf).min_lesion_mm3 is None
    confident = serve_config.ServeConfig.from_conf({"min_lesion_mean": "0.8"}, tmp_path)
    assert serve_config.InferParams.from_request({}, confident).min_lesion_mean == 0.8
    assert serve_config.InferParams.from_request({"min_lesion_mean": "calibrated"}, confident).min_lesion_mean == 0.8
    assert serve_config.InferParams.from_request({"min_lesion_mean": "0"}, confident).min_lesion_mean == 0.0
    assert serve_config.InferParams.from_request({}, conf).min_lesion_mean is None
    site = serve_config.ServeConfig.from_conf({"profile": "site_b"}, tmp_path)  # the server's operating point
    assert site.profile == "site_b" and conf.profile is None
    assert serve_config.InferParams.from_request({}, site).profile is None  # None: the served one (site_b)
    assert serve_config.InferParams.from_request({"profile": " default "}, site).profile == "default"
    assert serve_config.InferParams.from_request({"profile": ""}, site).profile is None


# --- the served model and its sha256 ----------------------------------------------------------------


def _publish_calibrated(checkpoint: Path, map_threshold: float) -> str:
    """Publish a new checkpoint (another calibration) the way training does: written aside, then
    ``os.replace``. Returns its short sha256."""
    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint

    staged = checkpoint.with_name("staged.pt")
    shutil.copyfile(checkpoint, staged)
    write_calibration(staged, OperatingPoint(map_threshold=map_threshold, source="calibrate"))
    os.replace(staged, checkpoint)
    return _sha(checkpoint)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_a_loaded_model_keeps_the_sha256_of_its_file_across_a_hot_reload(app_lib, tiny_checkpoint, tmp_path):
    errors, serve_config, model_cache = app_lib
    checkpoint = tmp_path / "medsad.pt"
    cache = model_cache.ModelCache(serve_config.ServeConfig(checkpoint=checkpoint, batch_size=2, device="cpu"))
    with pytest.raises(errors.NoModelError, match="no model at"):
        cache.get()
    shutil.copyfile(tiny_checkpoint, checkpoint)
    first = cache.get()
    assert first.fingerprint == _sha(checkpoint) and first.path == checkpoint
    assert first.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert cache.get() is first  # unchanged file: not loaded again
    new_sha = _publish_calibrated(checkpoint, 0.3)
    assert first.fingerprint != new_sha  # what a task holds still names the model it runs
    second = cache.get()
    assert second.fingerprint == new_sha and second.predictor.operating_point.map_threshold == 0.3
    assert first.predictor.operating_point.map_threshold == 0.5 and second.predictor is not first.predictor


def test_a_checkpoint_published_while_it_loads_is_loaded_again(app_lib, tiny_checkpoint, tmp_path, monkeypatch):
    _, serve_config, model_cache = app_lib
    checkpoint = tmp_path / "medsad.pt"
    shutil.copyfile(tiny_checkpoint, checkpoint)
    cache = model_cache.ModelCache(serve_config.ServeConfig(checkpoint=checkpoint, batch_size=2, device="cpu"))
    real = model_cache.Predictor.from_checkpoint
    calls = []

    def publish_during_the_first_load(*args, **kwargs):
        calls.append(_sha(checkpoint))
        predictor = real(*args, **kwargs)
        if len(calls) == 1:
            _publish_calibrated(checkpoint, 0.3)  # hashed the old file, loaded the old file: now stale
        return predictor

    monkeypatch.setattr(model_cache.Predictor, "from_checkpoint", publish_during_the_first_load)
    loaded = cache.get()
    assert len(calls) == 2
    assert loaded.fingerprint == _sha(checkpoint) == calls[1] != calls[0]
    assert loaded.predictor.operating_point.map_threshold == 0.3  # the model of that sha256
