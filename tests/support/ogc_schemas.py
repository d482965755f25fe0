"""The official OGC API - Processes 1.0 JSON schemas (../shared/ogc, see its README), resolved
locally and applied with draft-07 semantics, for the conformance tests.

One failure is the schemas' own, not a server's: ``inlineOrRefData`` is a ``oneOf`` whose first
branch (``inputValueNoObject``) is itself a ``oneOf`` in which a string is both ``string`` and
``binaryInputValue`` (a string of format byte, a format draft-07 does not assert), and a whole
number both ``number`` and ``integer``: a plain string or whole-number output value is then
"valid under each of" them, so no results document holding one can pass. ``errors`` leaves out
exactly that failure, on plain values (not objects) only, and says so.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.support.server import REPO

SCHEMAS = Path(os.environ.get("AQUAMASK_OGC_SCHEMAS",
                              REPO.parent / "shared" / "ogc" / "ogcapi-processes-1.0"))
AMBIGUITY = ("the 1.0 schemas' own inlineOrRefData oneOf ambiguity (a plain string or whole "
             "number matches two branches of inputValueNoObject), see ../shared/ogc/README.md")


def require_schemas() -> None:
    if not (SCHEMAS / "statusInfo.yaml").is_file():
        pytest.skip(f"the OGC API - Processes 1.0 schemas are absent ({SCHEMAS}); set "
                    "AQUAMASK_OGC_SCHEMAS to the folder of ../shared/ogc/ogcapi-processes-1.0")


def _retrieve(uri: str) -> Resource:
    path = Path(uri.removeprefix("file://"))
    if path.parent != SCHEMAS.resolve():
        raise LookupError(f"{uri} is not one of the local schemas")  # never the network
    return Resource.from_contents(yaml.safe_load(path.read_text()),
                                  default_specification=DRAFT7)


@lru_cache(maxsize=None)
def validator(name: str) -> Draft7Validator:
    """The validator of the schema ``name`` (``statusInfo``, ``results``, ...)."""
    require_schemas()
    uri = (SCHEMAS.resolve() / f"{name}.yaml").as_uri()
    return Draft7Validator({"$ref": uri}, registry=Registry(retrieve=_retrieve))


def _ambiguous(error: ValidationError) -> bool:
    """The schemas' own oneOf failure on a plain value (see the module's docstring)."""
    return error.validator == "oneOf" and not isinstance(error.instance, (dict, list)) \
        and any(sub.validator == "oneOf" and "is valid under each of" in sub.message
                for sub in error.context or ())


def errors(instance: Any, name: str) -> list[str]:
    """What the schema ``name`` finds wrong with ``instance`` (the schemas' own ambiguity
    aside), each with where it is."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
            for e in validator(name).iter_errors(instance) if not _ambiguous(e)]


def assert_valid(instance: Any, name: str) -> None:
    found = errors(instance, name)
    assert not found, f"not a valid {name}: " + "; ".join(found)
