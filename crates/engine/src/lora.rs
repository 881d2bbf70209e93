//! LoRA adapters: not written yet (issue 5).
