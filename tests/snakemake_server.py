"""Runs `python -m snakemake ARGS` for the tests, each run in a process of its own, without paying Snakemake's
import time (about a second) for every run.

A server process imports Snakemake (and the libraries a run of this workflow imports anyway) once, then for
each request forks a child that is what `python -m snakemake ARGS` would be after its imports: it takes the
request's environment, working directory and arguments, writes its stdout and stderr to the given files and
exits with Snakemake's exit status. Every run starts from the server's untouched state; the workflow and this
project's package are imported by the child, from scratch, as in a new process.

Protocol: one JSON request a line on stdin ({"argv", "env", "cwd", "stdout", "stderr", "timeout"}), one JSON
answer a line on stdout ({"returncode"}). The server exits at the end of its stdin.
"""

import json
import os
import signal
import sys
import traceback

sys.path[0] = os.getcwd()  # not this file's folder: what `python -m snakemake` started here would have


def _child(request: dict) -> None:
    import snakemake.cli

    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # what `python -m` puts first
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(request["timeout"])  # past it the run is killed, as subprocess.run(timeout=) would
    sys.argv = [snakemake.cli.__file__.replace("cli.py", "__main__.py"), *request["argv"]]
    snakemake.cli.main(request["argv"])  # exits (SystemExit) with Snakemake's status, through Python's exit


def serve() -> None:
    # What every run imports before reading the workflow: Snakemake's command line and API, and the
    # third-party libraries the workflow's parse and Snakemake's bookkeeping import (not this project's code).
    import jsonschema  # noqa: F401
    import pandas  # noqa: F401
    import snakemake.api  # noqa: F401
    import snakemake.cli
    import yaml  # noqa: F401

    snakemake.cli.get_argument_parser()  # collects the installed plugins once
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                _child(request)
            except SystemExit:
                raise  # the child ends as `python -m snakemake` does: Python's own exit with that status
            except BaseException:  # before Snakemake's own handling (it catches what a run raises)
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
