"""Where a render's files live: a local folder (HELIOS_STORAGE, default .helios/), one folder per render.

``renders/<key>/spec.json`` is the spec snapshot taken when the render was registered;
``renders/<key>/chunk_0000.mov`` … are the chunks and ``concat.mov`` their join. Every file is
written under a temporary name and renamed when complete, so a crashed run never leaves a file
that looks finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import dagster as dg

from helios_pipeline.plan import RenderPlan, plan
from helios_pipeline.spec import RenderSpec, SpecError


class RenderStorage(dg.ConfigurableResource):
    """Render files laid out per render and chunk under ``base_dir``."""

    base_dir: str

    @property
    def root(self) -> Path:
        return Path(self.base_dir)

    def render_dir(self, render_key: str) -> Path:
        return self.root / "renders" / render_key

    def spec_file(self, render_key: str) -> Path:
        return self.render_dir(render_key) / "spec.json"

    def save_spec(self, render_key: str, spec: RenderSpec) -> Path:
        """Snapshot the spec a render was registered with (atomically)."""
        target = self.spec_file(render_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(spec.to_json_dict(), indent=2, sort_keys=True)
        handle, temp = tempfile.mkstemp(dir=target.parent, prefix=".spec-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(payload)
            os.replace(temp, target)
        finally:
            Path(temp).unlink(missing_ok=True)
        return target

    def has_spec(self, render_key: str) -> bool:
        return self.spec_file(render_key).is_file()

    def load_spec(self, render_key: str) -> RenderSpec:
        path = self.spec_file(render_key)
        if not path.is_file():
            raise SpecError(
                str(path),
                [("", f"no spec registered for render {render_key!r}: drop a spec into the inbox or use "
                      "`helios-pipeline submit SPEC`")],
            )  # fmt: skip
        return RenderSpec.model_validate_json(path.read_text(encoding="utf-8"))

    def plan_for(self, render_key: str) -> RenderPlan:
        """The render's plan, with chunk and concat files inside the render's folder."""
        return plan(self.load_spec(render_key), work_dir=self.render_dir(render_key))
