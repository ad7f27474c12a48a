"""One registry of task kinds: the engine-level part (trustgen.engines.kinds) and the node-level
part (trustgen.node.kinds) cover the same kinds, and every consumer refuses an unknown one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trustgen.engines.kinds import ENGINE_KINDS, engine_kind
from trustgen.engines.registry import resolve
from trustgen.errors import ModelError, UsageError
from trustgen.node.kinds import TASK_KINDS, task_kind


def test_each_kind_has_both_parts_and_a_default_model_of_its_kind():
    assert list(ENGINE_KINDS) == list(TASK_KINDS) == ["text", "image"]
    for name, kind in ENGINE_KINDS.items():
        assert task_kind(name).engine is kind
        assert resolve(kind.default_model).kind == name
        assert kind.engine_class().__name__ == {"text": "TextEngine", "image": "ImageEngine"}[name]
        assert kind.param_names()[0] == "prompt"
    assert [k.name for k in ENGINE_KINDS.values() if k.blob_field] == ["image"]


def test_unknown_kinds_and_bad_parameters_are_usage_errors():
    for lookup in (engine_kind, task_kind):
        with pytest.raises(UsageError, match="unknown task kind 'video'; choose text or image"):
            lookup("video")
    text = engine_kind("text")
    assert text.parse_params({"prompt": "hi", "max_new_tokens": 4}).max_new_tokens == 4
    with pytest.raises(UsageError, match="unknown task parameter steps"):
        text.parse_params({"prompt": "hi", "steps": 4})  # an image parameter
    with pytest.raises(UsageError, match="max_new_tokens must be int, got float"):
        text.parse_params({"prompt": "hi", "max_new_tokens": 8.0})
    with pytest.raises(UsageError, match="steps must be int, got bool"):
        engine_kind("image").parse_params({"prompt": "hi", "steps": True})
    assert engine_kind("image").parse_params({"prompt": "hi", "guidance": 3}).guidance == 3  # an int is a float
    with pytest.raises(UsageError, match="prompt must not be empty"):
        engine_kind("image").parse_params({"prompt": " "})


def test_engines_serve_only_their_kinds_and_models(text_engine, image_engine):
    from trustgen.node.engine_pool import Engines

    engines = Engines({"text": "tiny-text", "image": "tiny-image"}, threads=1)
    try:
        assert engines.for_task("text", text_engine.ref.digest).ref == text_engine.ref
        assert engines.for_task("image", image_engine.ref.digest).ref == image_engine.ref
        with pytest.raises(ModelError, match="unknown task kind"):
            engines.for_task("video", text_engine.ref.digest)
        with pytest.raises(ModelError, match="does not serve model"):
            engines.for_task("text", image_engine.ref.digest)
    finally:
        engines.close()


def test_a_pure_gateway_loads_no_torch():
    """The gateway validates tasks with the engine-level kinds only: no model stack."""
    code = "import sys, trustgen.node.gateway, trustgen.node.daemon; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
