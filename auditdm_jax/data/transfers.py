"""Building blocks of the PaliGemma2 transfer configs (configs/paligemma2/transfers/*.py).

The PaliGemma text layout: `<bos> prefix "\n" suffix <eos>`, image tokens in front; the prefix (and "\n") attend
bidirectionally (mask_ar 0), the suffix causally (mask_ar 1) and only the suffix is trained (mask_loss 1).
"""
import ml_collections

from auditdm_jax import config as config_lib

# Hyper-parameters of the paper's Table 1 (PaliGemma2-3B transfers): epochs, lr, wd, LLM dropout, label smoothing.
TABLE1 = {
    "vqav2": dict(total_epochs=14, lr=1e-5, wd=1e-7, llm_dropout=0.0, label_smoothing=0.0),
    "gqa": dict(total_epochs=4, lr=1e-5, wd=1e-7, llm_dropout=0.0, label_smoothing=0.0),
    "okvqa": dict(total_epochs=10, lr=5e-6, wd=0.0, llm_dropout=0.0, label_smoothing=0.0),
    "ai2d": dict(total_epochs=16, lr=1e-5, wd=1e-6, llm_dropout=0.0, label_smoothing=0.0),
    "docvqa": dict(total_epochs=10, lr=1e-5, wd=1e-6, llm_dropout=0.0, label_smoothing=0.0),
    "chartqa": dict(total_epochs=40, lr=1e-5, wd=1e-6, llm_dropout=0.1, label_smoothing=0.2),
    "refcoco": dict(total_epochs=120, lr=1e-5, wd=0.0, llm_dropout=0.0, label_smoothing=0.3),
    "cococap": dict(total_epochs=8, lr=1e-5, wd=1e-6, llm_dropout=0.0, label_smoothing=0.0),
}
BATCH_SIZE = 256
# Training scans the layers of both towers, so compile time does not grow with depth (the PaliGemma2-3B train step:
# 13 s on an idle 2-core CPU; on a loaded one 38 s scanned, 131 s unrolled: docs/gpu.md). A checkpoint saved either
# way loads into a model either way.
SCANNED = dict(llm=dict(scan_layers=True), img=dict(scan=True))


def image_pp(res):
  return f"decode|resize({res}, antialias=True)|value_range(-1, 1)"


def _tok(key, model, bos="no", eos="no", text=None):
  text = f", text={text!r}" if text is not None else ""
  return f'tok(key="{key}", bos="{bos}", eos="{eos}", model="{model}"{text})'


def train_text_pp(tokenizer, text_len):
  """Tokenises `prefix` and `suffix` into text / mask_ar / mask_loss / mask_input [text_len]."""
  return "|".join([
      _tok("prefix", tokenizer, bos="yes"), _tok("suffix", tokenizer, eos="yes"),
      _tok("septok", tokenizer, text="\n"),
      'masked_concat(["prefix", "septok", "suffix"], mask_ar=[0, 0, 1], mask_loss=[0, 0, 1], mask_input=[1, 1, 1])',
      f'tolen({text_len}, key="text")', f'tolen({text_len}, key="mask_ar", pad_value=1)',
      f'tolen({text_len}, key="mask_loss")', f'tolen({text_len}, key="mask_input")',
      'keep("image", "text", "mask_ar", "mask_loss", "mask_input")',
  ])


def eval_text_pp(tokenizer, text_len, keep=()):
  """Tokenises the `prefix` prompt into text / mask_input [text_len], keeping `keep` fields for the metric."""
  fields = ", ".join(f'"{k}"' for k in ("image", "text", "mask_input") + tuple(keep))
  return "|".join([
      _tok("prefix", tokenizer, bos="yes"), _tok("septok", tokenizer, text="\n"),
      'masked_concat(["prefix", "septok"], mask_input=[1, 1])',
      f'tolen({text_len}, key="text")', f'tolen({text_len}, key="mask_input")', f"keep({fields})",
  ])


def base_config(task, arg_spec):
  """Shared fields of a transfer config; `arg_spec` is the parsed `res,tokenizer,data_dir,model_init,...` arg."""
  c = ml_collections.ConfigDict()
  # No final logit softcap, as big_vision's PaliGemma2 transfers ("better for transfer", transfers/forkme.py).
  c.model = dict(variant=arg_spec.get("variant", "paligemma2_3b"), res=arg_spec.res,
                 llm=dict(final_softcap=None, **SCANNED["llm"]), img=dict(SCANNED["img"]))
  c.model_init = arg_spec.model_init or None
  c.tokenizer = arg_spec.tokenizer
  c.input = ml_collections.ConfigDict(dict(data=[], pp="", batch_size=BATCH_SIZE, shuffle_buffer=50_000))
  c.total_steps = 0  # 0: derived from total_epochs and the data size
  c.update(TABLE1[task])
  c.optimizer = "adamw"
  c.b2 = 0.999
  c.grad_clip_norm = 1.0
  c.schedule = dict(decay_type="cosine", warmup_percent=0.05)
  c.grad_accum_steps = 1
  c.trainable = None
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.seed = 0
  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  c.keep_ckpts = 2
  c.evals = ml_collections.ConfigDict()
  return c


def common_args(arg, qa=True, **task_defaults):
  """Parses the shared config arg: res, tokenizer, data_dir, model_init, variant, and for question-answer tasks
  (`qa`; not captioning or referring expressions, which generated {question, answer} rows do not fit)
  extra_jsonl, extra_weight (`add_extra_jsonl`)."""
  spec = dict(res=448, tokenizer="paligemma_tokenizer.model", data_dir="", model_init="", variant="paligemma2_3b")
  if qa:
    spec.update(extra_jsonl="", extra_weight=1.0)
  spec.update(task_defaults)
  return config_lib.parse_arg(arg, **spec)


def add_extra_jsonl(c, arg, prefix_pp, text_len):
  """Mixes generated data (JSONL rows {image, question, answer}) into training with weight `extra_weight`.

  This is how rectification fine-tunes: the original split plus the auditor's new pairs.
  """
  if not arg.extra_jsonl:
    return
  pp = "|".join([image_pp(arg.res), prefix_pp, 'copy("answer", "suffix")', train_text_pp(c.tokenizer, text_len)])
  c.input.data = list(c.input.data) + [dict(jsonl=arg.extra_jsonl, weight=arg.extra_weight, pp=pp)]


def gemma3_text_pp(tokenizer, text_len, image_token_id, num_image_tokens, answer="answer", keep=()):
  """Gemma3 chat tokens of `question` (+ `answer` when training) into text / mask_ar / mask_loss / mask_input
  [text_len] (pp op `gemma3_chat_tokens`); answer=None gives the sampling prompt (text, mask_input + `keep`)."""
  answer_arg = f', answer="{answer}"' if answer else ""
  ops = [f'gemma3_chat_tokens(model="{tokenizer}", image_token_id={image_token_id}, '
         f'num_image_tokens={num_image_tokens}{answer_arg})',
         f'tolen({text_len}, key="text")', f'tolen({text_len}, key="mask_input")']
  if answer:
    ops += [f'tolen({text_len}, key="mask_ar", pad_value=1)', f'tolen({text_len}, key="mask_loss")']
    keys = ("image", "text", "mask_ar", "mask_loss", "mask_input")
  else:
    keys = ("image", "text", "mask_input") + tuple(keep)
  return "|".join(ops + ["keep(" + ", ".join(f'"{k}"' for k in keys) + ")"])
