"""The Debian package: `./build.sh deb` in a build tree of its own, then
what dpkg-deb says it holds (files, owners, conffiles, Depends, maintainer
scripts), what lintian says of it, and the package at work: extracted into
a throwaway root, its brume checks and runs its installed config, and its
postinst enables the unit there (DPKG_ROOT) without starting anything.

Skipped (exit 77) only where dpkg-deb itself is missing: not a Debian
system. Python's standard library only."""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("BRUME_SRC", os.path.dirname(os.path.dirname(HERE)))
BUILD = os.environ.get("BRUME_DEB_BUILD", os.path.join(SRC, "build-deb"))
PING = os.path.join(SRC, "tests", "fixtures", "mist", "alarms--rogue-ap-const-alarm-defs.json")
SECRET = {"MIST_WEBHOOK_SECRET": "package-test-secret"}

# What lintian may say of the package at warning level or above, each with
# why it stays. Errors are never accepted. The list is empty: lintian
# (2.116, Debian 12) finds nothing at those levels. Its two info tags are
# left as they are: binary-has-unneeded-section (.comment; cpack strips
# with plain strip) and package-supports-alternative-init-but-no-init.d-script
# (brume runs under systemd only: its sandboxing is the unit's).
LINTIAN_ACCEPTED = {}


def run(*args, env=None, check=True, timeout=600):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    if check and r.returncode != 0:
        raise AssertionError("%s exited %d:\n%s%s" % (" ".join(args), r.returncode, r.stdout,
                                                     r.stderr))
    return r


def project_version():
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(brume VERSION (\S+)", f.read()).group(1)


class Package(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.version = project_version()
        cls.arch = run("dpkg", "--print-architecture").stdout.strip()
        out = run(os.path.join(SRC, "build.sh"), "deb", BUILD).stdout
        cls.deb = os.path.join(BUILD, "brume_%s_%s.deb" % (cls.version, cls.arch))
        assert out.strip().splitlines()[-1] == cls.deb, out
        cls.root = tempfile.mkdtemp(prefix="brume-deb-root-")
        run("dpkg-deb", "-x", cls.deb, cls.root)
        cls.control = tempfile.mkdtemp(prefix="brume-deb-control-")
        run("dpkg-deb", "-e", cls.deb, cls.control)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        shutil.rmtree(cls.control, ignore_errors=True)

    def field(self, name):
        return run("dpkg-deb", "-f", self.deb, name).stdout.strip()

    def shipped(self, folder):
        """The files of a folder of the source, relative to it."""
        base = os.path.join(SRC, folder)
        return sorted(os.path.relpath(p, base) for p in glob.glob(base + "/**", recursive=True)
                      if os.path.isfile(p))

    def test_control(self):
        self.assertEqual(self.field("Package"), "brume")
        self.assertEqual(self.field("Version"), self.version)
        self.assertEqual(self.field("Architecture"), self.arch)
        self.assertEqual(self.field("Section"), "net")
        # Depends names the package of every library the binary links.
        depends = {d.split()[0] for d in self.field("Depends").split(", ")}
        brume = os.path.join(self.root, "usr/bin/brume")
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+)\]",
                            run("readelf", "-d", brume).stdout)
        linked = dict(re.findall(r"^\s*(\S+) => (/\S+)", run("ldd", brume).stdout, re.M))
        self.assertGreater(len(needed), 5)
        for lib in needed:
            path = linked[lib]
            # dpkg knows a library by the path its package put it at, /lib or /usr/lib.
            alt = path[4:] if path.startswith("/usr/") else "/usr" + path
            r = run("dpkg", "-S", path, check=False)
            r = r if r.returncode == 0 else run("dpkg", "-S", alt)
            self.assertIn(r.stdout.split(":")[0], depends, lib)
        for pkg in ("liblua5.4-0", "libevent-core-2.1-7", "libssl3", "libsqlite3-0", "libcurl4",
                    "libhiredis0.14", "liblz4-1"):
            self.assertIn(pkg, depends)

    def test_contents(self):
        listing = run("dpkg-deb", "--contents", self.deb).stdout.splitlines()
        entries = {}
        for line in listing:
            mode, owner, _size, _date, _time, path = line.split(None, 5)
            entries[path[1:]] = (mode, owner)
        files = {p for p, (mode, _) in entries.items() if not mode.startswith("d")}
        rules = self.shipped("rules")
        want = {"/usr/bin/brume", "/etc/brume/brume.lua", "/lib/systemd/system/brume.service",
                "/usr/share/doc/brume/README.md", "/usr/share/doc/brume/copyright",
                "/usr/share/doc/brume/changelog.gz", "/usr/share/man/man1/brume.1.gz"}
        want |= {"/etc/brume/rules/" + r for r in rules}
        want |= {"/usr/share/brume/rules/" + r for r in rules}
        want |= {"/usr/share/brume/recipes/" + r for r in self.shipped("examples/recipes")}
        want |= {"/usr/share/brume/deploy/" + r for r in self.shipped("deploy")}
        self.assertIn("/usr/share/brume/deploy/brume@.service", want)
        want |= {"/usr/share/doc/brume/examples/" + os.path.basename(p)
                 for p in glob.glob(os.path.join(SRC, "examples", "*.lua"))
                 if not p.endswith("/brume.lua")}
        self.assertEqual(files, want)
        self.assertTrue(rules)
        for path, (mode, owner) in entries.items():
            self.assertEqual((path, owner), (path, "root/root"))
            if mode.startswith("d"):
                self.assertEqual((path, mode), (path, "drwxr-xr-x"))
            else:
                self.assertEqual((path, mode),
                                 (path, "-rwxr-xr-x" if path == "/usr/bin/brume" else "-rw-r--r--"))
        # Stripped: no symbols to look up in the installed binary.
        self.assertNotIn(".symtab", run("readelf", "-S", os.path.join(self.root,
                                                                      "usr/bin/brume")).stdout)

    def test_conffiles_and_scripts(self):
        with open(os.path.join(self.control, "conffiles")) as f:
            conffiles = f.read().split()
        self.assertEqual(sorted(conffiles), sorted(
            ["/etc/brume/brume.lua"] + ["/etc/brume/rules/" + r for r in self.shipped("rules")]))
        for script in ("postinst", "prerm", "postrm"):
            path = os.path.join(self.control, script)
            self.assertTrue(os.access(path, os.X_OK), script)
            run("sh", "-n", path)
        # Enable, never start: no command of theirs starts the unit.
        for script in ("postinst", "prerm", "postrm"):
            with open(os.path.join(self.control, script)) as f:
                code = "".join(line for line in f if not line.lstrip().startswith("#"))
            self.assertNotRegex(code, r"deb-systemd-invoke (re)?start|systemctl.* start", script)

    def test_lintian(self):
        if not shutil.which("lintian"):
            self.fail("lintian is missing: ./build.sh test installs it")
        r = run("lintian", "--tag-display-limit", "0", self.deb, check=False)
        said = re.findall(r"^([EW]): brume(?: [a-z]+)?: (\S+)(.*)$", r.stdout, re.M)
        errors = ["%s%s" % (tag, rest) for level, tag, rest in said if level == "E"]
        warnings = ["%s%s" % (tag, rest) for level, tag, rest in said
                    if level == "W" and tag not in LINTIAN_ACCEPTED]
        self.assertEqual((errors, warnings), ([], []), r.stdout)
        self.assertIn(r.returncode, (0, 1), r.stderr)  # 1 is lintian's "something was said"
        said_tags = {tag for _, tag, _ in said}
        stale = [t for t in LINTIAN_ACCEPTED if t not in said_tags]
        self.assertEqual(stale, [], "lintian no longer says these: drop them from the list")

    def test_installed_config_works_as_installed(self):
        brume = os.path.join(self.root, "usr/bin/brume")
        config = os.path.join(self.root, "etc/brume/brume.lua")
        with open(config) as f:
            text = f.read()
        self.assertIn('data_dir = "/var/lib/brume"', text)
        self.assertNotIn('"../', text)  # nothing points out of /etc/brume but absolute paths
        with open(os.path.join(self.root, "lib/systemd/system/brume.service")) as f:
            unit = f.read()
        self.assertIn("\nExecStart=/usr/bin/brume run -c /etc/brume/brume.lua\n", unit)
        self.assertIn("\nStateDirectory=brume\n", unit)  # /var/lib/brume, the data_dir
        self.assertIn("\nEnvironmentFile=-/etc/brume/env\n", unit)
        self.assertIn("\nDocumentation=file:///usr/share/doc/brume/README.md\n", unit)
        self.assertNotIn("/usr/local", unit)

        r = run(brume, "version")
        self.assertTrue(r.stdout.startswith("brume %s " % self.version), r.stdout)
        r = run(brume, "check", "-c", config, env=SECRET)
        nrules = len([r for r in self.shipped("rules") if r.endswith(".lua")])
        self.assertEqual(r.stdout, "ok: %s: 1 source, 1 target, %d rule%s\n"
                         % (config, nrules, "" if nrules == 1 else "s"))
        # Without the secret (no /etc/brume/env yet) it says which is missing.
        env = dict(os.environ)
        env.pop("MIST_WEBHOOK_SECRET", None)
        r = subprocess.run([brume, "check", "-c", config], capture_output=True, text=True,
                           env=env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("environment variable MIST_WEBHOOK_SECRET is not set", r.stderr)
        # The installed rules run: the rogue-AP alarm makes its message.
        r = run(brume, "test", "-c", config, PING, env=SECRET)
        self.assertIn('"title":"Rogue AP detected"', r.stdout)

    def test_postinst_enables_and_purge_forgets(self):
        root = tempfile.mkdtemp(prefix="brume-deb-dpkgroot-")
        try:
            run("dpkg-deb", "-x", self.deb, root)
            # As dpkg runs it (deb-systemd-helper wants to see that), on ROOT.
            env = {"DPKG_ROOT": root, "DPKG_MAINTSCRIPT_PACKAGE": "brume",
                   "DPKG_MAINTSCRIPT_NAME": "postinst"}
            run(os.path.join(self.control, "postinst"), "configure", env=env)
            link = os.path.join(root, "etc/systemd/system/multi-user.target.wants/brume.service")
            self.assertEqual(os.readlink(link), "/lib/systemd/system/brume.service")
            # An upgrade keeps the administrator's choice: disabled stays disabled.
            os.unlink(link)
            run("deb-systemd-helper", "disable", "brume.service", env=env)
            run(os.path.join(self.control, "postinst"), "configure", self.version, env=env)
            self.assertFalse(os.path.lexists(link))
            run(os.path.join(self.control, "postinst"), "configure", env=env)
            os.makedirs(os.path.join(root, "var/lib/private/brume"))
            os.symlink("private/brume", os.path.join(root, "var/lib/brume"))
            with open(os.path.join(root, "etc/brume/env"), "w") as f:
                f.write("MIST_WEBHOOK_SECRET=x\n")
            run(os.path.join(self.control, "postrm"), "purge",
                env=dict(env, DPKG_MAINTSCRIPT_NAME="postrm"))
            for gone in ("var/lib/brume", "var/lib/private/brume", "etc/brume/env",
                         "etc/systemd/system/multi-user.target.wants/brume.service"):
                self.assertFalse(os.path.lexists(os.path.join(root, gone)), gone)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_apt_can_install_it(self):
        # apt resolves the Depends from Debian 12's archive (a simulation:
        # nothing is installed).
        r = run("apt-get", "install", "--simulate", "--no-install-recommends", self.deb)
        self.assertRegex(r.stdout, r"(?m)^Inst brume (\[\S+\] )?\(%s " % re.escape(self.version))


if __name__ == "__main__":
    if not shutil.which("dpkg-deb"):
        print("SKIP: dpkg-deb is missing: this is not a Debian system, there is no package to"
              " build")
        sys.exit(77)
    unittest.main()
