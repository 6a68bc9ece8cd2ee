"""The answer server: an OpenAI-compatible chat-completions endpoint over the project's own VLMs (`auditdm
serve-answers`), so a JAX reference can answer from another process or machine through `answerers.HttpAnswerer`.

  chat.py    the request/response format (OpenAI / vLLM chat completions), validated field by field
  model.py   AnswerModel: a loaded VLM answering micro-batches of requests through the KV-cache sampler
  server.py  the FastAPI app: bounded queue + micro-batching (httpserve.Batcher), bearer token, JSON errors
"""
