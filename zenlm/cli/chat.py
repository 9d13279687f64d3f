"""`zen generate` (one completion to stdout) and `zen chat` (the terminal chat).

`zen chat --docs DIR` (DIR: documents or a `zen rag index` output) retrieves for each user turn and puts the
numbered chunks in the system message, asking the model to cite them as [n]; the sources follow each answer.
"""

from __future__ import annotations

import sys

from zenlm.cli.common import add_model, add_speculative, add_tp, load_llm, sampling_params


def cmd_generate(args) -> int:
    llm = load_llm(args)
    if args.raw:
        if args.system:
            raise ValueError("--system needs the chat template; drop --raw")
        pieces = llm.stream(args.prompt, sampling_params(args))
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        pieces = llm.stream_chat(messages + [{"role": "user", "content": args.prompt}], sampling_params(args))
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    from zenlm.agent.rag.cite import rag_system, sources

    retriever = _docs(args.docs) if args.docs else None
    llm = load_llm(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    print(f"zen chat with {llm.path.name}. /reset clears the history, /exit leaves, "
          "Ctrl-C stops an answer.", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(use /exit or Ctrl-D to leave)", file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return 0
        if text == "/reset":
            history.clear()
            print("(history cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        answer, hits = [], []
        context = system
        if retriever is not None:  # --docs: this turn's chunks replace the system message
            hits = retriever.search(text, args.k)
            context = [{"role": "system", "content": rag_system(hits, args.system)}]
        try:
            for piece in llm.stream_chat(context + history, sampling_params(args)):
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        if hits:
            print(f"sources: {sources(hits)}", file=sys.stderr)
        history.append({"role": "assistant", "content": "".join(answer)})


def _docs(path: str):
    from zenlm.agent.rag import open_docs

    print(f"indexing {path} ...", file=sys.stderr)
    return open_docs(path)


def add(sub) -> None:
    g = sub.add_parser("generate", help="complete one prompt and print only the completion")
    g.add_argument("prompt")
    add_model(g)
    add_tp(g)
    g.add_argument("--system", help="system message (chat template)")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy; default from the model")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--raw", action="store_true", help="no chat template: complete the text as it is")
    add_speculative(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat in the terminal")
    add_model(c)
    add_tp(c)
    c.add_argument("--system", help="system message")
    c.add_argument("--max-tokens", type=int, default=1024)
    c.add_argument("--temperature", type=float, default=None)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--docs", metavar="DIR", help="answer from these documents (or a `zen rag index` output), "
                   "citing the retrieved chunks as [n]")
    c.add_argument("--k", type=int, default=4, help="with --docs: chunks retrieved per turn (default 4)")
    add_speculative(c)
    c.set_defaults(func=cmd_chat)
