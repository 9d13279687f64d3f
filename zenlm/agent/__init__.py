"""Agents: the tool loop and its prompt formats, the sandboxed code interpreter, tool-integrated reasoning, RAG.

agent/ sits beside the engine (ARCHITECTURE.md): it may drive the in-process engine or any OpenAI-compatible
server; model-written code only ever runs in the sandbox's separate, confined process tree.
"""
