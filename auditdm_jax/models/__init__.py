"""Model code: SigLIP, Gemma decoders, VLM compositions, tokenizer and checkpoint I/O."""
