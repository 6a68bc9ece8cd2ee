"""`auditdm serve-answers`: one of the project's VLMs behind an OpenAI-compatible chat-completions endpoint.

  auditdm serve-answers --variant paligemma2_10b --res 448 --init /ckpt/paligemma2-10b-pt-448 \
      --tokenizer paligemma_tokenizer.model --name paligemma2-10b --port 8001
  auditdm serve-answers --variant gemma3_4b --init /ckpt/gemma-3-4b-it --tokenizer /ckpt/gemma-3-4b-it/tokenizer.model
`--init` is a HF safetensors directory or a big_vision .npz; tiny variants without --init get random weights (tests;
`--llm '{"vocab_size": 1400}'` sets decoder fields of such a model). Clients: `answerers.HttpAnswerer`, vLLM's or
OpenAI's clients, curl. The bearer token, when wanted, comes from $AUDITDM_ANSWERS_TOKEN (flags show up in `ps`).
"""
import json
import logging
import os

from auditdm_jax import httpserve
from auditdm_jax.audit import answerers
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models.loading import load_vlm
from auditdm_jax.serving import chat
from auditdm_jax.serving import model as model_lib
from auditdm_jax.serving import server

HELP = "serve a PaliGemma2 / Gemma3 model (HF dir, .npz or tiny random) as an OpenAI-compatible chat endpoint"
TOKEN_ENV = answerers.TOKEN_ENV
log = logging.getLogger(__name__)


def add_arguments(parser):
  d, lim = server.Settings(), chat.Limits()
  parser.add_argument("--variant", required=True, help="VLM variant (models/vlm.py VARIANTS), e.g. paligemma2_3b")
  parser.add_argument("--res", type=int, help="image resolution (default: the variant's first)")
  parser.add_argument("--init", default="", help="HF safetensors directory or big_vision .npz (tiny: empty = random)")
  parser.add_argument("--llm", default="{}", help="JSON of decoder config overrides (e.g. a tiny model's vocab_size)")
  parser.add_argument("--seed", type=int, default=0, help="random init seed of a tiny model without --init")
  parser.add_argument("--tokenizer", required=True, help="sentencepiece .model of the model")
  parser.add_argument("--name", default=None, help="model id clients send (default: the variant)")
  parser.add_argument("--prompt-len", type=int, default=None,
                      help="prompt tokens (default 64, plus the image placeholders for Gemma3)")
  parser.add_argument("--host", default=d.host, help="bind address (default loopback)")
  parser.add_argument("--port", type=int, default=d.port)
  parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
  parser.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms)
  parser.add_argument("--max-queue", type=int, default=d.max_queue, help="queued requests before 429")
  parser.add_argument("--timeout-s", type=float, default=d.request_timeout_s, help="per-request timeout (504)")
  parser.add_argument("--max-tokens", type=int, default=lim.max_tokens, help="largest max_tokens a request may ask")


def run(args):
  try:
    llm = json.loads(args.llm)
  except ValueError as e:
    raise SystemExit(f"auditdm serve-answers: --llm is not valid JSON: {e}") from None
  settings = server.Settings(  # Checked: a bad limit fails now, before the port and the model.
      model_name=args.name or args.variant, host=args.host, port=args.port, token=os.environ.get(TOKEN_ENV) or None,
      max_queue=args.max_queue, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
      request_timeout_s=args.timeout_s, limits=chat.Limits(max_tokens=args.max_tokens))
  sock = httpserve.bind(args.host, args.port)  # A busy port fails now, not after loading the model.
  tokenizer = tokenizer_lib.Tokenizer(args.tokenizer)
  cfg, params = load_vlm(dict(variant=args.variant, res=args.res, init=args.init, llm=llm), seed=args.seed)
  prompt_len = args.prompt_len or 64 + cfg.get("mm_tokens_per_image", 0)
  answer_model = model_lib.AnswerModel(cfg, params, tokenizer, prompt_len=prompt_len,
                                       max_batch_size=args.max_batch_size)
  log.info("serving %s (%s, %d px) at http://%s:%d/v1", settings.model_name, cfg.variant, cfg.res, args.host,
           sock.getsockname()[1])
  httpserve.serve(server.create_app(settings, answer_model), settings.host, settings.port, settings.token,
                  "the answer server", sock=sock)
