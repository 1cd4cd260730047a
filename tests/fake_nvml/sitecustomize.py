"""Runs at the start of a test's subprocess whose PYTHONPATH begins with this folder: when
``ZWAIF_FAKE_GGML`` lists devices (see fake_ggml.py), llama.cpp's device list is simulated."""

import json
import os

if os.environ.get("ZWAIF_FAKE_GGML"):
    import fake_ggml

    import zwaif_fallback.ggml_devices as _devices

    _fake = fake_ggml.FakeGgml([
        fake_ggml.Device(d["name"], d.get("description", d["name"]), d["type"],
                         d.get("free_mb", d.get("total_mb", 0)) * 2**20, d.get("total_mb", 0) * 2**20)
        for d in json.loads(os.environ["ZWAIF_FAKE_GGML"])])
    _devices._load = lambda: _fake  # type: ignore[assignment]
