"""The stateful Python kernel that runs inside the sandbox: cells in, results out, one namespace for all cells.

Standard library only; the host passes this file's text to `python -I -c`, so it never runs in zenlm's process.
It talks JSON lines over the unix socket on fd 3. A request is {"code": ...} with two file descriptors attached
(SCM_RIGHTS) that become the cell's stdout and stderr; the reply is {"error": last traceback line or null,
"images": [base64 PNG, ...]}. The value of a cell's last expression is printed, as in a notebook. Figures
reach the host through the `zenlm_figures` matplotlib backend (MPLBACKEND points at it): plt.show() and any
figure left open at the end of a cell become PNG images.
"""

import ast
import base64
import builtins
import importlib.abc
import importlib.util
import io
import json
import linecache
import os
import socket
import sys
import traceback
import types

MAX_IMAGES = 8
MAX_IMAGE_BYTES = 4 << 20
MAX_REQUEST = 64 << 20
_FIGURES_SOURCE = """
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas

def show(*args, **kwargs):
    _capture()
"""


class _Kernel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.images: list[bytes] = []
        self.cells = 0
        self.main = types.ModuleType("__main__")  # the user's namespace: a fresh __main__, not this script's
        self.main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = self.main
        sys.meta_path.append(_FiguresFinder(self.capture_figures))
        self.pending = b""
        self.graveyard: list = []

    def serve(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True)  # a cell killed at its timeout still shows what it printed
        self.send({"ready": True, "python": sys.version.split()[0]})
        while True:
            request = self.receive()
            if request is None:
                return
            code, fds = request
            self.send(self.run(code, fds))

    def receive(self):
        fds: list[int] = []
        while b"\n" not in self.pending:
            data, got, _, _ = socket.recv_fds(self.sock, 1 << 16, 2)
            fds += got
            if not data:
                return None
            self.pending += data
            if len(self.pending) > MAX_REQUEST:
                return None
        line, self.pending = self.pending.split(b"\n", 1)
        if len(fds) != 2:
            return None
        return json.loads(line)["code"], fds

    def send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def run(self, code: str, fds: list[int]) -> dict:
        self.images = []
        self.cells += 1
        saved = [os.dup(1), os.dup(2)]
        self.flush()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        error = None
        try:
            self.execute(code, f"<cell {self.cells}>")
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the kernel goes on
            error = self.report(e)
        try:
            if "matplotlib.pyplot" in sys.modules:
                self.capture_figures()
        except Exception as e:  # noqa: BLE001
            error = error or self.report(e)
        self.flush()
        for fd, target in zip(saved, (1, 2)):
            os.dup2(fd, target)
            os.close(fd)
        for fd in fds:
            os.close(fd)
        return {"error": error, "images": [base64.b64encode(png).decode() for png in self.images]}

    def execute(self, code: str, name: str) -> None:
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks show the lines
        tree = ast.parse(code, name, "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, name, "exec"), self.main.__dict__)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), name, "eval"), self.main.__dict__)
            if value is not None:
                self.main.__dict__["_"] = value
                print(repr(value))

    def report(self, e: BaseException) -> str:
        """Print the traceback (this kernel's own frames left out) to the cell's stderr; the last line back."""
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next
        lines = traceback.format_exception(type(e), e, tb)
        try:
            sys.stderr.write("".join(lines))
        except Exception:  # noqa: BLE001 - a full stderr must not hide the error itself
            pass
        return traceback.format_exception_only(type(e), e)[-1].strip()

    def flush(self) -> None:
        """Flush the cell's output. A cell that replaced sys.stdout gets the kernel's back; a stream that cannot
        be flushed (its file is full, or closed) is replaced, and the old one kept so it never flushes later."""
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, f"__{name}__")
            setattr(sys, name, stream)
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                self.graveyard.append(stream)
                fresh = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                         errors="backslashreplace", line_buffering=True)
                setattr(sys, name, fresh)
                setattr(sys, f"__{name}__", fresh)

    def capture_figures(self) -> None:
        import matplotlib.pyplot as plt

        for number in plt.get_fignums():
            if len(self.images) >= MAX_IMAGES:
                print(f"[sandbox: more than {MAX_IMAGES} figures in one cell; the rest were dropped]",
                      file=sys.stderr)
                break
            buffer = io.BytesIO()
            plt.figure(number).savefig(buffer, format="png")
            if buffer.tell() > MAX_IMAGE_BYTES:
                print(f"[sandbox: figure {number} is over {MAX_IMAGE_BYTES >> 20} MiB as PNG; dropped]",
                      file=sys.stderr)
                continue
            self.images.append(buffer.getvalue())
        plt.close("all")


class _FiguresFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the `zenlm_figures` module: matplotlib's Agg canvas, with show() handing figures to the kernel."""

    def __init__(self, capture):
        self.capture = capture

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "zenlm_figures" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__dict__["_capture"] = self.capture
        exec(_FIGURES_SOURCE, module.__dict__)


if __name__ == "__main__":
    _Kernel(socket.socket(fileno=3)).serve()
