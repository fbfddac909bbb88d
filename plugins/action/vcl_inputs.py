# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""Action plugin vcl.lab.vcl_inputs: check a playbook's extra variables as they were given, before anything
templates them (plugins/modules/vcl_inputs.py documents it).

Why not ``ansible.builtin.assert``: with ``ansible-playbook -e 'id={{ lookup("pipe", "...") }}'`` typed by hand,
Ansible (2.19) trusts the value as a template, and the first expression that names ``id`` (an assert's ``that``,
its ``fail_msg``, a role's argument validation) renders it, running the lookup. An action plugin receives the
task's variables unrendered: here they are only read as data (``vcl_sched.validate``), never templated.
"""

from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.unsafe_proxy import wrap_var
from ansible.utils.vars import load_extra_vars

KINDS = ["id", "ids", "name", "cores", "ram_mb", "disk_gb", "hours", "seats", "number", "flag", "bool", "start",
         "attempts", "lanes", "seconds", "path", "weekdays", "weeks", "names", "text", "timeout",
         "bwlimit"]  # fmt: skip
ARGUMENT_SPEC = {
    "fields": {"type": "dict", "required": True},
    "required": {"type": "list", "elements": "str", "default": []},
    "one_of": {"type": "list", "elements": "str", "default": []},
}
_TEMPLATE = re.compile(r"\{[{%#]")
_PATH = re.compile(r"^/[A-Za-z0-9._@+/-]{0,4095}$")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_TEMPLATE.search(value))
    if isinstance(value, dict):
        return any(_has_template(k) or _has_template(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_template(v) for v in value)
    return False


def check(field: str, kind: str, value: Any) -> None:
    """Raise vcl_sched's ValidationError naming ``field`` unless ``value`` is a ``kind``; never templates."""
    from vcl_sched import validate as v
    from vcl_sched.config import parse_datetime
    from vcl_sched.errors import ValidationError

    if isinstance(value, str) and _TEMPLATE.search(value):
        raise ValidationError(field, "a Jinja template is not allowed here (requests are data)")
    simple = {"id": v.id_value, "name": v.check_name, "cores": v.cores_value, "ram_mb": v.ram_value,
              "disk_gb": v.disk_value, "hours": v.hours_value, "seats": v.seats_value}
    if kind in simple:
        simple[kind](field, value)
    elif kind == "ids":
        items = [i.strip() for i in value.split(",")] if isinstance(value, str) else [value]  # as the plays read it
        if not 1 <= len(items) <= 1000 or "" in items:
            raise ValidationError(field, f"{v.shown(value)} is not a list of instance ids (N or N,M,...)")
        for item in items:
            v.id_value(field, item)
    elif kind == "number":
        v.bounded(field, value, 0, v.MAX_NUMBER)
    elif kind == "flag":
        if not isinstance(value, bool):
            v.whole(field, value, 0, 1)
    elif kind in ("bool", "start") and not isinstance(value, bool | str):
        what = "true or false" if kind == "bool" else "now or a date and time"
        raise ValidationError(field, f"{v.shown(value)} is not {what}")
    elif kind == "bool":
        if not isinstance(value, bool) and value.strip().lower() not in _TRUE | _FALSE:
            raise ValidationError(field, f"{v.shown(value)} is not true or false")
    elif kind == "start":
        if value.strip() != "now":
            v.text_value(field, value, 64)
            parse_datetime(value, field)
    elif kind == "weekdays":
        from vcl_sched.sessions import parse_weekdays

        parse_weekdays(value if isinstance(value, str | list) else v.shown(value))
    elif kind == "weeks":
        from vcl_sched.sessions import MAX_WEEKS

        v.whole(field, value, 1, MAX_WEEKS)
    elif kind == "attempts":
        v.whole(field, value, 1, 3)
    elif kind == "lanes":  # launches at once per slave (dispatch.yml; the filter vcl_lanes has the same bound)
        v.whole(field, value, 1, 16)
    elif kind == "seconds":
        v.bounded(field, value, 0.01, 60)
    elif kind == "names":  # a list of names, or names separated by commas
        items = [i.strip() for i in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, list) or not 1 <= len(items) <= 100:
            raise ValidationError(field, f"{v.shown(value)} is not a list of names (a,b or [a, b])")
        for item in items:
            v.check_name(field, item)
    elif kind == "timeout":  # whole seconds a step waits (vm__stop_shutdown_timeout)
        v.whole(field, value, 0, 3600)
    elif kind == "bwlimit":  # KiB/s of a copy, 0 for none (vm__disk_bwlimit)
        v.whole(field, value, 0, 10_000_000)
    elif kind == "text":  # one line of printable text (a description)
        v.text_value(field, value, 500)
    elif kind == "path":
        v.text_value(field, value)
        if not _PATH.match(value) or "/../" in f"{value}/" or "/./" in f"{value}/":
            raise ValidationError(field, f"{v.shown(value)} is not a normalised absolute path (letters, digits, ._@+-)")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _spec, validated = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        fields, required, one_of = validated["fields"], validated["required"], validated["one_of"]
        for name, kind in fields.items():
            if kind not in KINDS:
                raise AnsibleActionFail(f"fields: {name}: the kind {kind!r} is not one of {', '.join(KINDS)}")
        try:
            from vcl_sched.errors import ValidationError
        except ImportError as err:
            message = f"vcl_inputs needs the vcl_sched package in the controller's Python ({err})"
            raise AnsibleActionFail(message) from None
        given = dict(task_vars or {})  # the variables as given: values are read, never rendered
        extra = load_extra_vars(self._loader)
        try:
            for name, kind in fields.items():
                if given.get(name) in (None, ""):
                    continue
                if name not in extra and _has_template(given[name]):
                    continue  # the inventory's or a playbook's own template (trusted), rendered where it is used
                check(name, kind, given[name])
            for name, value in extra.items():  # any other extra variable: data, never a template
                if name not in fields and (_has_template(value) or _TEMPLATE.search(str(name))):
                    raise ValidationError(str(name)[:64], "a Jinja template is not allowed in an extra variable")
            for name in required:
                if given.get(name) in (None, ""):
                    raise ValidationError(name, f"required (-e {name}=...)")
            if one_of and all(given.get(name) in (None, "") for name in one_of):
                raise ValidationError(one_of[0], f"required (-e {one_of[0]}=...)")
        except ValidationError as err:
            result.update(failed=True, msg=str(err), field=getattr(err, "field", None))
            return wrap_var(result)
        result.update(changed=False, checked=sorted(name for name in fields if given.get(name) not in (None, "")))
        return wrap_var(result)
