"""AuditDM paper defaults (Sec. A.2): GRPO auditor training for 1000 steps, AdamW, lr 3e-6 with 10% warm-up and
cosine decay to 1e-6, global batch 256 (auditor rollouts per step), Gemma3-4B auditor, references PaliGemma2 +
Gemma3 + Qwen2.5-VL (the latter over HTTP, e.g. vLLM), FLUX over HTTP; checkpoints every 250 steps.

  auditdm train-auditor --workdir runs/audit --config configs/audit/paper.py:mode=edit_question,\
auditor_init=/ckpt/gemma-3-4b-it,target=/ckpt/paligemma2_3b,images=/data/pool
`auditor_init` (required) is a local HF directory of Gemma3-4B (google/gemma-3-4b-it, or an SFT'd auditor exported
to HF); its `tokenizer.model` is the auditor's tokenizer unless `auditor_tokenizer` is given; `tokenizer`
(PaliGemma's) is the JAX target's and references'. The auditor sees 896px images (Gemma3's only resolution); JAX
answerers resize them to their own.
The `system` block is handed to `config.system.module` (auditdm_jax/worlds/vlm/system.py builds it from model
checkpoints, an image folder or JSONL pool and HTTP endpoints). Gemma3 and Qwen2.5-VL references are served over
HTTP (e.g. `vllm serve`, or `auditdm serve-answers` for a JAX model in another process); JAX references are
PaliGemma2 checkpoints. Rectification (`auditdm rectify` / `iterate`) mixes `target_train` (the target's original
{image, question, answer} JSONL) with the generated pairs and scores the target on `target_eval`.

`tiny=True` is the same loop at smoke-test scale (tests/test_paper_setup.py): random gemma3_tiny auditor and
paligemma2_tiny target / JAX reference at 32 px with `vocab` tokens, the second reference served by
`auditdm serve-answers` at `answers_url` (random weights of the JAX reference's seed, so they agree), tiny FLUX at
`flux_url`, two-row batches, a step per stage; HTTP clients retry long enough to ride out a server restart.
"""
import os

from auditdm_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, mode="edit_question", group_size=8, tokenizer="paligemma_tokenizer.model",
                             auditor="gemma3_4b", auditor_init="", auditor_tokenizer="", target="", ref_init="",
                             images="",
                             qwen_url="http://127.0.0.1:8001/v1", gemma3_url="http://127.0.0.1:8002/v1",
                             flux_url="http://127.0.0.1:8000", algorithm="grpo", target_train="", target_eval="",
                             tiny=False, vocab=0, answers_url="http://127.0.0.1:8003/v1")
  c = config_lib.ml_collections.ConfigDict()
  c.seed = 0
  c.mode = arg.mode  # question | edit | caption | edit_question | caption_question
  # 256 rollouts per step = 32 source images x G=8 samples (the GRPO group).
  c.group_size = arg.group_size
  c.batch_size = 256 // arg.group_size
  c.max_words = 64
  c.total_steps = 1000
  c.optimizer, c.lr, c.wd, c.b2, c.grad_clip_norm = "adamw", 3e-6, 0.0, 0.999, 1.0
  c.schedule = dict(decay_type="cosine", warmup_percent=0.1, min_lr=1e-6)
  c.grad_accum_steps = 8
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.ckpt_every, c.ckpt_keep, c.log_every = 250, 8, 10
  c.reward = dict(threshold=0.5, soft_agreement=False, partial_credit=0.0, format_penalty=0.5)
  c.loss = dict(algorithm=arg.algorithm, beta=0.04, kl_estimator="k3", advantage_std="population")
  # Single-model analysis of a PaliGemma2-3B target; references exclude the target. The auditor is the paper's
  # Gemma3-4B, prompted with the Gemma3 chat template (image + instruction, then the model turn).
  # An empty auditor_init is an error when the system is built (only tiny models may be randomly initialised).
  auditor_tokenizer = arg.auditor_tokenizer or (arg.auditor_init and os.path.join(arg.auditor_init, "tokenizer.model"))
  c.system = dict(
      module="auditdm_jax.worlds.vlm.system",
      tokenizer=arg.tokenizer,
      auditor=dict(variant=arg.auditor, res=896, init=arg.auditor_init, tokenizer=auditor_tokenizer),
      target=dict(variant="paligemma2_3b", res=448, init=arg.target),
      references=[dict(name="paligemma2_10b", variant="paligemma2_10b", res=448, init=arg.ref_init),
                  dict(kind="http", name="qwen2.5-vl-7b", base_url=arg.qwen_url, model="Qwen/Qwen2.5-VL-7B-Instruct"),
                  dict(kind="http", name="gemma3-4b", base_url=arg.gemma3_url, model="google/gemma-3-4b-it")],
      generator=dict(name="flux-http", url=arg.flux_url),
      images=arg.images, eval_images="", batch_size=c.batch_size, eval_batches=4,
      prompt_len=384, max_new_tokens=64, temperature=1.0, top_p=1.0, answer_tokens=16)
  c.system.update(target_train=arg.target_train, target_eval=arg.target_eval)
  c.generate = dict(samples_per_source=1, keep="consensus", auditor_workdir="", baseline=False)
  # Generic defaults: set them per task (configs/paligemma2/transfers/<task>.py has the tasks' recipes).
  # The paper mixes the generated data in as they are (balance_answers=1; >1 evens out their answers, `rectify.py`).
  c.rectify = dict(dataset="", mix=0.5, steps=1000, lr=1e-5, wd=0.0, batch_size=64, text_len=64, log_every=50,
                   balance_answers=1)
  c.iterations = 2
  return _tiny(c, arg) if arg.tiny else c


def _tiny(c, arg):
  """The paper's loop at smoke-test scale (see the module docstring)."""
  tiny = dict(res=32, init="", llm=dict(vocab_size=arg.vocab) if arg.vocab else {})
  c.group_size, c.batch_size, c.max_words = 2, 2, 16
  c.total_steps, c.grad_accum_steps, c.ckpt_every, c.log_every = 1, 1, 1, 1
  c.system.update(
      auditor=dict(tiny, variant="gemma3_tiny", tokenizer=arg.auditor_tokenizer),
      target=dict(tiny, variant="paligemma2_tiny"),
      references=[dict(tiny, name="paligemma2_tiny", variant="paligemma2_tiny"),
                  dict(kind="http", name="served", base_url=arg.answers_url, model="served", instruction="",
                       max_tokens=4, retries=8, backoff=0.5, max_backoff=8.0)],
      generator=dict(name="flux-http", url=arg.flux_url, height=32, width=32, steps=2, edit_steps=2,
                     edit_area=32 * 32, max_retries=8, max_backoff_s=8.0),
      batch_size=c.batch_size, eval_batches=1, prompt_len=160, max_new_tokens=8, answer_tokens=4)
  c.rectify.update(steps=2, lr=1e-4, batch_size=4, text_len=32, log_every=1)
  return c
