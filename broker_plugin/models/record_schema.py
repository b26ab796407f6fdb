"""The ``bal`` annotation's Avro schema: one definition for every writer of the output record.

Why in ``models``: the annotation is assembled here (``annotate``), and both ways of running the
pipeline write it (files in ``files.output``, Kafka in ``stream.bal_encoding``); keeping its schema
below both lets neither import the other.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=1)
def annotation_schema() -> dict[str, Any]:
    """The ``bal`` record's Avro schema as a JSON dict, read from the installed package.

    The canonical file is ``broker_plugin/schemas/bal_annotation.avsc`` (installed with the
    package); the top-level ``schemas/bal_annotation.avsc`` is an identical copy for people browsing
    the repository, and a test keeps the two equal. Cached: callers that change it must copy it.
    """
    text = (resources.files("broker_plugin") / "schemas" / "bal_annotation.avsc").read_text(encoding="utf-8")
    return json.loads(text)
