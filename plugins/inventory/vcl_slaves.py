# Copyright: the VCL project
# Apache License 2.0 (see pyproject.toml)
"""The ``vcl_slaves`` inventory plugin: the slaves registered in the lab database as hosts.

Thin on purpose: the read is ``vcl_sched.inventory.fetch_slaves`` (tested on its own); this class
only reads its config file, runs the inventory cache flow and adds hosts, groups and variables.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: vcl_slaves
short_description: The slaves registered in the VCL lab database
description:
  - Reads the C(slaves) table of the VCL lab database (SQLite or PostgreSQL) in one query and adds
    every slave as a host named after the slave, so it merges with the same host in a static
    C(hosts.yml).
  - Groups C(vcl_registered) (every slave) and C(vcl_status_up), C(vcl_status_down),
    C(vcl_status_draining) (by status), and C(vcl_lent), the client PCs their owners lend to the pool (lent, being
    taken back, or gone). These groups always exist, possibly empty.
  - Host variables C(ansible_host) (the slave's address), C(vcl_slave_id), C(vcl_status),
    C(vcl_joined_at) (ISO 8601), C(vcl_cores_total), C(vcl_cores_used), C(vcl_cores_free),
    C(vcl_ram_mb_total), C(vcl_ram_mb_used), C(vcl_ram_mb_free), C(vcl_disk_gb_total),
    C(vcl_disk_gb_used), C(vcl_disk_gb_free), C(vcl_lend_state) (C(lent), C(reclaiming), C(gone), or null for the
    lab's own slaves) and C(vcl_lend_until) (ISO 8601, or null).
  - Values from the database are data, never templates.
  - A row that would break plays or the lab is left out, with a warning naming the slave and the field. That is
    a name Ansible or this plugin already gives a meaning (C(localhost), C(all), a group), an address that is not
    one unicast IPv4 host, or, checked against the database's settings (C(vcl config show)), an address outside
    C(lab_subnet) or its network or broadcast address, inside C(vm_subnet), a gateway's or the master's address,
    or inside an address pool.
  - The config file name must end with C(vcl_slaves.yml) or C(vcl_slaves.yaml).
  - Needs the C(vcl_sched) Python package in the Python that runs Ansible
    (C(pip install) the VCL checkout, with its C(postgresql) extra for PostgreSQL).
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: Marks this file as a config file of this plugin.
    required: true
    choices: ["vcl.lab.vcl_slaves"]
  db_url:
    description:
      - SQLAlchemy URL of the lab database, for example C(sqlite:////var/lib/vcl/vcl.sqlite) or
        C(postgresql+psycopg://vcl@dbhost/vcl).
      - When neither this option nor E(VCL_DB_URL) is set, the C(vcl) command's default is used
        (C(/var/lib/vcl/vcl.sqlite) for root, else C(~/.local/share/vcl/vcl.sqlite)).
      - A missing SQLite file is an error; it is never created.
    type: str
    env:
      - name: VCL_DB_URL
"""

EXAMPLES = r"""
# inventory/<site>/vcl_slaves.yml
plugin: vcl.lab.vcl_slaves
db_url: sqlite:////var/lib/vcl/vcl.sqlite
keyed_groups:
  - key: vcl_cores_total | string
    prefix: cores
groups:
  vcl_has_room: vcl_cores_free >= 4 and vcl_status == 'up'
compose:
  vcl_ram_gb_free: vcl_ram_mb_free // 1024
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/cache/vcl/inventory
cache_timeout: 300
"""

import ipaddress
import sys

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

try:
    from vcl_sched import config as vcl_config
    from vcl_sched.errors import VclError
    from vcl_sched.inventory import LENT_GROUP, REGISTERED_GROUP, STATUS_GROUPS, fetch_slaves, row_problem, status_group
    from vcl_sched.registry import lab_network
except ImportError as err:
    VCL_IMPORT_ERROR: ImportError | None = err
else:
    VCL_IMPORT_ERROR = None

CONSTRUCTED = ("compose", "groups", "keyed_groups")


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "vcl.lab.vcl_slaves"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("vcl_slaves.yml", "vcl_slaves.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if VCL_IMPORT_ERROR is not None:
            raise AnsibleParserError(
                f"{path}: the vcl_slaves inventory needs the vcl_sched package in the Python that runs Ansible"
                f" ({sys.executable}): install the VCL checkout into it, e.g. `{sys.executable} -m pip install"
                f" /path/to/vcl` (add `[postgresql]` for PostgreSQL). Import failed: {VCL_IMPORT_ERROR}"
            )
        try:
            config = self._read_config_data(path)
        except AnsibleParserError:
            raise
        except AnsibleError as err:  # a wrongly typed option, a cache plugin that is not set up
            raise AnsibleParserError(f"{path}: {err}") from None
        self._check_config(path, config)
        url = self.get_option("db_url") or vcl_config.default_db_url()

        # The inventory plugin developer guide's cache flow. The key holds the URL (hashed), so
        # pointing db_url elsewhere never serves another database's slaves.
        cache_key = self.get_cache_key(f"{path}\0{url}")
        use_cache = self.get_option("cache")
        stored = None
        if use_cache and cache:
            stored = self._cache.get(cache_key)  # None when expired or never stored
        if not isinstance(stored, dict) or set(stored) != {"slaves", "network"}:  # never stored, or another form
            try:
                stored = {"slaves": fetch_slaves(url), "network": lab_network(url)}
            except VclError as err:
                raise AnsibleParserError(f"{path}: {err}") from None
            if use_cache:
                self._cache[cache_key] = stored
        try:
            network = vcl_config.settings_from_json(stored["network"])
        except VclError as err:
            raise AnsibleParserError(f"{path}: the lab database's settings: {err}") from None
        self._populate(stored["slaves"], network)

    def _check_config(self, path, config):
        """What ansible's option handling lets through: misspelt options and non-booleans (it
        reads any unknown word as false)."""
        definitions = self.option_definitions
        unknown = sorted(set(config) - set(definitions))
        if unknown:
            raise AnsibleParserError(
                f"{path}: unknown option(s) {', '.join(map(repr, unknown))};"
                f" known options: {', '.join(sorted(definitions))}"
            )
        for key, value in config.items():
            if definitions[key].get("type") in ("bool", "boolean"):
                try:
                    boolean(value, strict=True)
                except TypeError:
                    raise AnsibleParserError(f"{path}: {key}: {value!r} is not a boolean (use true or false)") from None

    def _populate(self, slaves, network):
        inventory = self.inventory
        for group in (REGISTERED_GROUP, LENT_GROUP, *STATUS_GROUPS):
            inventory.add_group(group)
        # The constructed features cost a template evaluation per host: only when configured.
        constructed = any(self.get_option(option) for option in CONSTRUCTED)
        for slave in slaves:
            name, hostvars = slave["name"], slave["vars"]
            problem = row_problem(slave) or self._address_problem(hostvars["ansible_host"], network)
            if problem:  # a row written around `vcl slave add` (SQL by hand, an older VCL): never an inventory host
                self.display.warning(f"vcl_slaves: the database's slave {name!r} is left out: {problem}")
                continue
            inventory.add_host(name, group=REGISTERED_GROUP)
            inventory.add_child(inventory.add_group(status_group(hostvars["vcl_status"])), name)
            if hostvars.get("vcl_lend_state") is not None:
                inventory.add_child(LENT_GROUP, name)
            for key, value in hostvars.items():
                inventory.set_variable(name, key, value)
            if constructed:
                self._construct(name)

    @staticmethod
    def _address_problem(address, network):
        """The address (one unicast IPv4 host, row_problem checked) against the lab's networks and pools."""
        problem = vcl_config.host_address_problem(ipaddress.IPv4Address(address), network)
        return f"address: {problem}" if problem else ""

    def _construct(self, name):
        strict = self.get_option("strict")
        # All of the host's variables (this source's, earlier sources', inventory_hostname).
        variables = self.inventory.get_host(name).get_vars()
        self._set_composite_vars(self.get_option("compose"), variables, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), variables, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, name, strict=strict)
