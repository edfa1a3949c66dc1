"""Training of the expensive models (stages 0 and 1): conventional teachers and QLoRA instruction tuning.

- `teacher`: fine-tune a timm model (Table 1 baselines, the KD teacher); resumable, records test metrics.
- `instructions`: read / validate generated responses; build categorical, conversation, reasoning instructions.
- `instruct_gen`: produce responses from any OpenAI-compatible chat endpoint (retries, resume, JSONL).
- `qlora`: LoRA / QLoRA on the VLM's language model with answer-only labels; peft adapter + run record.
- `state`: pickle-free, atomically written resume checkpoints shared by both trainers.

Heavy libraries are imported inside functions, so importing this package stays cheap.
"""
