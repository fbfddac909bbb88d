"""The portal on the simulated lab (issue 14), end to end, in a real browser.

site.yml installs the portal on the master (the vcl_master role: TLS with the certificate it generated,
websockify for the consoles, noVNC). On a real lab the admin's controller is the master, so the portal's
database is the master's own: the test registers there the slaves and the image site.yml registered in the
controller's, then a teacher, a group and its students, with the master's `vcl` command.

Then, in Debian's chromium driven by Selenium from the machine that runs the lab (the lab's bridge reaches
the master): a student logs in over HTTPS, requests a VM; the launch (launch.yml, run by the portal through
ansible-runner on the master) shows its progress and the VM runs with its public address; the client reads
the guest's marker there through the master's DNAT; the console page's noVNC canvas connects to the VM's
console through websockify with the password the page handed to its owner; another student gets 403 on that
VM's page and console; the student stops the VM and nothing is left on the slave or the master. The client
machine reaches the portal over HTTPS and checks its certificate against the master's CA.

Screenshots of each page go to ``$VCL_SCREENSHOTS`` (default build/screenshots).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from vcl_lab.machines import ssh_argv
from vcl_lab.playbook import Recap, run_playbook
from vcl_lab.testing import REPO, Lab
from vcl_sched import service

pytestmark = [pytest.mark.lab, pytest.mark.browser]

MASTER_DB = "sqlite:////var/lib/vcl/vcl.sqlite"
PASSWORD = "Lab portal 14"
TEACHER, GROUP, STUDENT, OTHER = "tpo", "cs14", "sue", "sam"
SHOTS = Path(os.environ.get("VCL_SCREENSHOTS") or REPO / "build" / "screenshots")
CA_ON_MASTER = "/etc/vcl/portal/ca.crt"


def play(lab: Lab, db_url: str, name: str) -> Recap:
    env = {"VCL_DB_URL": db_url, "HOME": os.environ.get("HOME", "/root")}
    return run_playbook(lab.inventory, REPO / "site.yml" if name == "site" else f"vcl.lab.{name}", cwd=REPO, env=env)


def must(recap: Recap, what: str) -> Recap:
    assert recap.ok, f"{what} failed:\n{recap.summary()}\n{recap.stdout[-7000:]}\n{recap.stderr[-2000:]}"
    return recap


def on_master(lab: Lab, *command: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    state = lab.state()
    argv = ssh_argv(state, state.machines["master"], "env", f"VCL_DB_URL={MASTER_DB}", *command)
    return subprocess.run(argv, text=True, capture_output=True, timeout=timeout, input=stdin or "")


def master_vcl(lab: Lab, *args: str, stdin: str | None = None, ok_if: str = "") -> str:
    out = on_master(lab, "/usr/local/bin/vcl", *args, stdin=stdin)
    assert out.returncode == 0 or (ok_if and ok_if in out.stderr), f"vcl {' '.join(args)}: {out.stderr}"
    return out.stdout


def master_instances(lab: Lab) -> list[dict]:
    return json.loads(master_vcl(lab, "instances", "--all", "--json"))


@pytest.fixture(scope="module")
def portal_lab(lab, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('portal') / 'vcl.sqlite'}"
    must(play(lab, url, "site"), "site.yml")
    settings = service.get_settings(url)
    master_vcl(lab, "config", "set", f"image_store={settings.image_store}", f"disk_store={settings.disk_store}")
    for s in service.list_slaves(url):
        master_vcl(lab, "slave", "add", s["name"], f"--address={s['address']}", f"--cores={s['cores_total']}",
                   f"--ram-mb={s['ram_mb_total']}", f"--disk-gb={s['disk_gb_total']}", ok_if="already")
    for i in service.list_images(url):
        extra = [f"--{k}={i[k]}" for k in ("kernel", "ramdisk", "cmdline") if i[k]]
        master_vcl(lab, "image", "add", i["name"], f"--disk-file={i['disk_file']}", *extra,
                   f"--ram-mb={i['ram_mb']}", f"--disk-gb={i['disk_gb']}", ok_if="already")
    for name, role in ((TEACHER, "teacher"), (STUDENT, "student"), (OTHER, "student")):
        master_vcl(lab, "user", "add", name, f"--role={role}", "--password-stdin", stdin=PASSWORD + "\n",
                   ok_if="already")
    master_vcl(lab, "group", "add", GROUP, f"--owner={TEACHER}", ok_if="already")
    master_vcl(lab, "group", "add-member", GROUP, STUDENT, OTHER, ok_if="already")
    yield lab
    left = [str(i["id"]) for i in master_instances(lab) if i["state"] in ("pending", "running", "suspended")]
    for vid in left:  # whatever a failed test left running is stopped by the master, as the portal would
        on_master(lab, "env", "ANSIBLE_CONFIG=/etc/vcl/ansible.cfg", "ANSIBLE_COLLECTIONS_PATH=/opt/vcl/collections",
                  "/opt/vcl/venv/bin/ansible-playbook", "vcl.lab.stop", "-e", f"id={vid}", timeout=600)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from tests.portal.browser import chromium, missing

    if missing():
        pytest.fail(f"no browser for the portal's test: {missing()} (scripts/setup.sh installs"
                    " requirements/apt-base.txt)", pytrace=False)
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"lab-{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_for(driver, check, timeout: float, what: str):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = check(driver)
            if last:
                return last
        except Exception as err:  # the page is between loads: try again
            last = err
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r}); page:\n{driver.page_source[-3000:]}")


def log_in(driver, base: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "whoami"), 30, f"{name}'s login")


def status_of(driver, url: str) -> int:
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => done(r.status), e => done(-1));", url)


def test_a_student_requests_a_vm_reaches_its_console_and_stops_it_from_the_browser(portal_lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    lab = portal_lab
    master = lab.addresses["master"]
    base = f"https://{master}"

    # The client machine reaches the portal over HTTPS, the certificate checked against the master's CA.
    ca = on_master(lab, "cat", CA_ON_MASTER).stdout
    assert "BEGIN CERTIFICATE" in ca
    probe = ("import ssl,sys,urllib.request\nctx=ssl.create_default_context(cadata=sys.stdin.read())\n"
             "r=urllib.request.urlopen(sys.argv[1],context=ctx,timeout=20)\nprint(r.status, r.url)")
    state = lab.state()
    out = subprocess.run(ssh_argv(state, state.machines["client"], "python3", "-c", probe, f"{base}/login"),
                         text=True, capture_output=True, input=ca, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("200 "), out.stderr[-1500:]

    log_in(browser, base, STUDENT)
    shot(browser, "vms-empty")
    browser.get(f"{base}/request")
    Select(browser.find_element(By.ID, "owner")).select_by_visible_text(GROUP)
    for field, value in (("cores", "1"), ("ram_mb", "128"), ("hours", "2")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    shot(browser, "request")
    started = time.monotonic()
    browser.find_element(By.ID, "submit-request").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "job-state"), 30, "the launch's progress page")
    shot(browser, "launch-progress")
    assert "The scheduler placed VM" in browser.find_element(By.ID, "answer").text
    state_el = wait_for(browser, lambda d: d.find_element(By.ID, "job-state").get_attribute("data-state")
                        in ("ok", "failed") and d.find_element(By.ID, "job-state"), 600, "the launch")
    launch_seconds = time.monotonic() - started
    shot(browser, "launch-done")
    assert state_el.get_attribute("data-state") == "ok", browser.find_element(By.TAG_NAME, "main").text
    browser.find_element(By.ID, "job-back").click()
    vm = next(i for i in master_instances(lab) if i["state"] == "running")
    vid = vm["id"]
    assert browser.find_element(By.ID, "state").text == "running"
    assert browser.find_element(By.ID, "address").text == vm["public_ip"]
    shot(browser, "vm")
    assert lab.marker(vm["public_ip"]).startswith("vcl-guest ready")

    # The console: noVNC's canvas connects through websockify; the password is in the page, never in a URL.
    browser.find_element(By.ID, "open-console").click()
    assert "password" not in browser.current_url
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.vnc") == "connected", 90,
             "the console's connection")
    wait_for(browser, lambda d: d.execute_script(
        "const c = document.querySelector('#screen canvas'); return c && c.width > 100 && c.height > 50"), 30,
        "the console's canvas")
    time.sleep(2)
    shot(browser, "console")
    portal_log = on_master(lab, "sh", "-c", "journalctl --no-pager -u vcl-portal -u vcl-console 2>/dev/null;"
                           " cat /var/log/vcl/portal.log /var/log/vcl/console.log 2>/dev/null").stdout
    secure_xml = lab.ssh(vm["slave"], "virsh", "dumpxml", "--security-info", f"vcl-{vid}").stdout
    password = secure_xml.split("passwd='", 1)[1].split("'", 1)[0]
    assert password and password not in portal_log

    # Another student: 403 on the VM's page and on its console.
    log_in(browser, base, OTHER)
    assert status_of(browser, f"{base}/vms/{vid}") == 403
    assert status_of(browser, f"{base}/vms/{vid}/console") == 403
    browser.get(f"{base}/vms/{vid}/console")
    shot(browser, "console-403")

    # The owner stops it: nothing is left on the slave or the master.
    log_in(browser, base, STUDENT)
    browser.get(f"{base}/vms/{vid}")
    browser.find_element(By.ID, "stop").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "job-state").get_attribute("data-state") in ("ok", "failed"),
             300, "the stop")
    shot(browser, "stop-done")
    assert browser.find_element(By.ID, "job-state").get_attribute("data-state") == "ok"
    row = next(i for i in master_instances(lab) if i["id"] == vid)
    assert row["state"] == "stopped"
    assert lab.ssh(vm["slave"], "virsh", "domstate", f"vcl-{vid}").returncode != 0
    assert on_master(lab, "ls", "/root/.vcl/consoles").stdout.strip() == ""
    print(f"\nportal on the lab: request to running VM in {launch_seconds:.1f} s; screenshots in {SHOTS}")
