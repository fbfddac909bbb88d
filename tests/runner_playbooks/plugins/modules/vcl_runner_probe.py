#!/usr/bin/python
"""A module only the test collection has (its plugins/modules, using its plugins/module_utils): finding it
proves the run used the collection the project's ansible.cfg names."""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vcl.lab.plugins.module_utils.vcl_runner_words import shout


def main():
    module = AnsibleModule(argument_spec={"word": {"type": "str", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, echo=shout(module.params["word"]))


if __name__ == "__main__":
    main()
