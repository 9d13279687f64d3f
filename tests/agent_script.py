"""A scripted model for agent tests: each turn answers with the next scripted text, streamed word by word.

Like a real backend it stops before the first stop string and at max_tokens (a word counts as a
token, finish_reason "length"); it records every request so tests can check what the model was shown.
"""

import copy
import re

from zenlm.agent.backends import Piece


class Script:
    def __init__(self, turns):
        self.turns = list(turns)  # each a text, a function of the messages, or an exception to raise
        self.requests: list[dict] = []
        self.closed = False

    def generate(self, messages, tools, stop, max_tokens, temperature):
        self.requests.append({"messages": copy.deepcopy(messages), "tools": tools, "stop": list(stop),
                              "max_tokens": max_tokens, "temperature": temperature})
        assert self.turns, "the agent asked for more turns than the script has"
        turn = self.turns.pop(0)
        if isinstance(turn, Exception):
            raise turn
        text = turn(messages) if callable(turn) else turn
        cut = min((text.find(s) for s in stop if s in text), default=len(text))
        words = re.findall(r"\s*\S+(?:\s+$)?", text[:cut]) or ([text[:cut]] if text[:cut] else [])
        finish = "length" if len(words) > max_tokens else "stop"
        words = words[:max_tokens]
        for w in words:
            yield Piece(w)
        yield Piece("", len(words), finish)

    def close(self):
        self.closed = True


def hermes_call(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'
