"""The loss-curve PNG, drawn and encoded here (zlib + the PNG chunk format), so training needs no plotting library.

Training loss as a line, held-out loss as dots, light grid lines, min/max labels in a 3x5 pixel font.
RL runs add the mean reward as a green line on its own scale (its min/max labelled on the right, in green).
It draws nothing else: no legend box, no anti-aliasing.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

# 3x5 glyphs, rows top to bottom, 3 bits each (MSB = left column).
FONT = {"0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
        "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
        "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0),
        "e": (0, 7, 7, 4, 7), "s": (0, 3, 6, 1, 6), "t": (2, 7, 2, 2, 3), "p": (0, 7, 5, 7, 4),
        "l": (6, 2, 2, 2, 7), "o": (0, 7, 5, 5, 7), " ": (0, 0, 0, 0, 0)}
BLUE, ORANGE, GREY, BLACK, GREEN = (31, 119, 180), (255, 127, 14), (225, 225, 225), (40, 40, 40), (44, 160, 44)


class Canvas:
    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x: int, y: int, c: tuple[int, int, int], r: int = 0) -> None:
        for yy in range(y - r, y + r + 1):
            for xx in range(x - r, x + r + 1):
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    i = (yy * self.w + xx) * 3
                    self.px[i:i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c, r: int = 0) -> None:
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(n + 1):
            self.dot(round(x0 + (x1 - x0) * k / n), round(y0 + (y1 - y0) * k / n), c, r)

    def text(self, x: int, y: int, s: str, c=BLACK, scale: int = 2) -> None:
        for ch in s:
            for row, bits in enumerate(FONT.get(ch, FONT[" "])):
                for col in range(3):
                    if bits >> (2 - col) & 1:
                        for dy in range(scale):
                            for dx in range(scale):
                                self.dot(x + col * scale + dx, y + row * scale + dy, c)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
        return b"\x89PNG\r\n\x1a\n" + body


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def loss_curve(path: str | Path, train: list[tuple[int, float]], held_out: list[tuple[int, float]] = (),
               reward: list[tuple[int, float]] = (), w: int = 640, h: int = 400) -> None:
    """Write the PNG: (step, loss) pairs for training (line) and held-out (dots), (step, mean reward) pairs."""
    c = Canvas(w, h)
    left, right, top, bottom = 60, w - (70 if reward else 20), 20, h - 40
    pts = list(train) + list(held_out)
    if pts:
        s0, s1 = min(p[0] for p in pts), max(p[0] for p in pts)
        l0, l1 = min(p[1] for p in pts), max(p[1] for p in pts)
        s1, l1 = (s1 if s1 > s0 else s0 + 1), (l1 if l1 > l0 else l0 + 1e-6)

        def xy(s: float, v: float) -> tuple[int, int]:
            return (round(left + (s - s0) / (s1 - s0) * (right - left)),
                    round(bottom - (v - l0) / (l1 - l0) * (bottom - top)))

        for k in range(5):
            y = round(top + k * (bottom - top) / 4)
            c.line(left, y, right, y, GREY)
            c.text(4, y - 5, _fmt(l1 - k * (l1 - l0) / 4))
        for a, b in zip(train, train[1:]):
            c.line(*xy(*a), *xy(*b), BLUE, 1)
        for p in held_out:
            c.dot(*xy(*p), ORANGE, 3)
        if reward:
            r0, r1 = min(p[1] for p in reward), max(p[1] for p in reward)
            r1 = r1 if r1 > r0 else r0 + 1e-6
            rxy = [(xy(s, 0)[0], round(bottom - (v - r0) / (r1 - r0) * (bottom - top))) for s, v in reward]
            for a, b in zip(rxy, rxy[1:]):
                c.line(*a, *b, GREEN, 1)
            c.text(right + 6, top - 5, _fmt(r1), GREEN)
            c.text(right + 6, bottom - 5, _fmt(r0), GREEN)
        c.text(left, bottom + 12, f"step {s0}")
        c.text(right - 80, bottom + 12, f"step {s1}")
    c.line(left, top, left, bottom, BLACK)
    c.line(left, bottom, right, bottom, BLACK)
    Path(path).write_bytes(c.png())
