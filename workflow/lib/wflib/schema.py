"""The workflow config's JSON schema, the one source of the workflow's defaults.

``workflow/schemas/config.schema.yaml`` gives every optional config key its ``default``. common.smk
validates the config with ``snakemake.utils.validate``, which fills those defaults in, so the rule
functions (workflow/rules/common.smk) and this package index the filled config (``spec["feedback"]``)
and repeat no default (no ``spec.get(key, default)``; tests/test_defaults.py checks). ``.get``
stays only where absence means something: keys without a default (``pairs.<pair>.minicity``,
``<dataset>.raw``, ``translators.<t>.description``) and maps keyed by name (``tables.per_pair``).

Outside Snakemake (unit tests, scripts) :func:`fill_defaults` does the same to a config or to a
part of one (``ref="#/$defs/resource"``): jsonschema Draft 2020-12 with the ``properties`` keyword
extended to set each property's ``default`` before validating it, as snakemake.utils.validate does
(the jsonschema FAQ recipe), except that a default is copied, never shared between instances.
:func:`default` reads one default where the config is used before it is validated (``pairs_dir``,
read to load the pairs that validation needs).
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

#: the schema file (common.smk validates with it; relative to the Snakefile: ../schemas/...)
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
#: where :func:`fill_defaults` registers the schema, so that ``ref`` can point into it
SCHEMA_URI = "urn:semst:workflow-config"


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text()


def load_schema() -> dict:
    """The schema as a dict (a fresh copy: callers may change it)."""
    return yaml.safe_load(_schema_text())


def default(*keys: str) -> Any:
    """The schema default of a top-level key path, e.g. ``default("pairs_dir")``; KeyError when the
    schema gives that key no default (then absence is meaningful: use ``.get(key)``)."""
    node: Any = load_schema()
    for key in keys:
        node = node["properties"][key]
    return copy.deepcopy(node["default"])


def _filling_validator(schema: dict, ref: str | None):
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource

    plain_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from plain_properties(validator, properties, instance, subschema)

    filling = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    registry = Registry().with_resource(SCHEMA_URI, Resource.from_contents(schema))
    root = schema if ref is None else {"$ref": SCHEMA_URI + ref}
    return filling(root, registry=registry)


def fill_defaults(instance: Any, ref: str | None = None) -> Any:
    """Validate ``instance`` against the schema (or the part ``ref`` names, e.g. ``"#/$defs/resource"``)
    and fill in every default, in place; returns ``instance``. Raises
    ``jsonschema.exceptions.ValidationError`` for an invalid one.

    A whole config must hold its pairs already (``pipeline_config.load_pairs``), as in common.smk."""
    _filling_validator(load_schema(), ref).validate(instance)
    return instance


__all__ = ["SCHEMA_PATH", "default", "fill_defaults", "load_schema"]
