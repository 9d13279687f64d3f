"""zen serve: an OpenAI-compatible HTTP server (plus Ollama's API) on the engine's AsyncLLM.

protocol (request/response shapes), errors, generate (running requests), chat, completions, tools
(tool-call parsing), structured (grammar-constrained decoding), metrics, ollama, app (routes, auth),
serve (uvicorn startup). The web chat page lives in ui/.
"""
