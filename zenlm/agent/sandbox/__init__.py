"""The sandboxed code interpreter: model-written Python runs here, in a confined process tree, never in zenlm.

Session (a stateful kernel: cells in, CellResult out) and run_program (one file to completion) run at the
strongest Level this host allows (levels.py says what each adds); Limits holds the resource caps.
"""

from zenlm.agent.sandbox.levels import Level, resolve
from zenlm.agent.sandbox.limits import Limits
from zenlm.agent.sandbox.process import SandboxError
from zenlm.agent.sandbox.run import RunResult, run_program
from zenlm.agent.sandbox.session import CellResult, Session

__all__ = ["CellResult", "Level", "Limits", "RunResult", "SandboxError", "Session", "resolve", "run_program"]
