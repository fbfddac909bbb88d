"""Documentation shared by vcl.lab's controller-side actions (the modules that read or write the lab database)."""


class ModuleDocFragment:
    # Used with ansible.builtin.action_common_attributes (.conn, .flow), which describe each attribute; a module
    # adds its own check_mode support.
    DOCUMENTATION = r"""
attributes:
  action:
    support: full
  async:
    support: none
  become:
    support: none
  bypass_host_loop:
    support: none
  connection:
    support: none
  delegation:
    support: none
    details: It always runs on the controller; C(delegate_to) changes only whose variables the task sees.
  diff_mode:
    support: none
  platform:
    platforms: all
"""
