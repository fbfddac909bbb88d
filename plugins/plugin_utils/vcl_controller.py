# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The base of vcl.lab's database actions (vcl_instance, vcl_reserve, vcl_image, vcl_slave, vcl_db, vcl_lab_info).

They are action plugins: the work runs in the controller's Python, the interpreter of ansible-playbook itself,
where the vcl_sched package is installed next to Ansible, whatever host the task names. A subclass declares
its arguments (``ARGUMENT_SPEC``, the same as its documentation in plugins/modules/<name>.py) and implements
``work(args, check_mode)``, which returns the task's result; a ``VclError`` from vcl_sched fails the task with
its one-line message (which starts with the field at fault) and the field as ``field``.

An action whose spec has ``acting_user`` runs on behalf of that lab user (``vcl_sched.acting``): the portal and
``vcl --as`` pass who logged in, and the service layer checks that user's role. Without it the controller's
user acts, as the lab's admin (whoever runs ansible-playbook here holds the database anyway).
"""

from __future__ import annotations

import importlib
import json
from typing import Any, ClassVar

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.unsafe_proxy import wrap_var

# Imported here, when the module is loaded: ansible-playbook's strategies load an action's class in their own
# process before they fork the task's worker, so every worker inherits vcl_sched and SQLAlchemy already imported
# instead of importing them again (about 0.3 s per database task on a small controller; a launch has three, four
# on someone's behalf). Without vcl_sched, run() says how to install it.
for _module in ("vcl_sched.lifecycle", "vcl_sched.service", "vcl_sched.sessions"):  # SQLAlchemy, models, authz...
    try:
        importlib.import_module(_module)
    except ImportError:
        break


def plain(value: Any) -> Any:
    """Task arguments as plain Python data (str, int, float, bool, None, list, dict). Ansible hands action
    plugins its own subclasses of str, int, dict... (tagged or unsafe values), which vcl_sched must not keep."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise AnsibleActionFail(f"arguments: expected plain data (strings, numbers, lists, mappings): {err}") from None


def need(args: dict[str, Any], action: str, *keys: str) -> None:
    """Fail naming the first of ``keys`` that the task left empty: action ``action`` needs each of them."""
    for key in keys:
        if args[key] in (None, ""):
            raise AnsibleActionFail(f"{key}: action {action} needs it")


class VclControllerAction(ActionBase):
    """A vcl.lab action that reads or writes the lab database on the controller."""

    TRANSFERS_FILES = False
    _requires_connection = False  # nothing runs on the task's host
    ARGUMENT_SPEC: ClassVar[dict[str, dict[str, Any]]] = {}
    REQUIRED_IF: ClassVar[list[tuple[str, Any, tuple[str, ...]]]] = []

    def work(self, args: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        name = self._task.action.rpartition(".")[2]
        try:
            _spec, validated = self.validate_argument_spec(argument_spec=self.ARGUMENT_SPEC,
                                                           required_if=self.REQUIRED_IF)
        except AnsibleActionFail as err:  # Ansible's message repeats the bad value: one line, whatever it holds
            raise AnsibleActionFail(" ".join(str(err).split())) from None
        args = plain({key: validated.get(key) for key in self.ARGUMENT_SPEC})
        try:
            from vcl_sched.errors import VclError
        except ImportError as err:
            raise AnsibleActionFail(
                f"{name} needs the vcl_sched package in the controller's Python, the one ansible-playbook runs"
                f" with ({err}); install it there (scripts/setup.sh, or pip install vcl-sched)"
            ) from None
        try:
            # Each task runs in a worker forked from ansible-playbook, which may hold pooled connections to the
            # same database (the vcl_slaves inventory plugin): vcl_sched.db gives a forked child pools of its own.
            if args.get("acting_user"):
                # Who the portal or `vcl --as` logged in: the database actions check that user's role.
                from vcl_sched import acting, people

                with acting.acting(people.actor_for(args["acting_user"])):
                    result.update(self.work(args, bool(self._task.check_mode)))
            else:
                result.update(self.work(args, bool(self._task.check_mode)))
        except VclError as err:
            result.update(failed=True, msg=str(err), field=getattr(err, "field", None))
        return wrap_var(result)  # what the database holds is data, never a template
