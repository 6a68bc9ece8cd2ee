"""The auditor's instruction prompts, verbatim from the paper's supplementary material (Sec. A.1).

`p_c` asks for a regeneration caption C = A(I, p_c), `p_e` for an edit command E = A(I, p_e), and `p_q` for a
question Q = A(I', p_q). The `*_baseline` prompts (p^b) are the prompt-engineering baseline: the same system with no
RL, told to look for hard cases.
"""

P_C = ("You are given an image. Produce a detailed, literal caption that would allow a model to regenerate the "
       "image, but also introduce small alterations to certain visual attributes. Return a single final caption "
       "describing the modified version only.")

P_E = ("You are given an image. Generate a single image-editing command that describes how to modify the image. "
       "The modification must remain plausible in the real world. The command should be specific, actionable, and "
       "unambiguous. Return the editing command only.")

P_Q = ("You are given an image. Generate a single question that can be answered solely based on its visible "
       "content. Return the question only.")

P_C_BASELINE = ("You are given an image. Produce a detailed, literal caption that would allow a model to regenerate "
                "the image, but introduce small changes that are easy for models to get wrong. Return a single "
                "caption describing the modified version only.")

P_E_BASELINE = ("You are given an image. Generate a single image-editing command that makes a realistic change but "
                "is challenging for vision models. The modification must remain plausible in the real world. The "
                "command should be specific, actionable, and unambiguous. Return the editing command only.")

P_Q_BASELINE = ("You are given an image. Generate a single question answerable from its visible content but "
                "challenging for vision-language models. Return the question only.")

# kind -> (audit prompt, baseline prompt). Kinds: "caption" (regeneration), "edit", "question".
PROMPTS = {
    "caption": (P_C, P_C_BASELINE),
    "edit": (P_E, P_E_BASELINE),
    "question": (P_Q, P_Q_BASELINE),
}


def get(kind, baseline=False):
  """The instruction prompt for `kind` in {"caption", "edit", "question"}; `baseline` selects p^b."""
  if kind not in PROMPTS:
    raise ValueError(f"unknown prompt kind {kind!r}; known: {sorted(PROMPTS)}")
  return PROMPTS[kind][1 if baseline else 0]
