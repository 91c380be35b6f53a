"""The command line and the closing report shared by the integration suites.

Every suite takes --build, --fixtures (default BUILD/fixtures), -k SUBSTR (repeatable), -v,
and ends with one line "N passed, N failed[, N skipped]" (what CI reads), exiting non-zero
on a failure or when nothing passed.
"""
import argparse
import os
import sys
import time
import unittest


class CountingResult(unittest.TextTestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.n_pass = 0

    def addSuccess(self, test):
        self.n_pass += 1
        super().addSuccess(test)


def parse_args(description, cfg, argv=None):
    """Parse the common options into @cfg ("build", "fixtures", "test_timeout" if present)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--build", default=os.environ.get("MRAMFS_BUILD"))
    ap.add_argument("--fixtures", default=os.environ.get("MRAMFS_FIXTURES"))
    ap.add_argument("-k", action="append", default=[],
                    help="only tests whose id contains this (repeatable)")
    ap.add_argument("-v", action="store_true", help="verbose")
    if "test_timeout" in cfg:
        ap.add_argument("--timeout", type=int, default=cfg["test_timeout"],
                        help="watchdog limit per test in seconds")
    a = ap.parse_args(argv)
    if a.build:
        cfg["build"] = os.path.abspath(a.build)
    if a.fixtures:
        cfg["fixtures"] = os.path.abspath(a.fixtures)
    elif a.build:
        cfg["fixtures"] = os.path.join(cfg["build"], "fixtures")
    if "test_timeout" in cfg:
        cfg["test_timeout"] = a.timeout
    return a


def run(suite, verbose, cleanup=None, resultclass=CountingResult):
    """Run @suite, call @cleanup() whatever happens, print the report; returns the exit code."""
    t0 = time.monotonic()
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2 if verbose else 1,
                                     resultclass=resultclass)
    try:
        res = runner.run(suite)
    finally:
        if cleanup:
            cleanup()
    skipped = len(res.skipped)
    failed = len(res.failures) + len(res.errors) + len(res.unexpectedSuccesses)
    if skipped:
        reasons = {}
        for _t, why in res.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        print("skipped:")
        for why, n in sorted(reasons.items()):
            print("  %3d  %s" % (n, why))
    print("time: %.1f s" % (time.monotonic() - t0))
    line = "%d passed, %d failed" % (res.n_pass, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line, flush=True)
    return 1 if failed or res.n_pass == 0 else 0
