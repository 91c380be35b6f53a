#!/usr/bin/env python3
"""mramfs-pack integration tests: convert libvirt compressed saves built here.

Run:  python3 tests/integration/test_pack.py [--build BUILD_DIR]
          [--fixtures FIXTURE_DIR] [-k SUBSTRING ...] [-v]
      (env MRAMFS_BUILD / MRAMFS_FIXTURES are used when the options are
      absent; defaults: <repo>/build and <repo>/build/fixtures)

Needs the built BUILD/fs/mramfs-pack, the fixture q35-512M-S-legacy.img (a
real legacy QEMU stream; make it with
`python3 scripts/make-fixtures.py q35-512M-S-legacy`, about 2 s) and the
compressors gzip, bzip2, xz, lzop and zstd.  No root, no FUSE.  Tests whose
fixture or compressor is missing are skipped with the reason printed.  The
last line printed is "N passed, N failed[, N skipped]"; the exit status is
non-zero if anything failed.

The images are libvirt saves made the way libvirt makes them (qemu-save-
formats.md §2): the 92-byte header, data_len bytes of domain XML, cookie and
zero padding, then the QEMU stream piped through `PROG -c`.  The oracle for a
conversion is the same header with format 0, the same data and the raw
stream, byte for byte.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import runner

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

CFG = {
    "build": os.path.join(REPO, "build"),
    "fixtures": os.path.join(REPO, "build", "fixtures"),
}

FIXTURE = "q35-512M-S-legacy"
MAGIC = b"LibvirtQemudSave"
HEADER_SIZE = 92
FORMAT_OFFSET = 28
# libvirt format number -> the program libvirt runs (and we compress with)
FORMATS = {"gzip": 1, "bzip2": 2, "xz": 3, "lzop": 4, "zstd": 5}
PACKAGES = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz-utils",
            "lzop": "lzop", "zstd": "zstd"}
FORMAT_RAW, FORMAT_SPARSE = 0, 6
BIG_MEMBERS = 200           # the SIGTERM input: ~520 MiB once decompressed
MiB = 1 << 20
TIMEOUT = 120


def pack_bin():
    return os.path.join(CFG["build"], "fs", "mramfs-pack")


def run(argv, timeout=TIMEOUT, **kw):
    """subprocess.run with a timeout; never raises on exit status."""
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("command timed out after %ss: %s"
                             % (timeout, " ".join(map(str, argv)))) from e


# ---------------------------------------------------------------------------
# building libvirt save images
# ---------------------------------------------------------------------------

def libvirt_data(pad_to=10001):
    """XML + cookie (both NUL-terminated) + zeros, like virQEMUSaveDataWrite;
    returns (data, cookie_offset).  An odd length keeps the stream unaligned."""
    xml = (b"<domain type='kvm'>\n  <name>mrpack</name>\n"
           b"  <memory unit='KiB'>524288</memory>\n</domain>\n\0")
    cookie = b"<cookie><cpu mode='custom'/><slirpHelper/></cookie>\n\0"
    data = xml + cookie
    assert len(data) <= pad_to
    return data + b"\0" * (pad_to - len(data)), len(xml)


def libvirt_header(fmt, data_len, cookie_offset, big_endian=False,
                   version=2, magic=MAGIC):
    order = ">" if big_endian else "<"
    hdr = magic + struct.pack(order + "5I", version, data_len, 1, fmt,
                              cookie_offset) + b"\0" * 56
    assert len(hdr) == HEADER_SIZE
    return hdr


def with_format(hdr, fmt, big_endian=False):
    return (hdr[:FORMAT_OFFSET] + struct.pack(">I" if big_endian else "<I", fmt)
            + hdr[FORMAT_OFFSET + 4:])


def compress(prog, raw):
    r = subprocess.run([prog, "-c"], input=raw, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=TIMEOUT)
    if r.returncode != 0:
        raise AssertionError("%s -c failed: %s" % (prog, r.stderr.decode()))
    return r.stdout


def write(path, *parts):
    with open(path, "wb") as f:
        for p in parts:
            f.write(p)
    return path


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------
# result accounting: "N passed, N failed, N skipped"
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

class PackTests(unittest.TestCase):
    maxDiff = 2000
    raw = None              # the fixture's QEMU stream
    skip_reason = None
    compressed = {}         # prog -> compressed raw stream (made once)
    big_dir = None          # holds the big SIGTERM input, made on first use

    @classmethod
    def setUpClass(cls):
        path = os.path.join(CFG["fixtures"], FIXTURE + ".img")
        if not os.access(pack_bin(), os.X_OK):
            cls.skip_reason = "%s not built" % pack_bin()
        elif not os.path.exists(path):
            cls.skip_reason = ("fixture %s missing: python3 scripts/make-fixtures.py "
                               "%s" % (path, FIXTURE))
        else:
            cls.raw = read(path)
            assert cls.raw[:4] == b"QEVM", "fixture is not a QEMU stream"

    @classmethod
    def tearDownClass(cls):
        if cls.big_dir:
            shutil.rmtree(cls.big_dir, ignore_errors=True)
            cls.big_dir = None

    def setUp(self):
        if self.skip_reason:
            self.skipTest(self.skip_reason)
        self.dir = tempfile.mkdtemp(prefix="mrpack-test.")
        self.out = os.path.join(self.dir, "out.save")

    def tearDown(self):
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- helpers ----

    def need(self, prog):
        if shutil.which(prog) is None:
            self.skipTest("%s not installed" % prog)

    def comp(self, prog):
        self.need(prog)
        if prog not in self.compressed:
            self.compressed[prog] = compress(prog, self.raw)
        return self.compressed[prog]

    def image(self, prog, stream=None, big_endian=False, pad_to=10001,
              name="in.save"):
        """A libvirt save of @prog's format; returns (path, expected OUT)."""
        data, cookie_off = libvirt_data(pad_to)
        hdr = libvirt_header(FORMATS[prog], len(data), cookie_off, big_endian)
        path = write(os.path.join(self.dir, name), hdr, data,
                     self.comp(prog) if stream is None else stream)
        expect = with_format(hdr, FORMAT_RAW, big_endian) + data + self.raw
        return path, expect

    def pack(self, *args, env=None, timeout=TIMEOUT):
        return run([pack_bin()] + list(args), timeout=timeout, env=env)

    def leftovers(self):
        return sorted(os.path.basename(p) for p in
                      glob.glob(glob.escape(self.out) + ".*"))

    def assert_converted(self, r, expect):
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(r.stderr, b"")
        self.assertEqual(r.stdout, b"")
        got = read(self.out)
        self.assertEqual(len(got), len(expect))
        self.assertTrue(got == expect, "OUT differs from header(format 0) + "
                        "data + raw stream")
        self.assertEqual(self.leftovers(), [])

    def assert_refused(self, r, pattern, out_before=None):
        """Exit 1, one line `mramfs-pack: ...` matching @pattern, OUT as it
        was (absent unless @out_before) and no temporary file."""
        err = r.stderr.decode()
        self.assertEqual(r.returncode, 1, err)
        self.assertEqual(r.stdout, b"")
        self.assertTrue(err.endswith("\n") and err.count("\n") == 1,
                        "not one line: %r" % err)
        self.assertRegex(err.rstrip("\n"), pattern)
        if out_before is None:
            self.assertFalse(os.path.lexists(self.out), "OUT was written")
        else:
            self.assertEqual(read(self.out), out_before)
        self.assertEqual(self.leftovers(), [])

    def big_image(self):
        """gzip members of the stream concatenated (`gzip -dc` decompresses
        them all): ~520 MiB of output for 120 MB of input, made in no time."""
        cls = type(self)
        if cls.big_dir is None:
            cls.big_dir = tempfile.mkdtemp(prefix="mrpack-big.")
        path = os.path.join(cls.big_dir, "big.save")
        if not os.path.exists(path):
            data, cookie_off = libvirt_data()
            member = self.comp("gzip")
            with open(path + ".part", "wb") as f:
                f.write(libvirt_header(FORMATS["gzip"], len(data), cookie_off))
                f.write(data)
                for _ in range(BIG_MEMBERS):
                    f.write(member)
            os.rename(path + ".part", path)
        return path

    def holders_of(self, path):
        """pids with @path open (a decompressor outliving mramfs-pack)."""
        pids = []
        for fd_dir in glob.glob("/proc/[0-9]*/fd"):
            try:
                for fd in os.listdir(fd_dir):
                    if os.readlink(os.path.join(fd_dir, fd)) == path:
                        pids.append(int(fd_dir.split("/")[2]))
                        break
            except OSError:
                continue
        return pids

    # ---- conversions ----

    def check_format(self, prog):
        path, expect = self.image(prog)
        self.assert_converted(self.pack(path, self.out), expect)

    def test_foreign_endian_header(self):
        path, expect = self.image("gzip", big_endian=True)
        self.assertEqual(read(path)[16:20], b"\0\0\0\2")
        self.assert_converted(self.pack(path, self.out), expect)
        got = read(self.out)[:HEADER_SIZE]
        self.assertEqual(got[16:20], b"\0\0\0\2", "version no longer big-endian")
        self.assertEqual(got[FORMAT_OFFSET:FORMAT_OFFSET + 4], b"\0\0\0\0")

    def test_data_len_over_buffer(self):
        """XML + padding bigger than the copy buffer (1 MiB) and unaligned."""
        path, expect = self.image("zstd", pad_to=3 * MiB + 4097)
        self.assert_converted(self.pack(path, self.out), expect)

    def test_verbose_summary(self):
        path, expect = self.image("zstd")
        r = self.pack("--verbose", path, self.out)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(r.stderr, b"")
        line = r.stdout.decode()
        self.assertEqual(line.count("\n"), 1, line)
        self.assertRegex(line, r"^mramfs-pack: .*in\.save \(libvirt zstd, [0-9.]+ MB\)"
                         r" -> .*out\.save \(libvirt raw, [0-9.]+ MB\) in [0-9.]+ s$")
        self.assertEqual(read(self.out), expect)

    def test_converted_opens_like_the_stream(self):
        """mramfs-inspect sees the same blocks in OUT as in the bare stream
        (once libmramfs reads legacy streams; skipped before that)."""
        inspect = os.path.join(CFG["build"], "fs", "mramfs-inspect")
        if not os.access(inspect, os.X_OK):
            self.skipTest("%s not built" % inspect)
        path, _ = self.image("lzop")
        r = self.pack(path, self.out)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(self.dir, "cache"))
        got = run([inspect, "--json", self.out], env=env)
        if got.returncode != 0 and b"legacy" in got.stderr:
            self.skipTest("libmramfs does not read legacy streams yet")
        self.assertEqual(got.returncode, 0, got.stderr.decode())
        want = run([inspect, "--json",
                    os.path.join(CFG["fixtures"], FIXTURE + ".img")], env=env)
        self.assertEqual(want.returncode, 0, want.stderr.decode())
        got, want = json.loads(got.stdout), json.loads(want.stdout)
        self.assertEqual(got["container"], "libvirt")
        self.assertEqual(got["libvirt"]["format_name"], "raw")
        self.assertEqual(got["stream_offset"], HEADER_SIZE + len(libvirt_data()[0]))

        def blocks(d):
            return [(b["idstr"], b["size"], b["data_pages"]) for b in d["blocks"]]
        self.assertEqual(blocks(got), blocks(want))

    def test_force_replaces(self):
        path, expect = self.image("xz")
        write(self.out, b"old contents")
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: .*in\.save: .*out\.save exists "
                            r"\(--force replaces it\)$", out_before=b"old contents")
        r = self.pack("--force", path, self.out)
        self.assert_converted(r, expect)

    def test_out_dangling_symlink_refused(self):
        path, _ = self.image("gzip")
        os.symlink(os.path.join(self.dir, "nowhere"), self.out)
        r = self.pack(path, self.out)
        self.assertEqual(r.returncode, 1, r.stderr.decode())
        self.assertIn("exists", r.stderr.decode())
        self.assertTrue(os.path.islink(self.out))

    # ---- broken streams ----

    def check_truncated(self, prog):
        comp = self.comp(prog)
        path, _ = self.image(prog, stream=comp[:len(comp) * 3 // 5])
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: %s: %s -dc failed: \S.*$"
                            % (re.escape(path), prog))

    def check_corrupt(self, prog):
        comp = bytearray(self.comp(prog))
        mid = len(comp) // 2
        for i in range(mid, mid + 64):
            comp[i] ^= 0xA5
        path, _ = self.image(prog, stream=bytes(comp))
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: %s: (%s -dc failed: \S.*|"
                            r"decompressed stream is not a QEMU stream.*)$"
                            % (re.escape(path), prog))

    def test_not_compressed_at_all(self):
        """format gzip, but the stream is raw: gzip's own complaint."""
        path, _ = self.image("gzip", stream=self.raw)
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: .*: gzip -dc failed: gzip: .*not in gzip "
                            r"format$")

    def test_decompresses_to_non_qemu(self):
        self.need("gzip")
        path, _ = self.image("gzip", stream=compress("gzip", b"NOTQEMU!" * 100000))
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: .*: decompressed stream is not a QEMU "
                            r"stream \(it starts with \"NOTQ\"\)$")

    def test_decompresses_to_nothing(self):
        self.need("zstd")
        path, _ = self.image("zstd", stream=compress("zstd", b"QE"))
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: .*: decompressed stream is not a QEMU "
                            r"stream \(it starts with \"QE\"\)$")

    def test_empty_stream(self):
        self.need("xz")
        path, _ = self.image("xz", stream=b"")
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: .*: (xz -dc failed: \S.*|decompressed "
                            r"stream is not a QEMU stream.*)$")

    def test_decompressor_not_installed(self):
        empty = os.path.join(self.dir, "empty-path")
        os.mkdir(empty)
        env = dict(os.environ, PATH=empty)
        for prog in ("gzip", "xz"):
            path, _ = self.image(prog, name=prog + ".save")
            r = self.pack(path, self.out, env=env)
            self.assert_refused(r, r"^mramfs-pack: .*: %s not found: .*\(install the "
                                r"Debian package %s\)$" % (prog, PACKAGES[prog]))

    def test_out_directory_missing(self):
        path, _ = self.image("gzip")
        self.out = os.path.join(self.dir, "no", "such", "out.save")
        r = self.pack(path, self.out)
        self.assert_refused(r, r"^mramfs-pack: .*: cannot create .*out\.save\.XXXXXX: "
                            r"No such file or directory$")

    # ---- inputs that are not converted ----

    # Images mramfs mounts as they are are packed (docs/packed-format.md); the packed
    # suite (test_packed.py) checks packed images in depth, these only check that the
    # conversion path no longer claims them.
    def assert_packed_roundtrip(self, path):
        r = self.pack(path, self.out)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(r.stderr, b"")
        self.assertEqual(read(self.out)[:8], b"MRAMPACK")
        back = self.out + ".unpacked"
        r = self.pack("--unpack", self.out, back)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertTrue(read(back) == read(path), "unpack differs from the input")
        os.unlink(back)
        r = self.pack(self.out, back)
        self.assert_refused(r, r"^mramfs-pack: %s: already packed: nothing to do$"
                            % re.escape(self.out), out_before=read(self.out))
        self.assertFalse(os.path.lexists(back))
        os.unlink(self.out)

    def test_raw_or_sparse_are_packed(self):
        data, cookie_off = libvirt_data()
        for fmt, name in ((FORMAT_RAW, "raw"), (FORMAT_SPARSE, "sparse")):
            for big_endian in (False, True):
                path = write(os.path.join(self.dir, "%s%d.save" % (name, big_endian)),
                             libvirt_header(fmt, len(data), cookie_off, big_endian),
                             data, self.raw)
                self.assert_packed_roundtrip(path)

    def test_bare_qemu_stream_is_packed(self):
        self.assert_packed_roundtrip(os.path.join(CFG["fixtures"], FIXTURE + ".img"))

    def test_not_an_image(self):
        rnd = random.Random(7)
        cases = {
            "random": bytes(rnd.getrandbits(8) for _ in range(4096)),
            "empty": b"",
            "short": b"QEV",
        }
        for name, content in cases.items():
            path = write(os.path.join(self.dir, name), content)
            r = self.pack(path, self.out)
            self.assert_refused(r, r"^mramfs-pack: %s: neither a libvirt save image nor "
                                r"a QEMU stream$" % re.escape(path))
        r = self.pack(os.path.join(self.dir, "missing"), self.out)
        self.assert_refused(r, r"^mramfs-pack: .*missing: .*No such file or directory$")

    def test_broken_libvirt_headers(self):
        data, cookie_off = libvirt_data()
        cases = {
            "partial": (libvirt_header(1, len(data), cookie_off,
                                       magic=b"LibvirtQemudPart") + data,
                        r"incomplete"),
            "format7": (libvirt_header(7, len(data), cookie_off) + data,
                        r"unknown libvirt save format 7"),
            "version3": (libvirt_header(1, len(data), cookie_off, version=3) + data,
                         r"version"),
            "short-header": (libvirt_header(1, len(data), cookie_off)[:60],
                             r"truncated"),
            "short-data": (libvirt_header(1, len(data), cookie_off) + data[:100],
                           r"truncated"),
        }
        for name, (content, why) in cases.items():
            path = write(os.path.join(self.dir, name), content)
            r = self.pack(path, self.out)
            self.assert_refused(r, r"^mramfs-pack: %s: .*%s" % (re.escape(path), why))

    def test_usage(self):
        for args in ([], ["a"], ["a", "b", "c"], ["--bogus", "a", "b"],
                     ["--quiet", "--verbose", "a", "b"]):
            r = self.pack(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertEqual(r.stderr.decode().count("\n"), 1, r.stderr)
            self.assertTrue(r.stderr.startswith(b"mramfs-pack: "), r.stderr)
        r = self.pack("--help")
        self.assertEqual(r.returncode, 0)
        text = r.stdout.decode()
        for word in ("IMAGE OUT", "--force", "--quiet", "--verbose", "gzip -dc",
                     "zstd -dc", "raw or sparse", "bare QEMU stream"):
            self.assertIn(word, text)

    # ---- terminal progress ----

    def pack_on_pty(self, *args):
        master, slave = os.openpty()
        try:
            p = subprocess.Popen([pack_bin()] + list(args), stdout=subprocess.PIPE,
                                 stderr=slave)
        finally:
            os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:     # EIO: every slave end is closed
                break
            if not chunk:
                break
            seen += chunk
        os.close(master)
        p.communicate(timeout=TIMEOUT)
        return p.returncode, seen

    def test_progress_on_terminal(self):
        path, expect = self.image("bzip2")
        rc, seen = self.pack_on_pty(path, self.out)
        self.assertEqual(rc, 0, seen)
        self.assertRegex(seen, rb"^\r\x1b\[Kmramfs-pack: +\d+% of [0-9.]+ MB bzip2 read, "
                         rb"[0-9.]+ MB/s, ETA (--:--|\d+:\d\d)")
        self.assertTrue(seen.endswith(b"\r\x1b[K"), "line not cleared: %r" % seen[-80:])
        self.assertNotIn(b"\n", seen)
        self.assertEqual(read(self.out), expect)

    def test_quiet_on_terminal(self):
        path, expect = self.image("bzip2")
        rc, seen = self.pack_on_pty("--quiet", path, self.out)
        self.assertEqual(rc, 0, seen)
        self.assertEqual(seen, b"")
        self.assertEqual(read(self.out), expect)

    # ---- signals ----

    def check_signal(self, sig, ignored=None):
        """Send @sig once the conversion is under way; with @ignored, that
        signal (ignored from the start, as nohup does) is sent first and must
        not stop it."""
        path = self.big_image()

        def ignore():
            if ignored is not None:
                signal.signal(ignored, signal.SIG_IGN)
        p = subprocess.Popen([pack_bin(), path, self.out], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=ignore)
        deadline = time.monotonic() + 60
        try:
            while True:     # until the temporary file holds some 16 MiB
                tmp = self.leftovers()
                if tmp and os.path.getsize(os.path.join(self.dir, tmp[0])) > 16 * MiB:
                    break
                if p.poll() is not None:
                    self.fail("mramfs-pack ended before the signal: %r"
                              % p.stderr.read())
                self.assertLess(time.monotonic(), deadline, "no temporary file grew")
                time.sleep(0.005)
            self.assertEqual(len(tmp), 1, tmp)
            self.assertRegex(tmp[0], r"^out\.save\.[A-Za-z0-9]{6}$")
            if ignored is not None:
                p.send_signal(ignored)
                time.sleep(0.2)
                self.assertIsNone(p.poll(), "stopped by an ignored signal")
                self.assertEqual(self.leftovers(), tmp)
            p.send_signal(sig)
            _, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, -sig, err)
        self.assertEqual(err, b"")
        self.assertFalse(os.path.lexists(self.out), "OUT left behind")
        self.assertEqual(self.leftovers(), [], "temporary file left behind")
        deadline = time.monotonic() + 10
        while self.holders_of(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.holders_of(path), [], "the decompressor outlived it")

    def test_sigterm_during_conversion(self):
        self.check_signal(signal.SIGTERM)

    def test_sigint_during_conversion(self):
        self.check_signal(signal.SIGINT)

    def test_sighup_ignored_under_nohup(self):
        self.check_signal(signal.SIGTERM, ignored=signal.SIGHUP)


def _add_per_format_tests():
    """test_convert_gzip, test_truncated_zstd, ...: one test per format, so a
    missing compressor skips only its own."""
    for prog in FORMATS:
        for kind in ("format", "truncated", "corrupt"):
            def t(self, prog=prog, kind=kind):
                getattr(self, "check_" + kind)(prog)
            name = {"format": "convert"}.get(kind, kind)
            t.__name__ = "test_%s_%s" % (name, prog)
            setattr(PackTests, t.__name__, t)


_add_per_format_tests()


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

def build_suite(filters):
    suite = unittest.TestSuite()
    for t in unittest.TestLoader().loadTestsFromTestCase(PackTests):
        if not filters or any(f in t.id() for f in filters):
            suite.addTest(t)
    return suite


def main(argv=None):
    a = runner.parse_args("mramfs-pack integration tests", CFG, argv)
    print("mramfs-pack integration: build=%s fixtures=%s"
          % (CFG["build"], CFG["fixtures"]), flush=True)
    return runner.run(build_suite(a.k), a.v)


if __name__ == "__main__":
    sys.exit(main())
