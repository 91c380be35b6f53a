#!/usr/bin/env python3
"""Security integration tests (docs/threat-model.md) with real FUSE mounts.

  python3 tests/integration/test_security.py --build BUILD [--fixtures DIR] [-k SUBSTR] [-v]

What test_mount.py already covers is not repeated here (EROFS for every write, the modes of
the block files and the root, the name mapping of real idstrs, crafted broken images); this
suite adds:
  * who can read: a root mount without allow_other refuses another user (EACCES), one with
    -o allow_other lets them read and nothing else; a normal user mounts an image they can
    read on a directory they own (through the setuid fusermount3) and unmounts it; allow_other
    without user_allow_other is refused;
  * modes and owners of every entry of a libvirt mount, owned by the image's owner; -o rw
    (and friends) still give a read-only mount;
  * hostile RAMBlock idstrs in a real image (re-serialized with test_mount.rewrite_image):
    "..", "../../x", "/etc/passwd", NUL, newline, 255-byte names, invalid UTF-8, "/": every
    entry stays inside the mount, nothing is created outside, the description and
    mramfs-inspect stay well-formed;
  * hostile libvirt domain XML (max-ram-below-4g= games, vendors, a text with no NUL that
    fills data_len, deep nesting, invalid UTF-8): the mount works and the daemon stays up;
  * running on evidence: the daemon holds the image read-only, leaves its times alone and
    writes nothing for a mapped-ram image.

The other user is `nobody` (uid 65534), reached with setpriv(1); tests that need it are
skipped (with the reason) when the suite does not run as root or setpriv is missing. Where
/dev/fuse is 0600 (a container), nobody's own mount runs in a private mount namespace over a
0666 node of the same device (unshare(1)), so nothing outside the test changes.
"""
import copy
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refreader  # noqa: E402
import runner  # noqa: E402
import test_mount as tm  # noqa: E402
from test_mount import CFG, MiB, Mount, mountinfo_entry, run  # noqa: E402

BASE = "q35-512M-S"                       # mapped-ram, stream at offset 0
LIBVIRT = "q35-512M-S-libvirt1M"          # libvirt header, sparse format
NOBODY = 65534

# A probe run as the other user: try each operation, print {name: "ok" | errno name}.
PROBE = r"""
import errno, json, os, sys
mnt, out = sys.argv[1], {}
def t(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
def read():
    with open(os.path.join(mnt, "pc.ram"), "rb") as f:
        f.read(4096)
t("stat", lambda: os.stat(mnt))
t("listdir", lambda: os.listdir(mnt))
t("read", read)
t("open_write", lambda: os.close(os.open(os.path.join(mnt, "pc.ram"), os.O_WRONLY)))
t("create", lambda: os.close(os.open(os.path.join(mnt, "new"), os.O_WRONLY | os.O_CREAT, 0o644)))
t("mkdir", lambda: os.mkdir(os.path.join(mnt, "d")))
t("unlink", lambda: os.unlink(os.path.join(mnt, "pc.ram")))
t("chmod", lambda: os.chmod(os.path.join(mnt, "pc.ram"), 0o666))
print(json.dumps(out))
"""


# Run as root (in a private mount namespace when argv[6] is "private-node"): nobody mounts
# an image with mramfs, probes it, unmounts it with fusermount3; prints a JSON report.
USER_DRIVER = ("PROBE = %r\n" % PROBE) + r"""
import errno, json, os, subprocess, sys, time
scenario, mramfs, img, mnt, node = sys.argv[1:6]
private = len(sys.argv) > 6
NOBODY = 65534
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
def as_nobody(argv):
    return subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                           "--clear-groups", "--"] + argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30, env=ENV)
def mountinfo():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == mnt:
                sep = parts.index("-")
                return {"mount_options": parts[5], "fstype": parts[sep + 1],
                        "super_options": parts[sep + 3]}
    return None
def daemons():
    out = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if mnt.encode() in f.read() and int(d) != os.getpid():
                    out.append(d)
        except (OSError, ValueError):
            pass
    return out
def daemon_gone():
    for _ in range(100):
        if not daemons():
            return True
        time.sleep(0.05)
    return False
rep = {}
if private:
    os.mknod(node, 0o20666, os.makedev(10, 229))
    os.chmod(node, 0o666)
    subprocess.run(["mount", "--bind", node, "/dev/fuse"], check=True)
try:
    argv = [mramfs, img, mnt] + (["-o", "allow_other"] if scenario == "allow_other" else [])
    r = as_nobody(argv)
    rep["mount_rc"], rep["mount_err"] = r.returncode, r.stderr.decode(errors="replace")
    rep["mountinfo"] = mountinfo()
    if scenario == "mount" and rep["mountinfo"]:
        r = as_nobody([sys.executable, "-c", PROBE, mnt])
        rep["probe"] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr.decode()}
        r = as_nobody([sys.executable, "-c", "import os,sys; st = os.stat(sys.argv[1]); "
                       "print(st.st_uid, st.st_mode)", os.path.join(mnt, "pc.ram")])
        rep["pc_ram"] = [int(x) for x in r.stdout.split()]
        try:
            os.listdir(mnt)
            rep["root_listdir"] = "ok"
        except OSError as e:
            rep["root_listdir"] = errno.errorcode[e.errno]
        r = as_nobody(["fusermount3", "-u", mnt])
        rep["umount_rc"], rep["umount_err"] = r.returncode, r.stderr.decode(errors="replace")
        rep["mountinfo_after"] = mountinfo()
    rep["daemon_gone"] = daemon_gone()
finally:
    if mountinfo():
        subprocess.run(["umount", "-l", mnt])
    if private:
        subprocess.run(["umount", "/dev/fuse"])
print(json.dumps(rep))
"""


def fixture(name):
    p = tm.fixture_path(name, ".img")
    return p if os.path.exists(p) else None


def can_switch_user():
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def as_user(argv, uid=NOBODY, timeout=30, env=None):
    """Run @argv as @uid (its own group, no supplementary groups, no capabilities)."""
    e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    e.update(env or {})
    return run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups", "--"]
               + argv, timeout=timeout, env=e)


def probe(mnt, uid=NOBODY):
    r = as_user([sys.executable, "-c", PROBE, mnt], uid)
    if r.returncode != 0:
        raise AssertionError("probe failed: %s" % r.stderr.decode(errors="replace"))
    return json.loads(r.stdout)


def unmount_any(mnt):
    """Unmount @mnt even when root cannot stat it (another user's mount without allow_other,
    where os.path.ismount says False): go by /proc/self/mountinfo."""
    for argv in (["fusermount3", "-u", mnt], ["umount", mnt], ["umount", "-l", mnt]):
        if mountinfo_entry(mnt) is None:
            return True
        run(argv, timeout=10)
    return mountinfo_entry(mnt) is None


def snapshot(top, skip):
    """{relative path: (mode, size, mtime_ns)} of everything under @top but @skip."""
    out = {}
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if os.path.join(d, x) != skip]
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def path_bytes(path, mnt):
    """The bytes of a `path` of .mramfs.json: the UTF-8 of the string, or for a name that is
    not valid UTF-8 one byte per character (docs/file-tree.md §4)."""
    raw = path.encode("utf-8", "surrogateescape")
    if not os.path.lexists(os.path.join(mnt, raw)) and max(map(ord, path)) < 256:
        return path.encode("latin-1")
    return raw


class Renamed:
    """refreader.Image with another block list (for test_mount.rewrite_image)."""

    def __init__(self, ref, blocks):
        self._ref = ref
        self.blocks = blocks

    def __getattr__(self, name):
        return getattr(self._ref, name)


# ---------------------------------------------------------------------------


class AccessTests(unittest.TestCase):
    """Who can read a mount (docs/file-tree.md §6, docs/threat-model.md §6)."""

    def setUp(self):
        if not can_switch_user():
            self.skipTest("needs root and setpriv to act as another user")
        self.img = fixture(BASE)
        if self.img is None:
            self.skipTest("fixture %s missing" % BASE)
        self.tmp = tempfile.mkdtemp(prefix="mramfs-sec-")
        os.chmod(self.tmp, 0o755)
        self.mounts = []

    def tearDown(self):
        for mnt in self.mounts:
            unmount_any(mnt)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def root_mount(self, options=""):
        m = Mount(self.img, options=options, tag="sec")
        self.mounts.append(m.mnt)
        m.mount()
        self.addCleanup(m.cleanup)
        return m

    def test_root_mount_refuses_other_user(self):
        m = self.root_mount()
        got = probe(m.mnt)
        for op in ("stat", "listdir", "read"):
            self.assertEqual(got[op], "EACCES", "%s by nobody without allow_other: %r" % (op, got))
        os.listdir(m.mnt)            # the owner still can

    def test_allow_other_lets_others_read_only(self):
        m = self.root_mount("allow_other")
        got = probe(m.mnt)
        self.assertEqual(got["stat"], "ok", got)
        self.assertEqual(got["listdir"], "ok", got)
        self.assertEqual(got["read"], "ok", got)
        for op in ("open_write", "create", "mkdir", "unlink"):
            self.assertEqual(got[op], "EROFS", "%s by nobody with allow_other: %r" % (op, got))
        # chmod of a root-owned file by another user: EPERM or EROFS, never done
        self.assertIn(got["chmod"], ("EPERM", "EROFS"), got)
        self.assertEqual(stat.S_IMODE(os.stat(m.path("pc.ram")).st_mode), 0o444)

    def user_image_and_dir(self):
        """A sparse copy of the image and a mount point, both owned by nobody, the image
        readable by nobody only."""
        img = os.path.join(self.tmp, "vm.img")
        tm.sparse_copy(self.img, img)
        os.chown(img, NOBODY, NOBODY)
        os.chmod(img, 0o400)
        mnt = os.path.join(self.tmp, "mnt")
        os.mkdir(mnt, 0o755)
        os.chown(mnt, NOBODY, NOBODY)
        self.mounts.append(mnt)
        return img, mnt

    def user_scenario(self, scenario):
        """Run USER_DRIVER for @scenario; returns its JSON report. Where /dev/fuse is not
        open to everyone (a container's 0600 node; Debian's udev rule makes it 0666), the
        driver runs in a private mount namespace over a 0666 node of the same device, so
        nothing outside the test changes."""
        if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
            self.skipTest("no /dev/fuse or fusermount3")
        fusermount = shutil.which("fusermount3")
        if not os.stat(fusermount).st_mode & stat.S_ISUID:
            self.skipTest("fusermount3 is not setuid root: normal users cannot mount")
        img, mnt = self.user_image_and_dir()
        argv = [sys.executable, "-c", USER_DRIVER, scenario, tm.mramfs_bin(), img, mnt,
                os.path.join(self.tmp, "fuse-node")]
        if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:
            if shutil.which("unshare") is None:
                self.skipTest("/dev/fuse is 0600 and unshare(1) is missing")
            argv = ["unshare", "-m", "--propagation", "private"] + argv + ["private-node"]
        r = run(argv, timeout=60)
        if r.returncode != 0:
            raise AssertionError("driver failed: %s" % r.stderr.decode(errors="replace"))
        return json.loads(r.stdout)

    def test_user_mounts_own_image(self):
        got = self.user_scenario("mount")
        self.assertEqual(got["mount_rc"], 0, "mount as nobody: %s" % got["mount_err"])
        info = got["mountinfo"]
        self.assertIsNotNone(info, "no mount after mramfs returned 0")
        self.assertEqual(info["fstype"], "fuse.mramfs")
        self.assertIn("ro", info["mount_options"].split(","))
        self.assertIn("user_id=%d" % NOBODY, info["super_options"])
        self.assertNotIn("allow_other", info["super_options"])
        p = got["probe"]
        self.assertEqual((p["listdir"], p["read"]), ("ok", "ok"), p)
        for op in ("open_write", "create", "mkdir", "unlink"):
            self.assertEqual(p[op], "EROFS", "%s by the mounting user: %r" % (op, p))
        # the files belong to the image's owner, and root is kept out too
        self.assertEqual(got["pc_ram"], [NOBODY, 0o100444])
        self.assertEqual(got["root_listdir"], "EACCES", "root in nobody's mount")
        self.assertEqual(got["umount_rc"], 0, "fusermount3 -u as nobody: %s" % got["umount_err"])
        self.assertIsNone(got["mountinfo_after"], "still mounted after fusermount3 -u")
        self.assertTrue(got["daemon_gone"], "daemon alive after fusermount3 -u")

    def test_user_allow_other_needs_fuse_conf(self):
        with open("/etc/fuse.conf") as f:
            if any(line.strip() == "user_allow_other" for line in f):
                self.skipTest("/etc/fuse.conf has user_allow_other: the refusal cannot be seen")
        got = self.user_scenario("allow_other")
        self.assertNotEqual(got["mount_rc"], 0, "allow_other as nobody was accepted")
        self.assertIn("user_allow_other", got["mount_err"])
        self.assertIsNone(got["mountinfo"], "a mount was left behind")
        self.assertTrue(got["daemon_gone"], "a daemon was left behind")

    def test_user_cannot_mount_unreadable_image(self):
        mnt = os.path.join(self.tmp, "mnt2")
        os.mkdir(mnt, 0o755)
        os.chown(mnt, NOBODY, NOBODY)
        self.mounts.append(mnt)
        img = os.path.join(self.tmp, "root-only.img")
        tm.sparse_copy(self.img, img)
        os.chmod(img, 0o600)
        r = as_user([tm.mramfs_bin(), img, mnt])
        self.assertEqual(r.returncode, 1, r.stderr.decode())
        self.assertIn("cannot open", r.stderr.decode())
        self.assertIsNone(mountinfo_entry(mnt))


class ModeTests(unittest.TestCase):
    """Every entry (including .libvirt/) is r--r--r-- or r-xr-xr-x, owned by the image's
    owner; statfs says read-only; no option makes the mount writable."""

    def test_modes_and_owner_of_every_entry(self):
        src = fixture(LIBVIRT)
        if src is None:
            self.skipTest("fixture %s missing" % LIBVIRT)
        tmp = tempfile.mkdtemp(prefix="mramfs-sec-")
        self.addCleanup(shutil.rmtree, tmp, True)
        img = os.path.join(tmp, "vm.img")
        tm.sparse_copy(src, img)
        os.chown(img, 4321, 4322)     # owner and group show through, whoever mounts
        m = Mount(img, tag="sec").mount()
        self.addCleanup(m.cleanup)
        seen = 0
        for d, dirs, files in os.walk(m.mnt):
            for n in [d] + [os.path.join(d, f) for f in files]:
                st = os.lstat(n)
                want = 0o555 if stat.S_ISDIR(st.st_mode) else 0o444
                self.assertTrue(stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), n)
                self.assertEqual(stat.S_IMODE(st.st_mode), want, n)
                self.assertEqual((st.st_uid, st.st_gid), (4321, 4322), n)
                seen += 1
        self.assertTrue(os.path.isdir(m.path(".libvirt")))
        self.assertGreater(seen, 10)
        self.assertTrue(os.statvfs(m.mnt).f_flag & os.ST_RDONLY)


    def test_rw_options_cannot_make_it_writable(self):
        src = fixture(BASE)
        if src is None:
            self.skipTest("fixture %s missing" % BASE)
        for opts in ("rw", "rw,dev,suid,exec", "remount,rw"):
            with self.subTest(options=opts):
                m = Mount(src, options=opts, tag="sec")
                r = run(m.argv(), timeout=tm.MOUNT_TIMEOUT)
                try:
                    if r.returncode != 0:          # refusing the option is fine too
                        self.assertIsNone(mountinfo_entry(m.mnt), opts)
                        continue
                    info = mountinfo_entry(m.mnt)
                    self.assertIn("ro", info["mount_options"].split(","), (opts, info))
                    with self.assertRaises(OSError) as cm:
                        os.close(os.open(m.path("pc.ram"), os.O_WRONLY))
                    self.assertEqual(cm.exception.errno, errno.EROFS, opts)
                finally:
                    m.cleanup()


# ---------------------------------------------------------------------------

# Hostile idstrs (each at most 255 bytes), and a fragment that must never start a line of
# mramfs-inspect's output (a newline in an idstr must not forge a line).
HOSTILE = [
    b"..",
    b".",
    b"../../x",
    b"../../../../../../../../../../tmp/mramfs-escape",
    b"/etc/passwd",
    b"a/../../b",
    b"./..//.../x",
    b"x\x00y",
    b"\x00",
    b"line1\nINJECTED: forged line",
    b"\r\x1b[2J\x7f",
    b"../" * 85,                          # 255 bytes, all ".." components
    b"%" * 255,                           # encodes to 765 bytes: cut with a hash
    b"a" * 255,
    b"\xff\xfe/\xc3(",                     # invalid UTF-8
    b"/",
    b"//",
    b".mramfs.json",
    b".libvirt/domain.xml",
    b"vmdesc.json",
    b"d/" + b"e" * 253,
]


class HostileNameTests(unittest.TestCase):
    """Real images re-serialized with hostile RAMBlock idstrs (docs/file-tree.md §2.4)."""

    @classmethod
    def setUpClass(cls):
        cls.src = fixture(BASE)
        cls.tmp = tempfile.mkdtemp(prefix="mramfs-secnames-")
        cls.img = None
        if cls.src is None:
            return
        ref = refreader.Image(cls.src)
        try:
            blocks = []
            for i, idstr in enumerate(HOSTILE):
                b = copy.copy(ref.blocks[1 + i % (len(ref.blocks) - 1)])   # not pc.ram: small
                b.idstr = idstr
                blocks.append(b)
            blocks.insert(0, ref.blocks[0])
            cls.img = os.path.join(cls.tmp, "hostile.img")
            tm.rewrite_image(Renamed(ref, blocks), cls.img)
            cls.blocks = blocks
        finally:
            ref.close()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        if self.img is None:
            self.skipTest("fixture %s missing" % BASE)

    def test_every_entry_inside_mount_nothing_outside(self):
        base = tempfile.mkdtemp(prefix="mramfs-secjail-")
        self.addCleanup(shutil.rmtree, base, True)
        for p in ("a/b", "a/x", "sibling"):
            os.makedirs(os.path.join(base, p))
        mnt = os.path.join(base, "a", "b", "mnt")
        os.mkdir(mnt)
        outside = ["/x", "/b", "/etc/passwd~2", "/tmp/mramfs-escape", "/tmp/x",
                   os.path.join(base, "a", "x", "x"), os.path.join(base, "x")]
        before = snapshot(base, mnt)
        before_out = {p: os.path.lexists(p) for p in outside}
        m = Mount(self.img, tag="sec")
        m.mnt, spare = mnt, m.mnt
        os.rmdir(spare)
        m.mount()
        try:
            real = os.fsencode(os.path.realpath(mnt))
            names = 0
            for d, dirs, files in os.walk(os.fsencode(mnt)):
                for n in dirs + files:
                    names += 1
                    self.assertNotIn(n, (b".", b".."), d)
                    self.assertNotIn(b"/", n)
                    self.assertNotIn(b"\0", n)
                    self.assertLessEqual(len(n), 255, n)
                    p = os.path.realpath(os.path.join(d, n))
                    self.assertTrue(p.startswith(real + b"/"), p)
            self.assertGreaterEqual(names, len(HOSTILE))
            with open(m.path(".mramfs.json"), "rb") as f:
                desc = json.loads(f.read().decode("utf-8"))
            self.assertEqual(len(desc["blocks"]), len(self.blocks))
            paths = set()
            for b, want in zip(desc["blocks"], self.blocks):
                raw = path_bytes(b["path"], os.fsencode(mnt))
                full = os.path.normpath(os.path.join(os.fsencode(mnt), raw))
                self.assertTrue(full.startswith(os.fsencode(mnt) + b"/"), b["path"])
                st = os.stat(full)
                self.assertTrue(stat.S_ISREG(st.st_mode), b["path"])
                self.assertEqual(st.st_size, want.used_length, b["path"])
                paths.add(raw)
                fd = os.open(full, os.O_RDONLY)
                try:
                    self.assertEqual(len(os.pread(fd, 4096, 0)), 4096, b["path"])
                finally:
                    os.close(fd)
            self.assertEqual(len(paths), len(self.blocks), "two blocks share a path")
            for own in (".mramfs.json", "vmdesc.json"):
                self.assertNotIn(os.fsencode(own), paths)
            self.assertTrue(m.pid is None or tm.pid_alive(m.pid), "daemon died")
            # (compared while mounted: cleanup removes the mount point from a/b)
            self.assertEqual(snapshot(base, mnt), before, "something changed outside the mount")
            self.assertEqual({p: os.path.lexists(p) for p in outside}, before_out)
            self.assertEqual(m.unmount().returncode, 0)
        finally:
            m.cleanup()
        self.assertFalse(os.path.ismount(mnt))

    def test_inspect_output_well_formed(self):
        r = run([tm.inspect_bin(), self.img, "--json"], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        j = json.loads(r.stdout.decode("utf-8"))
        self.assertIn("blocks", j)
        r = run([tm.inspect_bin(), self.img], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        for line in r.stdout.split(b"\n"):
            self.assertFalse(line.lstrip().startswith(b"INJECTED"),
                             "an idstr's newline forged a line: %r" % line)
            self.assertNotIn(b"\x1b", line, "raw escape sequence in the output")
            self.assertNotIn(b"\0", line)


# ---------------------------------------------------------------------------

class HostileXmlTests(unittest.TestCase):
    """A libvirt image whose domain XML is rewritten in place (same data_len)."""

    @classmethod
    def setUpClass(cls):
        cls.src = fixture(LIBVIRT)
        cls.tmp = tempfile.mkdtemp(prefix="mramfs-secxml-")
        cls.data_len = None
        if cls.src is not None:
            ref = refreader.Image(cls.src)
            try:
                if ref.libvirt and not ref.libvirt["cookie_offset"]:
                    cls.data_len = ref.libvirt["data_len"]
            finally:
                ref.close()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def with_xml(self, name, xml):
        if self.data_len is None:
            self.skipTest("fixture %s missing (or has a cookie)" % LIBVIRT)
        assert len(xml) <= self.data_len
        img = os.path.join(self.tmp, name + ".img")
        tm.sparse_copy(self.src, img)
        with open(img, "r+b") as f:
            f.seek(92)
            f.write(xml.ljust(self.data_len, b"\0"))
        m = Mount(img, tag="sec").mount()
        self.addCleanup(m.cleanup)
        with open(m.path(".mramfs.json"), "rb") as f:
            desc = json.loads(f.read().decode("utf-8"))
        with open(m.path(".libvirt/domain.xml"), "rb") as f:
            got = f.read()
        self.assertEqual(got, xml.split(b"\0")[0], "domain.xml is the text up to its NUL")
        with open(m.path("pc.ram"), "rb") as f:
            self.assertEqual(len(f.read(MiB)), MiB)
        if os.path.exists(m.path("physmem.raw")):
            fd = os.open(m.path("physmem.raw"), os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                for off in (0, 0xa0000, size - 4096):
                    os.pread(fd, 4096, max(off, 0))
            finally:
                os.close(fd)
        self.assertTrue(m.pid is None or tm.pid_alive(m.pid), "daemon died")
        return m, desc

    def domain(self, inner):
        return (b"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
                b"<name>x</name><memory unit='KiB'>524288</memory>" + inner + b"</domain>\n")

    def test_huge_and_broken_below_4g(self):
        for i, v in enumerate([b"99999999999999999999999999999G", b"18446744073709551615",
                               b"17179869183G", b"4097", b"0x", b"-1", b"", b"1T", b"0",
                               b"2G" + b"9" * 4000, b"4294967296k"]):
            with self.subTest(value=v):
                self.with_xml("b4g%d" % i, self.domain(
                    b"<qemu:commandline><qemu:arg value='-machine'/>"
                    b"<qemu:arg value='q35,max-ram-below-4g=" + v + b"'/></qemu:commandline>"))

    def test_vendor_games(self):
        inner = (b"<cpu><vendor>AMD</vendor><vendor>Intel</vendor><model>EPYC</model>"
                 b"<model>>Opteron<</model></cpu><vendor>AMD</vendor>" * 1000)
        m, desc = self.with_xml("vendor", self.domain(inner))
        self.assertIsInstance(desc, dict)

    def test_text_fills_data_len_without_nul(self):
        if self.data_len is None:
            self.skipTest("fixture %s missing" % LIBVIRT)
        tail = b"max-ram-below-4g="
        for i, end in enumerate([tail, tail + b"1", b"<vendor>AMD</vendor"]):
            with self.subTest(end=end):
                xml = self.domain(b"")
                xml = (xml + b" " * self.data_len)[:self.data_len - len(end)] + end
                self.with_xml("full%d" % i, xml)

    def test_deep_nesting_and_bytes(self):
        inner = b"<a>" * 200000 + b"\xff\xfe\x80 \x01\x1b[2J max-ram-below-4g=\xff" + b"</a>" * 50
        self.with_xml("deep", self.domain(inner)[:self.data_len or 0])


# ---------------------------------------------------------------------------

class EvidenceTests(unittest.TestCase):
    """docs/threat-model.md §7: the image is opened read-only and left as it was."""

    def test_image_fd_read_only_and_untouched(self):
        src = fixture(BASE)
        if src is None:
            self.skipTest("fixture %s missing" % BASE)
        tmp = tempfile.mkdtemp(prefix="mramfs-secev-")
        self.addCleanup(shutil.rmtree, tmp, True)
        img = os.path.join(tmp, "vm.img")
        tm.sparse_copy(src, img)
        cache = os.path.join(tmp, "cache")
        os.mkdir(cache)
        before = os.stat(img)
        m = Mount(img, tag="sec")
        env = dict(os.environ, XDG_CACHE_HOME=cache)
        r = subprocess.run(m.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=tm.MOUNT_TIMEOUT, env=env)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.addCleanup(m.cleanup)
        tm.ACTIVE[m.mnt] = m
        pids = tm.pids_mentioning(m.mnt)
        self.assertEqual(len(pids), 1, pids)
        fds = []
        for fd in os.listdir("/proc/%d/fd" % pids[0]):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pids[0], fd))
            except OSError:
                continue
            if target == img:
                with open("/proc/%d/fdinfo/%s" % (pids[0], fd)) as f:
                    flags = int(f.read().split("flags:")[1].split()[0], 8)
                fds.append(flags)
        self.assertTrue(fds, "the daemon holds no descriptor of the image")
        for flags in fds:
            self.assertEqual(flags & os.O_ACCMODE, os.O_RDONLY, "image fd flags %o" % flags)
        with open(m.path("pc.ram"), "rb") as f:
            while f.read(8 * MiB):
                pass
        self.assertEqual(m.unmount().returncode, 0)
        after = os.stat(img)
        for field in ("st_size", "st_mtime_ns", "st_ctime_ns", "st_mode", "st_uid"):
            self.assertEqual(getattr(after, field), getattr(before, field), field)
        self.assertEqual(os.listdir(cache), [], "a mapped-ram mount wrote into the cache dir")
        self.assertEqual(sorted(os.listdir(tmp)), ["cache", "vm.img"])


# ---------------------------------------------------------------------------

def build_suite(filters):
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for cls in (AccessTests, ModeTests, HostileNameTests, HostileXmlTests, EvidenceTests):
        for t in loader.loadTestsFromTestCase(cls):
            if not filters or any(f in t.id() for f in filters):
                suite.addTest(t)
    return suite


def main(argv=None):
    a = runner.parse_args("mramfs security integration tests", CFG, argv)
    print("mramfs security: build=%s fixtures=%s" % (CFG["build"], CFG["fixtures"]), flush=True)
    tm.WATCHDOG.start()

    def cleanup():
        for m in list(tm.ACTIVE.values()):
            m.cleanup()
    return runner.run(build_suite(a.k), a.v, cleanup, tm.CountingResult)


if __name__ == "__main__":
    sys.exit(main())
